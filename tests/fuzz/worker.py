"""A fuzz worker: `worker.py KIND SEED` reads case indices (one per line) on stdin, runs each case and writes
one JSON line per case on stdout: {"i", "outcome", "desc", "detail"} (anything else that writes to stdout,
Python or native, goes to stderr instead). outcome is "loaded" / "ok" (it
worked), "clean" (a ValueError, CheckpointError or MemoryError with a message) or "unclean" (anything
else). Crashes and hangs are seen by the runner, which owns this process."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))      # tests/: checkpoints.py, golden.py
sys.path.insert(0, HERE)

import cases  # noqa: E402


def _bases(root: str) -> dict:
    """Valid checkpoints the checkpoint cases start from: the golden model with its LoRA drafter and a
    byte-level tokenizer, as F32 in one file and as BF16 in two shards."""
    import checkpoints as ck
    from golden import GOLDEN_DIR

    single = os.path.join(root, "single")
    shutil.copytree(GOLDEN_DIR, single)
    for extra in ("expected.json", "expected_lora.json", "numerics.safetensors", "numerics_lora.safetensors",
                  "README.md"):
        if os.path.exists(os.path.join(single, extra)):
            os.remove(os.path.join(single, extra))
    ck.write_byte_tokenizer(os.path.join(single, "tokenizer.json"))
    sharded = ck.copy_golden(os.path.join(root, "sharded"), dtype="BF16", shards=2)
    shutil.copytree(os.path.join(single, "linear_spec_lora"), os.path.join(sharded, "linear_spec_lora"))
    shutil.copy(os.path.join(single, "tokenizer.json"), os.path.join(sharded, "tokenizer.json"))
    return {"single": single, "sharded": sharded}


def classify(exc: BaseException) -> tuple[str, str]:
    import tridecode
    detail = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, (tridecode.CheckpointError, ValueError, MemoryError)) and str(exc).strip():
        return "clean", detail
    return "unclean", detail


def main(kind: str, seed: int) -> int:
    report = os.fdopen(os.dup(1), "w")       # the runner's channel; fd 1 (and sys.stdout) now mean stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import tridecode

    root = tempfile.mkdtemp(prefix="tridecode-fuzz-")
    try:
        bases = _bases(root)
        env = {"dir": bases["single"], "lora": os.path.join(bases["single"], "linear_spec_lora")}
        if kind == "api":
            with open(os.path.join(bases["single"], "chat_template.jinja"), "w") as f:
                f.write("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
            env["model"] = tridecode.load(bases["single"], max_context=256)
            with open(os.path.join(bases["single"], "config.json")) as f:
                env["config"] = json.load(f)
        for line in sys.stdin:
            i = int(line)
            rng = random.Random(f"{kind}:{seed}:{i}")
            desc, detail = "?", ""
            try:
                if kind == "selftest":   # the runner's own test: case 1 crashes, case 2 hangs, case 3 is unclean
                    desc, outcome = f"selftest {i}", "ok"
                    if i == 1:
                        os.kill(os.getpid(), 11)
                    if i == 2:
                        import time
                        time.sleep(3600)
                    if i == 3:
                        raise KeyError("selftest")
                elif kind == "checkpoint":
                    desc, thunk = cases.checkpoint_case(rng, bases, root)
                    outcome = "loaded"
                else:
                    desc, thunk = cases.api_case(rng, env)
                    outcome = "ok"
                if kind != "selftest":
                    thunk()
            except Exception as e:   # noqa: BLE001 - classified
                outcome, detail = classify(e)
            print(json.dumps({"i": i, "outcome": outcome, "desc": desc, "detail": detail}), file=report, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))

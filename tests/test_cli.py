"""The command line as a user drives it: short flags, prompt sources, stop strings, mode spellings,
Ctrl-C, a closed pipe, and the defaults it shares with the Python API."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import tridecode
from tridecode.params import DEFAULTS

PROMPT = "def add(a, b):"
HERE = os.path.dirname(os.path.abspath(__file__))


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tridecode", *args], capture_output=True, text=True, timeout=120,
                          input=stdin)


@pytest.fixture(scope="module")
def model():
    return tridecode.load(tridecode.default_model_path())


def test_short_flags_are_the_long_ones(model):
    ref = model.generate(PROMPT, max_new_tokens=12, temperature=0.7, seed=3)
    for flags in (["-p", PROMPT, "-n", "12", "--temp", "0.7", "-s", "3"],
                  ["--prompt", PROMPT, "--max-new-tokens", "12", "--temperature", "0.7", "--seed", "3"],
                  ["-m", tridecode.default_model_path(), "-p", PROMPT, "-n", "12", "--temp", "0.7", "-s", "3"]):
        out = _cli("generate", *flags)
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith(ref.text + "\n"), flags
        assert f"tokens={len(ref.tokens)}" in out.stderr


def test_prompt_from_a_file_or_stdin(model, tmp_path):
    ref = model.generate(PROMPT + "\n", max_new_tokens=10)
    f = tmp_path / "prompt.txt"
    f.write_text(PROMPT + "\n")
    for out in (_cli("generate", "-f", str(f), "-n", "10"), _cli("generate", "-p", "-", "-n", "10", stdin=PROMPT + "\n")):
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith(ref.text + "\n")
    out = _cli("generate", "-f", str(tmp_path / "missing.txt"))
    assert out.returncode == 1 and "missing.txt: cannot read the prompt" in out.stderr


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec"])
def test_stop_strings(model, mode):
    full = model.generate(PROMPT, max_new_tokens=40, mode=mode)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    ref = model.generate(PROMPT, max_new_tokens=40, mode=mode, stop=[stop, "\x01"])
    assert ref.finish_reason == "stop" and len(ref.text) < len(full.text)
    out = _cli("generate", "-p", PROMPT, "-n", "40", "--mode", mode, "--stop", stop, "--stop", "\x01")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(ref.text + "\n") and stop not in out.stdout[-len(ref.text) - 1:]


def test_mode_spellings():
    ids = ["--ids", "1,40,50", "-n", "6"]
    a, b = _cli("generate", *ids, "--mode", "self_spec"), _cli("generate", *ids, "--mode", "self-spec")
    assert a.returncode == b.returncode == 0 and a.stdout.splitlines()[-1] == b.stdout.splitlines()[-1]
    for bad in ("selfspec", "spec", "Self_Spec"):
        out = _cli("generate", *ids, "--mode", bad)
        assert out.returncode == 2 and f"unknown mode '{bad}'" in out.stderr and "Traceback" not in out.stderr


def test_max_context_and_model_options():
    out = _cli("generate", "-p", PROMPT, "-n", "64", "-c", "32")
    assert out.returncode == 1 and "capacity is 32" in out.stderr and "Traceback" not in out.stderr
    assert _cli("generate", "-p", PROMPT, "-n", "8", "--max-context", "64").returncode == 0
    out = _cli("generate", os.path.join(HERE, "data", "nld-tiny-a"), "-m", tridecode.default_model_path(), "-p", "x")
    assert out.returncode == 2 and "give the model once" in out.stderr


def _long_run(*extra):
    return subprocess.Popen([sys.executable, "-m", "tridecode", "generate", "-p", PROMPT, "-n", "4000",
                             "--max-context", "4096", "--ignore-eos", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _first_bytes(proc, n):
    got = b""
    while len(got) < n:
        chunk = proc.stdout.read1(4096)
        assert chunk, proc.stderr.read().decode()
        got += chunk
    return got


def test_ctrl_c_exits_130_with_the_stats_so_far():
    proc = _long_run()
    try:
        _first_bytes(proc, 200)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    m = re.search(r"interrupted: mode=ar tokens=(\d+) seconds=", err)
    assert m and 0 < int(m.group(1)) < 4000, err


def test_a_closed_pipe_ends_quietly():
    proc = _long_run("--mode", "self-spec")
    try:
        _first_bytes(proc, 100)
        proc.stdout.close()              # as `| head -c 100` does
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_help_lists_the_shared_defaults():
    out = _cli("generate", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert f"at most this many new tokens, in every mode (default: {DEFAULTS['max_new_tokens']})" in text
    assert f"(default: {DEFAULTS['temperature']})" in text and "--temp" in text
    assert "-f FILE" in text and "-p PROMPT" in text and "--max-context" in text
    assert f"(default: {DEFAULTS['threshold']})" in text
    assert _cli("serve", "--help").returncode == 0


def test_readme_parameter_table_is_the_shared_defaults():
    with open(os.path.join(HERE, "..", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = readme.split("<!-- parameters -->")[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "Python":
            rows[cells[0]] = cells
    assert set(rows) == set(DEFAULTS)
    for name, value in DEFAULTS.items():
        shown = "None" if value is None else repr(value)
        assert rows[name][3] == shown, name


def test_hugging_face_ids(tmp_path, model):
    commit = "b" * 40
    repo = tmp_path / "hub" / "models--org--tiny"
    import shutil
    shutil.copytree(tridecode.default_model_path(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "tridecode", "generate", *a], capture_output=True,
                                    text=True, timeout=120, env=env)
    out = run("org/tiny", "-p", PROMPT, "-n", "9")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(model.generate(PROMPT, max_new_tokens=9).text + "\n")
    out = run("org/absent", "-p", PROMPT)
    assert out.returncode == 1 and "download it with: huggingface-cli download org/absent" in out.stderr


def _file_backed(arr) -> bool:
    while isinstance(arr, np.ndarray):
        if isinstance(arr, np.memmap):
            return True
        arr = arr.base
    return False


def test_hugepages_option(model):
    from tridecode import cli, loader

    parser = cli.build_parser()
    values = [("off", True)] + ([("on", False)] if loader.hugepages_available() else [])
    for value, file_backed in values:
        loaded = cli.load_model(parser, parser.parse_args(["generate", "-p", PROMPT, "--hugepages", value]))
        assert _file_backed(loaded._weights["layers.0.q"][0]) == file_backed, value
        assert _file_backed(loaded._weights["embed"][0])
    ref = model.generate(PROMPT, max_new_tokens=8)
    for value, _ in values:
        out = _cli("generate", "-p", PROMPT, "-n", "8", "--hugepages", value)
        assert out.returncode == 0 and out.stdout.endswith(ref.text + "\n"), out.stderr
    out = _cli("generate", "-p", PROMPT, "--hugepages", "yes")
    assert out.returncode == 2 and "--hugepages" in out.stderr and "Traceback" not in out.stderr

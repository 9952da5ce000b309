"""The model shipped with the package: it loads with no download, the CLI uses it when no checkpoint is
given, its measured behaviour on held-out prompts is pinned (a regression in any mode fails), and the
recorded training command reproduces the start of its loss curve and its tokenizer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tridecode

PATH = tridecode.default_model_path()
# Measured on the shipped weights (CPU, fp32): first 8 held-out prompts, 48 new tokens, no EOS, L = 16;
# self-spec with the shipped LoRA drafter (the default) and without it.
PINNED = {"self_spec_mean_accepted": 1.929, "self_spec_mean_accepted_no_lora": 1.900, "diffusion_tpf_0.9": 0.992}
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def model():
    return tridecode.load(PATH)


def test_shipped_files(model):
    total = sum(os.path.getsize(os.path.join(PATH, f)) for f in os.listdir(PATH))
    assert total <= 25 * 2**20
    assert model.config.is_tri_mode and model.config.mask_token_id == 3 and model.tokenizer is not None
    cfg = json.load(open(os.path.join(PATH, "config.json")))
    assert cfg["training"]["command"].startswith("python -m tridecode.train")


def test_cli_runs_without_a_checkpoint():
    out = subprocess.run([sys.executable, "-m", "tridecode", "generate", "--prompt", "import os\n",
                          "--mode", "self-spec", "--max-new-tokens", "24"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mean_accepted=" in out.stderr and out.stdout.strip()


def test_cli_streams_the_same_text_as_the_api(model):
    # Byte-level BPE: characters and words span tokens, so the streamed pieces must join up exactly.
    prompt = "def read(path):\n    with open(path"
    out = subprocess.run([sys.executable, "-m", "tridecode", "generate", "--prompt", prompt, "--mode", "self-spec",
                          "--block-length", "8", "--max-new-tokens", "60"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    want = model.generate(prompt, mode="self_spec", block_length=8, max_new_tokens=60).text
    assert out.stdout.endswith(want + "\n")


def test_pinned_behaviour_on_heldout_prompts(model):
    with open(os.path.join(PATH, "heldout.txt"), encoding="utf-8") as f:
        prompts = [model.encode(line.strip()) for line in f if line.strip()][:8]
    accepted, plain, d_tokens, d_forwards = [], [], 0, 0
    for p in prompts:
        ar = model.generate(p, mode="ar", max_new_tokens=48, eos_token_id=[]).tokens
        spec = model.generate(p, mode="self_spec", block_length=16, max_new_tokens=48, eos_token_id=[])
        assert spec.tokens == ar
        accepted += spec.accepted_per_cycle
        bare = model.generate(p, mode="self_spec", block_length=16, max_new_tokens=48, eos_token_id=[],
                              use_lora=False)
        assert bare.tokens == ar
        plain += bare.accepted_per_cycle
        diff = model.generate(p, mode="diffusion", block_length=16, threshold=0.9, max_new_tokens=48,
                              eos_token_id=[])
        d_tokens += len(diff.tokens)
        d_forwards += diff.forwards
    measured = {"self_spec_mean_accepted": np.mean(accepted), "self_spec_mean_accepted_no_lora": np.mean(plain),
                "diffusion_tpf_0.9": d_tokens / d_forwards}
    for key, want in PINNED.items():
        assert measured[key] == pytest.approx(want, abs=TOLERANCE), (key, measured)


def test_recorded_base_command_reproduces_the_loss_curve_start(tmp_path):
    """The base stage's recorded command replays the start of the base's loss curve and its tokenizer (the
    distill stages need the weights they started from, which are not shipped; their determinism is tested
    on a toy model in test_train.py)."""
    from tridecode.train.__main__ import main as train
    from tridecode.train.data import stdlib_corpus

    cfg = json.load(open(os.path.join(PATH, "config.json")))
    base = cfg["training"]
    while "base" in base:          # distill stages record the checkpoint they started from
        base = base["base"]
    if stdlib_corpus().digest != base["corpus_sha256"]:
        pytest.skip("this interpreter's standard library is not the recorded corpus (another Python version)")
    args = base["command"].split()[3:]
    args[args.index("--out") + 1] = str(tmp_path / "rerun")
    assert train(args + ["--stop-after", "3"]) == 0
    again = json.load(open(tmp_path / "rerun" / "loss_curve.json"))
    shipped = json.load(open(os.path.join(PATH, "loss_curve_base.json")))
    np.testing.assert_allclose([c["loss"] for c in again], [c["loss"] for c in shipped[:3]], rtol=1e-5)
    with open(tmp_path / "rerun" / "tokenizer.json", "rb") as a, open(os.path.join(PATH, "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()


def test_the_shipped_drafter_changes_drafts_but_not_the_output(model):
    with open(os.path.join(PATH, "heldout.txt"), encoding="utf-8") as f:
        prompts = [model.encode(line.strip()) for line in f if line.strip()][:8]
    L, mask = model.default_block_length, model.config.mask_token_id
    changed = 0
    for p in prompts:
        model.reset()
        seed, _ = model.forward_select(p, "causal", logits="last")
        block = [int(seed[0])] + [mask] * (L - 1)
        with_lora, _ = model.forward_select(block, "bidirectional", use_lora=True)
        without, _ = model.forward_select(block, "bidirectional", use_lora=False)
        changed += int((with_lora != without).any())
        ar = model.generate(p, mode="ar", max_new_tokens=48, eos_token_id=[]).tokens
        assert model.generate(p, mode="self_spec", max_new_tokens=48, eos_token_id=[]).tokens == ar
    assert changed >= 4, f"the drafter changed the drafts of only {changed} of {len(prompts)} prompts"


def test_eval_refuses_a_corpus_the_shipped_model_was_not_trained_on(tmp_path, capsys):
    """The digest is recorded by the first of the shipped model's stages; eval finds it through the chain."""
    from tridecode.train.__main__ import main as train

    (tmp_path / "a.txt").write_text("not the standard library\n" * 50)
    assert train(["eval", "--init", PATH, "--corpus", str(tmp_path)]) == 1
    assert "26a92fd45f91d278b709d48d5b38e15fe3cb4dd3defa3a2ee5dbc87e35b330ca" in capsys.readouterr().err

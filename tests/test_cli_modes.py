"""Streaming and the command line for the diffusion and self-spec modes."""

import subprocess
import sys

import pytest

import tridecode

from golden import GOLDEN_DIR, PROMPTS


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tridecode", "generate", GOLDEN_DIR, *args], capture_output=True,
                          text=True, timeout=120)


def _stat(stderr, key):
    return next(p.split("=", 1)[1] for p in stderr.split() if p.startswith(key + "="))


@pytest.fixture(scope="module")
def model():
    return tridecode.load(GOLDEN_DIR)


def test_stream_yields_whole_accepted_runs(model):
    runs = []
    res = model.generate(PROMPTS[3], mode="self_spec", max_new_tokens=40, block_length=8, on_tokens=runs.append)
    assert [t for r in runs for t in r] == res.tokens
    # The prefill token, then one run per cycle (the last one possibly cut at max_new_tokens).
    assert [len(r) for r in runs[1:-1]] == res.accepted_per_cycle[:-1]
    assert max(len(r) for r in runs) > 1


def test_stream_yields_diffusion_blocks(model):
    runs = []
    res = model.generate(PROMPTS[1], mode="diffusion", max_new_tokens=20, block_length=8, on_tokens=runs.append)
    assert [len(r) for r in runs] == [8, 8, 4]
    assert [t for r in runs for t in r] == res.tokens


@pytest.mark.parametrize("flags,kwargs", [
    (["--mode", "self-spec", "--block-length", "8"], dict(mode="self_spec", block_length=8)),
    (["--mode", "self-spec", "--block-length", "8", "--no-lora"], dict(mode="self_spec", block_length=8,
                                                                       use_lora=False)),
    (["--mode", "self-spec", "--draft-threshold", "0.5", "--block-length", "4"],
     dict(mode="self_spec", block_length=4, draft_threshold=0.5)),
    (["--mode", "diffusion", "--block-length", "8"], dict(mode="diffusion", block_length=8)),
    (["--mode", "diffusion", "--block-length", "8", "--threshold", "none", "--steps", "3"],
     dict(mode="diffusion", block_length=8, threshold=None, steps=3)),
    (["--mode", "diffusion", "--threshold", "0.7", "--temperature", "0.8", "--seed", "5"],
     dict(mode="diffusion", threshold=0.7, temperature=0.8, seed=5)),
])
def test_cli_modes_match_the_api(model, flags, kwargs):
    out = _cli("--ids", ",".join(map(str, PROMPTS[2])), "--max-new-tokens", "19", *flags)
    assert out.returncode == 0, out.stderr
    res = model.generate(PROMPTS[2], max_new_tokens=19, **kwargs)
    assert out.stdout.strip().splitlines()[-1] == ",".join(map(str, res.tokens))
    assert int(_stat(out.stderr, "nfe")) == res.nfe
    assert float(_stat(out.stderr, "TPF")) == pytest.approx(res.tokens_per_forward, abs=0.01)
    assert "tokens/s=" in out.stderr
    if kwargs["mode"] == "self_spec":
        assert float(_stat(out.stderr, "mean_accepted")) == pytest.approx(res.mean_accepted, abs=0.01)


def test_cli_lora_flag_changes_the_drafts():
    ids = ",".join(map(str, PROMPTS[0]))
    with_lora = _cli("--ids", ids, "--max-new-tokens", "24", "--mode", "self-spec", "--block-length", "8")
    without = _cli("--ids", ids, "--max-new-tokens", "24", "--mode", "self-spec", "--block-length", "8", "--no-lora")
    assert with_lora.returncode == 0 and without.returncode == 0
    assert with_lora.stdout.splitlines()[-1] == without.stdout.splitlines()[-1]
    # The golden data: 31 forwards with the drafter, 47 without, for this prompt.
    assert _stat(with_lora.stderr, "nfe") == "31" and _stat(without.stderr, "nfe") == "47"


@pytest.mark.parametrize("flags,match", [
    (["--mode", "diffusion", "--block-length", "1"], "block_length"),
    (["--mode", "diffusion", "--threshold", "2"], "threshold"),
    (["--mode", "self-spec", "--draft-threshold", "-1"], "draft_threshold"),
    (["--mode", "ar", "--threshold", "0.5"], "threshold"),
    (["--mode", "diffusion", "--threshold", "abc"], "threshold"),
])
def test_cli_mode_errors(flags, match):
    out = _cli("--ids", "1,2,3", *flags)
    assert out.returncode != 0
    assert match in out.stderr and "Traceback" not in out.stderr

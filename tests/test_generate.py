"""generate(): parameters, sampling (reproducible and statistically right), streaming, text, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tridecode
from tridecode.sampling import SamplingParams, filtered_probs, sample

from checkpoints import write_byte_tokenizer
from golden import GOLDEN_DIR, PROMPTS, cases


@pytest.fixture(scope="module")
def model():
    return tridecode.load(GOLDEN_DIR)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=1.0, top_k=0), "top_k"),
    (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_p=1.5), "top_p"),
    (dict(temperature=1.0, seed="x"), "seed"),
    (dict(eos_token_id=256), "eos_token_id"),
    (dict(eos_token_id=[11, -1]), "eos_token_id"),
    (dict(mode="beam"), "mode"),
])
def test_bad_generate_parameters(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(PROMPTS[1], **{"max_new_tokens": 4, **kwargs})


@pytest.mark.parametrize("prompt,match", [
    ([], "empty"),
    ([1, 256], r"prompt\[1\] = 256 is outside the vocabulary"),
    ([1, -5], "outside the vocabulary"),
    ([1, 100, 3], "mask token id 100"),
    ([[1, 2]], "1-D"),
    ([1.0, 2.0], "integers"),
])
def test_bad_prompts(model, prompt, match):
    with pytest.raises(ValueError, match=match):
        model.generate(prompt, max_new_tokens=2)


def test_text_prompt_without_tokenizer_is_a_clear_error(model):
    with pytest.raises(ValueError, match="tokenizer.json"):
        model.generate("hello", max_new_tokens=2)


def test_sampling_is_reproducible_with_a_seed(model):
    a = model.generate(PROMPTS[2], max_new_tokens=12, temperature=1.0, seed=7).tokens
    b = model.generate(PROMPTS[2], max_new_tokens=12, temperature=1.0, seed=7).tokens
    c = model.generate(PROMPTS[2], max_new_tokens=12, temperature=1.0, seed=8).tokens
    assert a == b
    assert a != c
    greedy = model.generate(PROMPTS[2], max_new_tokens=12).tokens
    assert a != greedy


def test_tiny_temperature_equals_greedy(model):
    greedy = model.generate(PROMPTS[3], max_new_tokens=10).tokens
    assert model.generate(PROMPTS[3], max_new_tokens=10, temperature=1e-4, seed=1).tokens == greedy


def test_sampler_frequencies_match_softmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(12).astype(np.float32) * 1.5
    draws = 20000
    for params in [SamplingParams(temperature=0.8), SamplingParams(temperature=1.3, top_k=5),
                   SamplingParams(temperature=1.0, top_p=0.7)]:
        p = filtered_probs(logits, params, exclude_id=3)
        assert p[3] == 0.0
        g = np.random.default_rng(123)
        counts = np.bincount([sample(logits, params, g, exclude_id=3) for _ in range(draws)], minlength=12)
        # Pearson chi-square on the tokens with support; the 0.999 quantile for <= 11 dof is < 32.
        support = p > 0
        chi2 = float(((counts[support] - draws * p[support]) ** 2 / (draws * p[support])).sum())
        assert chi2 < 32.0, (params, chi2)
        assert counts[~support].sum() == 0


def test_filtered_probs_against_direct_formula():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
    p = filtered_probs(logits, SamplingParams(temperature=2.0))
    e = np.exp(logits.astype(np.float64) / 2.0)
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-12)
    p = filtered_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    e = np.exp(logits[:2].astype(np.float64))
    np.testing.assert_allclose(p[:2], e / e.sum(), rtol=1e-12)
    assert (p[2:] == 0).all()
    full = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    p = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=full[0] + 1e-9))
    assert (p > 0).sum() == 2     # the first token alone has less mass than top_p
    p = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=full[0] - 1e-9))
    assert (p > 0).sum() == 1


def test_the_mask_id_is_never_emitted(tmp_path):
    # A copy of the golden model whose head makes [MASK] the argmax of (nearly) every row.
    import shutil
    from safetensors.numpy import load_file, save_file

    shutil.copy(os.path.join(GOLDEN_DIR, "config.json"), tmp_path / "config.json")
    t = load_file(os.path.join(GOLDEN_DIR, "model.safetensors"))
    t["diffusion_head.weight"][100] *= 1000.0
    save_file(t, str(tmp_path / "model.safetensors"))
    m = tridecode.load(tmp_path)
    logits = m.forward(PROMPTS[2], write_cache=False)
    assert (np.argmax(logits, axis=-1) == 100).mean() > 0.5     # the raw argmax is the mask id ...
    for kwargs in (dict(), dict(temperature=1.0, seed=0), dict(temperature=5.0, top_k=3, seed=1)):
        res = m.generate(PROMPTS[2], max_new_tokens=12, **kwargs)
        assert 100 not in res.tokens                               # ... but it is never emitted


def test_streaming_callback_sees_every_token_in_order(model):
    seen = []
    res = model.generate(PROMPTS[1], max_new_tokens=9, on_tokens=seen.extend)
    assert seen == res.tokens and len(seen) == 9


def test_result_fields(model):
    res = model.generate(PROMPTS[1], max_new_tokens=6)
    assert res.seconds > 0 and res.tokens_per_second > 0
    assert res.tokens_per_forward == pytest.approx(len(res.tokens) / res.forwards)
    assert "tokens/s" in res.summary()


# ---- text through tokenizer.json, and the command line ----

@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok-model")
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(GOLDEN_DIR, name), d / name)
    write_byte_tokenizer(d / "tokenizer.json")   # ids 0..255 = bytes, matching the model's vocab
    return d


def test_text_in_text_out(model_with_tokenizer):
    m = tridecode.load(model_with_tokenizer)
    ids = m.encode("hi there")
    assert ids == list(b"hi there")
    res = m.generate("hi there", max_new_tokens=6)
    assert res.tokens == m.generate(ids, max_new_tokens=6).tokens
    assert res.text == m.decode(res.tokens)
    assert len(res.text) == 6


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tridecode", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_generate_ids_matches_the_api():
    case = next(c for c in cases("ar_generate") if c["id"].startswith("ar_generate/base/p1/max_new_tokens=24"))
    ids = ",".join(map(str, PROMPTS[1]))
    out = _cli("generate", GOLDEN_DIR, "--ids", ids, "--max-new-tokens", "24")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == ",".join(map(str, case["new_tokens"]))
    assert "nfe=24" in out.stderr and "tokens/s=" in out.stderr


def test_cli_generate_text(model_with_tokenizer):
    out = _cli("generate", str(model_with_tokenizer), "--prompt", "hi there", "--max-new-tokens", "5",
               "--temperature", "0.7", "--seed", "3")
    assert out.returncode == 0, out.stderr
    m = tridecode.load(model_with_tokenizer)
    want = m.generate("hi there", max_new_tokens=5, temperature=0.7, seed=3).text
    assert out.stdout.endswith(want + "\n")


def test_cli_errors_are_messages_not_tracebacks():
    out = _cli("generate", GOLDEN_DIR, "--ids", "1,999", "--max-new-tokens", "3")
    assert out.returncode == 1
    assert "outside the vocabulary" in out.stderr and "Traceback" not in out.stderr
    out = _cli("generate", "/nonexistent-dir", "--ids", "1")
    assert out.returncode == 1 and "not a directory" in out.stderr
    out = _cli("generate", GOLDEN_DIR, "--prompt", "hello")
    assert out.returncode != 0 and "tokenizer.json" in out.stderr


def test_cli_help_explains_every_flag():
    out = _cli("generate", "--help")
    assert out.returncode == 0
    for flag in ("--prompt", "--ids", "--mode", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                 "--seed", "--eos-token-id", "--max-context", "--dtype", "--threads", "--device"):
        assert flag in out.stdout
    out = _cli("--help")
    assert out.returncode == 0 and "generate" in out.stdout

"""tridecode against an independent oracle: tiny Hugging Face transformers models.

Each model is built from its transformers config class with a fixed seed, saved with
``save_pretrained(..., safe_serialization=True)`` and loaded back with ``tridecode.load``; logits and greedy
generations must match the transformers forward / ``generate``.

torch and transformers belong to the test extra: when they are missing this module fails, unless
TRIDECODE_ALLOW_NO_TORCH=1 is set, in which case it is skipped.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest

import tridecode

if os.environ.get("TRIDECODE_ALLOW_NO_TORCH") == "1":
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
else:
    import torch
    import transformers  # noqa: F401

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Ministral3Config,
    Ministral3ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

REL_TOL = 1e-4
# bf16-rounded activations in every product (the default for bf16 weights): about 2^-9 relative per product
BF16_ACT_TOL = 1e-2
VOCAB = 512
PROMPT_LEN = 20
NEW_TOKENS = 16
ATTN = "eager"

torch.set_num_threads(2)

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,   # nothing stops generation early, in either implementation
    pad_token_id=None,
)

MINISTRAL3_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 1e6,
    "factor": 16.0,
    "original_max_position_embeddings": 16384,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}


def _ministral3():
    cfg = Ministral3Config(**_COMMON, head_dim=32, max_position_embeddings=262144,
                           rope_parameters=dict(MINISTRAL3_ROPE), tie_word_embeddings=False)
    return Ministral3ForCausalLM, cfg


def _llama():
    cfg = LlamaConfig(**_COMMON, max_position_embeddings=4096,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    return LlamaForCausalLM, cfg


def _llama_tied():
    common = {**_COMMON, "num_key_value_heads": 1}
    cfg = LlamaConfig(**common, max_position_embeddings=4096,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True)
    return LlamaForCausalLM, cfg


def _mistral():
    cfg = MistralConfig(**_COMMON, head_dim=24, max_position_embeddings=4096, sliding_window=None,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    return MistralForCausalLM, cfg


BUILDERS = {"ministral3": _ministral3, "llama": _llama, "llama_tied": _llama_tied, "mistral": _mistral}
SEEDS = {"ministral3": 1, "llama": 2, "llama_tied": 3, "mistral": 4}


def _reinit(model: torch.nn.Module, seed: int, embed_std: float = 1.0) -> None:
    """Weights large enough that logits are O(1) to O(10): std 1/sqrt(fan_in) for projections, normal
    embeddings of std embed_std, and norm weights scattered around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():   # tied parameters are listed once
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


class Built:
    def __init__(self, name: str, model, directory: str):
        self.name = name
        self.model = model
        self.directory = directory
        self._td = None

    @property
    def td(self):
        if self._td is None:
            self._td = tridecode.load(self.directory)
        return self._td


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cls, cfg = BUILDERS[name]()
            torch.manual_seed(SEEDS[name])
            model = cls(cfg).to(torch.float32)
            model.config._attn_implementation = ATTN
            # with tied embeddings a small embedding keeps the head from just echoing the last token
            _reinit(model, SEEDS[name], embed_std=0.25 if cfg.tie_word_embeddings else 1.0)
            model.eval()
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(str(directory), safe_serialization=True)
            cache[name] = Built(name, model, str(directory))
        return cache[name]

    return get


def _ids(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.int64)


def _torch_logits(model, ids, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {"use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = torch.as_tensor(position_ids, dtype=torch.long)[None]
        out = model(torch.as_tensor(ids, dtype=torch.long)[None], **kwargs)
    return out.logits[0].to(torch.float32).numpy()


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all()
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


MODELS = list(BUILDERS)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_layout(built, name):
    b = built(name)
    m = b.td
    cfg = b.model.config
    assert m.config.model_type == cfg.model_type
    assert m.config.head_dim == cfg.head_dim
    assert m.tied_embeddings == (name == "llama_tied")
    if name in ("ministral3", "mistral"):
        assert cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads


@pytest.mark.parametrize("name", MODELS)
def test_causal_logits_match(built, name):
    b = built(name)
    ids = _ids(10 + SEEDS[name], PROMPT_LEN)
    want = _torch_logits(b.model, ids)
    # the oracle's logits are not negligible, so a relative bound means something
    assert np.max(np.abs(want)) > 1.0
    m = b.td
    m.reset()
    got = m.forward(ids, mode="causal")
    assert got.dtype == np.float32
    err = _rel_err(got, want)
    assert err <= REL_TOL, f"{name}: relative logits error {err:.3g}"
    m.reset()
    last = m.forward(ids, mode="causal", logits="last")
    assert _rel_err(last, want[-1:]) <= REL_TOL


@pytest.mark.parametrize("name", MODELS)
def test_chunked_prefill_matches_full_sequence(built, name):
    b = built(name)
    ids = _ids(20 + SEEDS[name], 18)
    want = _torch_logits(b.model, ids)
    m = b.td
    m.reset()
    parts = []
    for lo, hi in ((0, 12), (12, 17), (17, 18)):
        parts.append(m.forward(ids[lo:hi], mode="causal"))
        assert m.cache_length == hi
    got = np.concatenate(parts, axis=0)
    err = _rel_err(got, want)
    assert err <= REL_TOL, f"{name}: chunked relative logits error {err:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generation_matches(built, name):
    b = built(name)
    ids = _ids(30 + SEEDS[name], PROMPT_LEN)
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        out = b.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False)
    want = out[0, len(ids):].tolist()
    assert len(want) == NEW_TOKENS
    res = b.td.generate(ids, mode="ar", max_new_tokens=NEW_TOKENS, temperature=0.0)
    assert list(res.tokens) == want, f"{name}: tridecode {list(res.tokens)} != transformers {want}"
    assert res.nfe == NEW_TOKENS
    # the output is not one token repeated, so the comparison exercises the KV cache
    assert len(set(want)) > 1

    # an explicit EOS, chosen so that it occurs in the greedy continuation, stops both at the same place
    eos = want[NEW_TOKENS // 2]
    with torch.no_grad():
        out = b.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
    want_eos = out[0, len(ids):].tolist()
    stop = want_eos.index(eos) + 1
    want_eos = want_eos[:stop]
    res = b.td.generate(ids, mode="ar", max_new_tokens=NEW_TOKENS, temperature=0.0, eos_token_id=eos)
    assert list(res.tokens) == want_eos
    assert res.stopped_on_eos


LONG_STARTS = [16380, 20000, 40000, 100000]


def _qscale(pos: int) -> float:
    r = MINISTRAL3_ROPE
    return 1.0 + r["llama_4_scaling_beta"] * math.log(1 + math.floor(pos / r["original_max_position_embeddings"]))


@pytest.mark.parametrize("start", LONG_STARTS)
def test_long_positions_ministral3(built, start):
    b = built("ministral3")
    ids = _ids(40, 8)
    positions = np.arange(start, start + len(ids))
    want = _torch_logits(b.model, ids, positions)
    m = b.td
    m.reset()
    got = m.forward(ids, mode="causal", start_pos=start)
    err = _rel_err(got, want)
    assert err <= REL_TOL, f"ministral3 at start {start}: relative logits error {err:.3g}"
    if start == 16380:
        # the chunk straddles original_max_position_embeddings: the scale changes inside it
        assert _qscale(positions[0]) == 1.0 and _qscale(positions[-1]) > 1.0


def test_long_position_query_scale_is_exercised(built):
    """Without the llama-4 query scale the oracle's logits at position 40000 are clearly different, so the
    long-position comparisons cannot pass while ignoring it."""
    b = built("ministral3")
    ids = _ids(40, 8)
    positions = np.arange(40000, 40008)
    with_scale = _torch_logits(b.model, ids, positions)
    params = b.model.config.rope_parameters
    saved = params["llama_4_scaling_beta"]
    try:
        params["llama_4_scaling_beta"] = 0.0
        without_scale = _torch_logits(b.model, ids, positions)
    finally:
        params["llama_4_scaling_beta"] = saved
    assert _qscale(40000) > 1.1
    assert _rel_err(without_scale, with_scale) > 100 * REL_TOL
    m = b.td
    m.reset()
    got = m.forward(ids, mode="causal", start_pos=40000)
    assert _rel_err(got, without_scale) > 100 * REL_TOL


def test_bf16_checkpoint(built, tmp_path):
    b = built("ministral3")
    directory = str(tmp_path / "ministral3-bf16")
    copy.deepcopy(b.model).to(torch.bfloat16).save_pretrained(directory, safe_serialization=True)
    ref = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation=ATTN)
    ref.eval()
    assert ref.model.embed_tokens.weight.dtype == torch.float32

    ids = _ids(50, PROMPT_LEN)
    want = _torch_logits(ref, ids)
    # the bf16 rounding is visible against the original fp32 model, so the oracle is the rounded one
    assert _rel_err(want, _torch_logits(b.model, ids)) > 10 * REL_TOL

    # fp32 activations (compute_dtype="float32"): the oracle's fp32 products of the bf16 weights
    m_bf16 = tridecode.load(directory, compute_dtype="float32")
    assert m_bf16.weight_bytes == sum(p.numel() for p in ref.parameters()) * 2
    got = m_bf16.forward(ids, mode="causal")
    err = _rel_err(got, want)
    assert err <= REL_TOL, f"ministral3 bf16: relative logits error {err:.3g}"
    # the default rounds each product's input to bf16: close to the oracle, measurably not equal
    auto = _rel_err(tridecode.load(directory).forward(ids, mode="causal"), want)
    assert REL_TOL < auto <= BF16_ACT_TOL, f"ministral3 bf16, bf16 activations: relative logits error {auto:.3g}"

    m_f32 = tridecode.load(directory, dtype="float32")
    assert m_f32.weight_bytes == 2 * m_bf16.weight_bytes
    got32 = m_f32.forward(ids, mode="causal")
    assert np.array_equal(got32, got)

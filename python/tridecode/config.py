"""config.json -> a validated ModelConfig. Every error names config.json and the offending key."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from . import _files
from .errors import CheckpointError

#: model_type -> (tensor prefix, head tensor name or None when tied, whether the llama-4 query scale applies)
ARCHITECTURES = {
    "nemotron_labs_diffusion": "encoder.",
    "ministral3": "model.",
    "mistral": "model.",
    "llama": "model.",
}


@dataclass(frozen=True)
class RopeConfig:
    rope_type: str                 # "default" or "yarn"
    theta: float
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    llama_4_scaling_beta: float = 0.0   # 0 disables the query scale


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple = ()
    block_size: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_tri_mode(self) -> bool:
        return self.model_type == "nemotron_labs_diffusion"

    @property
    def prefix(self) -> str:
        return ARCHITECTURES[self.model_type]


def _err(msg: str) -> CheckpointError:
    return CheckpointError(f"config.json: {msg}")


#: Bounds on the integers of config.json: far above any real model, and within what the native core takes
#: (32-bit sizes, positions), so nothing is allocated or looped over for an absurd value.
INT32_MAX = 2**31 - 1
LIMITS = {
    "hidden_size": 1 << 20, "intermediate_size": 1 << 22, "num_hidden_layers": 4096, "num_attention_heads": 4096,
    "num_key_value_heads": 4096, "head_dim": 4096, "vocab_size": INT32_MAX, "max_position_embeddings": INT32_MAX,
    "original_max_position_embeddings": INT32_MAX, "block_size": 1 << 20,
}
MAX_FLOAT = 1e12   # rope_theta, factor, betas, mscale: beyond this nothing is meaningful


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int(d: dict, key: str, *, default=None, minimum: int = 1, maximum: int | None = None) -> int:
    if key not in d or d[key] is None:
        if default is None:
            raise _err(f"missing key '{key}'")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(f"'{key}' must be an integer, got {_show(v)}")
    maximum = LIMITS.get(key.rsplit(".", 1)[-1], INT32_MAX) if maximum is None else maximum
    if v < minimum or v > maximum:
        raise _err(f"'{key}' must be an integer in [{minimum}, {maximum}], got {_show(v)}")
    return v


def _float(d: dict, key: str, *, default=None, positive: bool = True, where: str = "",
           maximum: float = MAX_FLOAT) -> float:
    if key not in d or d[key] is None:
        if default is None:
            raise _err(f"missing key '{where}{key}'")
        return default
    v = d[key]
    ok = not isinstance(v, bool) and isinstance(v, (int, float))
    if ok:
        try:
            f = float(v)
        except OverflowError:
            ok = False
    if not ok or not math.isfinite(f) or abs(f) > maximum:
        raise _err(f"'{where}{key}' must be a finite number of magnitude at most {maximum:g}, got {_show(v)}")
    if positive and f <= 0:
        raise _err(f"'{where}{key}' must be positive, got {_show(v)}")
    return f


def _opt_float(params: dict, key: str, where: str, default=None, positive: bool = True):
    if params.get(key) is None:
        return default
    return _float(params, key, where=where, positive=positive)


def _rope(d: dict, model_type: str, max_pos: int) -> RopeConfig:
    if d.get("rope_parameters") is not None:
        params, where = d["rope_parameters"], "rope_parameters."
    else:
        params, where = d.get("rope_scaling") or {}, "rope_scaling."     # legacy layout
    if not isinstance(params, dict):
        raise _err(f"'{where[:-1]}' must be an object, got {params!r}")
    params = dict(params)
    if "rope_theta" not in params and "rope_theta" in d:
        params["rope_theta"] = d["rope_theta"]
        where_theta = ""
    else:
        where_theta = where
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = _float(params, "rope_theta", where=where_theta)
    # The llama-4 query scale is part of the Ministral-3 backbone (and so of the tri-mode models).
    beta = 0.0
    if model_type in ("nemotron_labs_diffusion", "ministral3"):
        beta = _opt_float(params, "llama_4_scaling_beta", where, default=0.0, positive=False)
    orig = params.get("original_max_position_embeddings", d.get("original_max_position_embeddings"))
    if orig is not None:
        orig = _int({f"{where}original_max_position_embeddings": orig}, f"{where}original_max_position_embeddings")
    if rope_type == "default":
        return RopeConfig("default", theta, original_max_position_embeddings=orig or max_pos,
                          llama_4_scaling_beta=beta)
    if rope_type != "yarn":
        raise _err(f"unsupported rope type {rope_type!r} (supported: default, yarn)")
    if theta <= 1.0:
        raise _err(f"'{where_theta}rope_theta' must be > 1 for yarn, got {theta}")
    orig = orig or max_pos
    factor = _opt_float(params, "factor", where, default=max_pos / orig)
    return RopeConfig(
        "yarn", theta,
        factor=factor,
        original_max_position_embeddings=orig,
        beta_fast=_opt_float(params, "beta_fast", where, default=32.0) or 32.0,
        beta_slow=_opt_float(params, "beta_slow", where, default=1.0) or 1.0,
        mscale=_opt_float(params, "mscale", where, positive=False),
        mscale_all_dim=_opt_float(params, "mscale_all_dim", where, positive=False),
        attention_factor=_opt_float(params, "attention_factor", where),
        truncate=_bool(params, "truncate", True, where),
        llama_4_scaling_beta=beta,
    )


def _check_rope_frequencies(rope: RopeConfig, head_dim: int) -> None:
    """The rotary frequencies the parameters imply must be finite (they are computed at load)."""
    import numpy as np

    from .rope import inv_freq
    try:
        with np.errstate(all="ignore"):
            freqs, factor = inv_freq(rope, head_dim)
        ok = bool(np.isfinite(freqs).all()) and math.isfinite(factor)
    except (ArithmeticError, ValueError):
        ok = False
    if not ok:
        raise _err(f"the rope parameters ({rope}) give non-finite rotary frequencies")


def _bool(d: dict, key: str, default: bool, where: str = "") -> bool:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _err(f"'{where}{key}' must be true or false, got {v!r}")
    return v


def parse_config(d: dict) -> ModelConfig:
    if not isinstance(d, dict):
        raise _err("expected a JSON object")
    model_type = d.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise _err(f"unsupported model_type {model_type!r} (supported: {', '.join(ARCHITECTURES)})")
    hidden = _int(d, "hidden_size")
    layers = _int(d, "num_hidden_layers")
    heads = _int(d, "num_attention_heads")
    kv_heads = _int(d, "num_key_value_heads", default=heads)
    if heads % kv_heads:
        raise _err(f"num_attention_heads ({heads}) is not divisible by num_key_value_heads ({kv_heads})")
    if d.get("head_dim") is not None:
        head_dim = _int(d, "head_dim")
    else:
        if hidden % heads:
            raise _err(f"no 'head_dim', and hidden_size ({hidden}) is not divisible by "
                       f"num_attention_heads ({heads})")
        head_dim = hidden // heads
    if head_dim % 2:
        raise _err(f"head_dim must be even for rotary embeddings, got {head_dim}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise _err(f"unsupported hidden_act {act!r} (only silu)")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise _err(f"'{key}' is true, but biases are not supported")
    max_pos = _int(d, "max_position_embeddings", default=131072)
    vocab = _int(d, "vocab_size")
    eos = d.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    for key, val in (("eos_token_id", eos_ids), ("bos_token_id", (d.get("bos_token_id"),)),
                     ("mask_token_id", (d.get("mask_token_id"),))):
        for v in val:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab):
                raise _err(f"'{key}' {v!r} is not a token id in [0, {vocab})")
    mask = d.get("mask_token_id")
    if model_type == "nemotron_labs_diffusion" and mask is None:
        raise _err("missing key 'mask_token_id' (required for nemotron_labs_diffusion)")
    block_size = None if d.get("block_size") is None else _int(d, "block_size")
    rope = _rope(d, model_type, max_pos)
    _check_rope_frequencies(rope, head_dim)
    return ModelConfig(
        model_type=model_type,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_int(d, "intermediate_size"),
        vocab_size=vocab,
        rms_norm_eps=_float(d, "rms_norm_eps", default=1e-5, maximum=1.0),
        rope=rope,
        max_position_embeddings=max_pos,
        tie_word_embeddings=_bool(d, "tie_word_embeddings", False),
        mask_token_id=mask,
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids,
        block_size=block_size,
        raw=d,
    )


def load_config(directory: str) -> ModelConfig:
    from ._check import path as check_path
    path = os.path.join(check_path("load_config: directory", directory), "config.json")
    if not _files.exists(path):
        raise CheckpointError(f"{directory}: config.json not found")
    return parse_config(_files.load_json(path, what="config.json"))

"""config.json -> a validated ModelConfig. Every error names config.json and the offending key."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

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


def _int(d: dict, key: str, *, default=None, minimum: int = 1) -> int:
    if key not in d or d[key] is None:
        if default is None:
            raise _err(f"missing key '{key}'")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(f"'{key}' must be an integer, got {v!r}")
    if v < minimum:
        raise _err(f"'{key}' must be >= {minimum}, got {v}")
    return v


def _float(d: dict, key: str, *, default=None, positive: bool = True, where: str = "") -> float:
    if key not in d or d[key] is None:
        if default is None:
            raise _err(f"missing key '{where}{key}'")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _err(f"'{where}{key}' must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise _err(f"'{where}{key}' must be positive, got {v}")
    return float(v)


def _rope(d: dict, model_type: str, max_pos: int) -> RopeConfig:
    params = d.get("rope_parameters")
    if params is None:
        params = dict(d.get("rope_scaling") or {})          # legacy layout
        if "rope_theta" in d:
            params.setdefault("rope_theta", d["rope_theta"])
        where = "rope_scaling."
    else:
        if not isinstance(params, dict):
            raise _err(f"'rope_parameters' must be an object, got {params!r}")
        params = dict(params)
        if "rope_theta" not in params and "rope_theta" in d:
            params["rope_theta"] = d["rope_theta"]
        where = "rope_parameters."
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = _float(params, "rope_theta", where=where if "rope_theta" in params else "")
    if rope_type == "default":
        beta = 0.0
        rc = RopeConfig("default", theta)
    elif rope_type == "yarn":
        factor = params.get("factor")
        orig = params.get("original_max_position_embeddings", d.get("original_max_position_embeddings", max_pos))
        if factor is None:
            factor = max_pos / orig
        rc = RopeConfig(
            "yarn", theta,
            factor=_float({"factor": factor}, "factor", where=where),
            original_max_position_embeddings=_int({"o": orig}, "o") if orig else 0,
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"),
            attention_factor=params.get("attention_factor"),
            truncate=bool(params.get("truncate", True)),
        )
    else:
        raise _err(f"unsupported rope type '{rope_type}' (supported: default, yarn)")
    # The llama-4 query scale is part of the Ministral-3 backbone (and so of the tri-mode models).
    beta = 0.0
    if model_type in ("nemotron_labs_diffusion", "ministral3"):
        beta = float(params.get("llama_4_scaling_beta") or 0.0)
    orig_len = params.get("original_max_position_embeddings") or rc.original_max_position_embeddings or max_pos
    return RopeConfig(**{**rc.__dict__, "llama_4_scaling_beta": beta,
                         "original_max_position_embeddings": int(orig_len)})


def parse_config(d: dict) -> ModelConfig:
    if not isinstance(d, dict):
        raise _err("expected a JSON object")
    model_type = d.get("model_type")
    if model_type not in ARCHITECTURES:
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
    return ModelConfig(
        model_type=model_type,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_int(d, "intermediate_size"),
        vocab_size=vocab,
        rms_norm_eps=_float(d, "rms_norm_eps", default=1e-5),
        rope=_rope(d, model_type, max_pos),
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        mask_token_id=mask,
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids,
        block_size=d.get("block_size"),
        raw=d,
    )


def load_config(directory: str) -> ModelConfig:
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory}: config.json not found")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise _err(f"malformed JSON: {e}") from e
    return parse_config(d)

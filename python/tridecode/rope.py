"""Rotary inverse frequencies, computed in float32 step by step as the Hugging Face reference does, so
the angles pos * inv_freq match it bit for bit (this matters at positions in the tens of thousands)."""

from __future__ import annotations

import math

import numpy as np

from .config import RopeConfig


def _mscale(scale: float, m: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def inv_freq(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """Returns (inv_freq [head_dim/2] float32, attention_factor)."""
    f32 = np.float32
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)
    pos_freqs = np.power(f32(rope.theta), exponents).astype(f32)
    if rope.rope_type == "default":
        return (f32(1.0) / pos_freqs).astype(f32), 1.0

    # yarn
    factor = rope.factor
    if rope.attention_factor is not None:
        attention_factor = float(rope.attention_factor)
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = _mscale(factor, rope.mscale) / _mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = _mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(rope.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    extra_factor = (f32(1) - ramp).astype(f32)
    inv_extra = (f32(1.0) / pos_freqs).astype(f32)
    inv_inter = (f32(1.0) / (f32(factor) * pos_freqs)).astype(f32)
    out = inv_inter * (f32(1) - extra_factor) + inv_extra * extra_factor
    return out.astype(f32), attention_factor


def native_rope_params(rope: RopeConfig, head_dim: int) -> dict:
    """The dict the native core takes for RoPE (see csrc/core/config.h RopeParams)."""
    freqs, attention_factor = inv_freq(rope, head_dim)
    return {
        "inv_freq": [float(x) for x in freqs],
        "attention_factor": float(attention_factor),
        "qscale_beta": float(rope.llama_4_scaling_beta),
        "qscale_length": int(rope.original_max_position_embeddings or 1),
    }

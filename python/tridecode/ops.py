"""The native kernels, callable one at a time on numpy arrays (for tests, experiments and microbenchmarks).

Activations are float32. Weights may be float32, float16, bfloat16 (an `ml_dtypes.bfloat16` array, or a
uint16 array of raw bf16 bits with weight_dtype="bfloat16"). device="cuda" is available for rms_norm only
so far; it stages the arrays through GPU memory.
"""

from __future__ import annotations

import math

import numpy as np

from . import _C

_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def _weight(w, weight_dtype: str | None, op: str):
    w = np.ascontiguousarray(w)
    name = weight_dtype or ("bfloat16" if w.dtype.name == "bfloat16" else w.dtype.name)
    if name not in _CODES:
        raise ValueError(f"[{op}] unsupported weight dtype {name} (float32, float16 or bfloat16)")
    code = _CODES[name]
    itemsize = 4 if code == 0 else 2
    if w.dtype.itemsize != itemsize:
        raise ValueError(f"[{op}] weight array of dtype {w.dtype} cannot hold {name} values")
    if code == 2:
        w = w.view(np.uint16)
    return w, code


def _f32(x, op: str, name: str, ndim: int | tuple) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"[{op}] {name} must be a floating-point array, got {x.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        raise ValueError(f"[{op}] {name} must be {' or '.join(f'{d}-D' for d in ndims)}, got shape {list(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def rms_norm(x, weight, eps: float = 1e-5, weight_dtype: str | None = None, device: str = "cpu") -> np.ndarray:
    """x [n, dim] or [dim] -> x * rsqrt(mean(x^2) + eps) * weight."""
    x = _f32(x, "rms_norm", "x", (1, 2))
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    w, code = _weight(weight, weight_dtype, "rms_norm")
    if w.shape != (x2.shape[1],):
        raise ValueError(f"[rms_norm] weight has shape {list(w.shape)}, expected [{x2.shape[1]}]")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"[rms_norm] eps must be positive, got {eps!r}")
    if device == "cpu":
        out = _C.rms_norm(x2, w, code, float(eps))
    elif device == "cuda":
        out = _C.cuda_rms_norm(x2, w, code, float(eps))
    else:
        raise ValueError(f"[rms_norm] unknown device {device!r}")
    return out.reshape(x.shape)


def matmul(x, weight, weight_dtype: str | None = None) -> np.ndarray:
    """x [m, k] @ weight[n, k]^T -> [m, n], fp32 accumulation."""
    x = _f32(x, "matmul", "x", (1, 2))
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    w, code = _weight(weight, weight_dtype, "matmul")
    if w.ndim != 2 or w.shape[1] != x2.shape[1]:
        raise ValueError(f"[matmul] weight has shape {list(w.shape)}, expected [n, {x2.shape[1]}]")
    out = _C.matmul(x2, w, code)
    return out[0] if squeeze else out


def rope(x, positions, inv_freq, attention_factor: float = 1.0, qscale_beta: float = 0.0,
         qscale_length: int = 16384, is_query: bool = True) -> np.ndarray:
    """Rotate-half RoPE on x [n, heads, head_dim] at absolute positions [n]; queries (is_query) are also
    scaled by 1 + qscale_beta * ln(1 + floor(pos / qscale_length))."""
    x = _f32(x, "rope", "x", 3)
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu" or pos.shape != (x.shape[0],):
        raise ValueError(f"[rope] positions must be integers of shape [{x.shape[0]}], got {pos.dtype} "
                         f"{list(pos.shape)}")
    if (pos < 0).any():
        raise ValueError("[rope] positions must be >= 0")
    inv = np.asarray(inv_freq, dtype=np.float32)
    if inv.shape != (x.shape[2] // 2,) or x.shape[2] % 2:
        raise ValueError(f"[rope] inv_freq must have head_dim/2 = {x.shape[2] // 2} entries, got {inv.shape}")
    params = {"inv_freq": [float(v) for v in inv], "attention_factor": float(attention_factor),
              "qscale_beta": float(qscale_beta), "qscale_length": int(qscale_length)}
    if params["qscale_length"] < 1:
        raise ValueError("[rope] qscale_length must be >= 1")
    return _C.rope(x, pos.astype(np.int64), params, bool(is_query))


def attention(q, k, v, causal: bool = True, scale: float | None = None) -> np.ndarray:
    """q [n, heads, d] over k, v [T, kv_heads, d] with T >= n; the queries are the last n of the T
    positions. causal: query i sees keys 0..T-n+i (bottom-right); else every key. GQA by head grouping."""
    q = _f32(q, "attention", "q", 3)
    k = _f32(k, "attention", "k", 3)
    v = _f32(v, "attention", "v", 3)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    return _C.attention(q, k, v, bool(causal), float(scale))


def swiglu(gate, up) -> np.ndarray:
    """silu(gate) * up, elementwise."""
    gate = _f32(gate, "swiglu", "gate", (1, 2, 3))
    up = _f32(up, "swiglu", "up", (1, 2, 3))
    if gate.shape != up.shape:
        raise ValueError(f"[swiglu] gate shape {list(gate.shape)} != up shape {list(up.shape)}")
    return _C.swiglu(gate, up)


def argmax_confidence(logits, exclude_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of logits [n, vocab]: the first index of the maximum (never exclude_id) and its softmax
    probability over the full row."""
    logits = _f32(logits, "argmax_confidence", "logits", (1, 2))
    squeeze = logits.ndim == 1
    l2 = logits.reshape(1, -1) if squeeze else logits
    if exclude_id is not None and not 0 <= exclude_id < l2.shape[1]:
        raise ValueError(f"[argmax_confidence] exclude_id {exclude_id} outside [0, {l2.shape[1]})")
    idx, conf = _C.select(l2, -1 if exclude_id is None else int(exclude_id), 0.0, 0, 0)
    return (idx[0], conf[0]) if squeeze else (idx, conf)

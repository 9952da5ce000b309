"""The native kernels, callable one at a time (for tests, experiments and microbenchmarks).

CPU: numpy arrays in, numpy arrays out. CUDA: pass device="cuda", or pass device arrays (cupy, or anything
with __cuda_array_interface__ / a CUDA DLPack capsule) and the op runs on the GPU in place, returning cupy
arrays; numpy inputs with device="cuda" are staged through device memory and come back as numpy.

Activations are float32. Weights may be float32, float16 or bfloat16 (an `ml_dtypes.bfloat16` array, or a
uint16 array of raw bf16 bits with weight_dtype="bfloat16").
"""

from __future__ import annotations

import math

import numpy as np

from . import _C
from . import _check as check
from ._device import Arg, Call, describe
from .errors import ArgumentTypeError

_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def _device(device, *args: Arg) -> str:
    on_gpu = any(a.host is None for a in args)
    if device is None:
        return "cuda" if on_gpu else "cpu"
    if not isinstance(device, str) or device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {check._show(device)} (use 'cpu' or 'cuda')")
    if device == "cpu" and on_gpu:
        raise ValueError("device='cpu' was asked for, but an input is a device array")
    return device


def _weight(w, weight_dtype: str | None, op: str) -> tuple[Arg, int]:
    if weight_dtype is not None and not isinstance(weight_dtype, str):
        raise ArgumentTypeError(f"[{op}] weight_dtype must be None or a dtype name, got {check._show(weight_dtype)}")
    a = describe(w, f"[{op}] weight")
    name = weight_dtype or ("bfloat16" if a.dtype.name == "bfloat16" else a.dtype.name)
    if name not in _CODES:
        raise ValueError(f"[{op}] unsupported weight dtype {name} (float32, float16 or bfloat16)")
    code = _CODES[name]
    if a.dtype.itemsize != (4 if code == 0 else 2):
        raise ValueError(f"[{op}] weight array of dtype {a.dtype} cannot hold {name} values")
    if a.host is not None:
        host = np.ascontiguousarray(a.host)
        a.host = host.view(np.uint16) if code == 2 else host
        a.dtype = a.host.dtype
    return a, code


def _act(x, op: str, name: str, ndim) -> Arg:
    a = describe(x, f"[{op}] {name}")
    if a.dtype.kind != "f":
        raise ValueError(f"[{op}] {name} must be a floating-point array, got {a.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in ndims:
        raise ValueError(f"[{op}] {name} must be {' or '.join(f'{d}-D' for d in ndims)}, got shape {list(a.shape)}")
    if a.host is not None:
        a.host = np.ascontiguousarray(a.host, dtype=np.float32)
        a.dtype = a.host.dtype
    elif a.dtype != np.float32:
        raise ValueError(f"[{op}] device array {name} must be float32, got {a.dtype}")
    return a


def rms_norm(x, weight, eps: float = 1e-5, weight_dtype: str | None = None, device: str | None = None):
    """x [n, dim] or [dim] -> x * rsqrt(mean(x^2) + eps) * weight."""
    xa = _act(x, "rms_norm", "x", (1, 2))
    wa, code = _weight(weight, weight_dtype, "rms_norm")
    dim = xa.shape[-1]
    n = 1 if xa.ndim == 1 else xa.shape[0]
    if wa.shape != (dim,):
        raise ValueError(f"[rms_norm] weight has shape {list(wa.shape)}, expected [{dim}]")
    eps = check.real("[rms_norm] eps", eps, 0.0, lo_open=True)
    if _device(device, xa, wa) == "cpu":
        return _C.rms_norm(xa.host.reshape(n, dim), wa.host, code, eps).reshape(xa.shape)
    call = Call(xa, wa)
    xp, wp = call.place(xa, np.float32), call.place(wa)
    out = call.out(xa.shape, np.float32)
    _C.cuda_raw.rms_norm(xp, wp, code, out, n, dim, eps)
    return call.results()


def matmul(x, weight, weight_dtype: str | None = None, device: str | None = None, compute_dtype: str = "float32"):
    """x [m, k] @ weight[n, k]^T -> [m, n], fp32 accumulation. compute_dtype "bfloat16" rounds x to bf16
    first for a bf16 weight (the product a bf16 model runs on the CPU by default; CPU only)."""
    if compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"[matmul] compute_dtype must be 'float32' or 'bfloat16', got {check._show(compute_dtype)}")
    xa = _act(x, "matmul", "x", (1, 2))
    wa, code = _weight(weight, weight_dtype, "matmul")
    k = xa.shape[-1]
    m = 1 if xa.ndim == 1 else xa.shape[0]
    if wa.ndim != 2 or wa.shape[1] != k:
        raise ValueError(f"[matmul] weight has shape {list(wa.shape)}, expected [n, {k}]")
    n = wa.shape[0]
    out_shape = (n,) if xa.ndim == 1 else (m, n)
    if _device(device, xa, wa) == "cpu":
        return _C.matmul(xa.host.reshape(m, k), wa.host, code, compute_dtype == "bfloat16").reshape(out_shape)
    if compute_dtype != "float32":
        raise ValueError("[matmul] compute_dtype='bfloat16' is a CPU path (CUDA products choose their own)")
    call = Call(xa, wa)
    xp, wp = call.place(xa, np.float32), call.place(wa)
    out = call.out(out_shape, np.float32)
    _C.cuda_raw.matmul(xp, m, wp, code, n, k, out)
    return call.results()


def quantize_int8(weight) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of a 2-D float weight as load(..., dtype="int8") does it: (q int8 [n, k],
    scales float32 [n, ceil(k / 32)]) with weight[r, c] ~ q[r, c] * scales[r, c // 32] (the scales are bf16
    values, stored so)."""
    from .loader import quantize_int8 as quantize

    w = check.array("[quantize_int8] weight", weight)
    if w.dtype.kind != "f":
        raise ValueError(f"[quantize_int8] weight must be a floating-point array, got {w.dtype}")
    q, _, bits = quantize(np.ascontiguousarray(w, np.float32))
    return q, (bits.astype(np.uint32) << 16).view(np.float32)


def matmul_int8(x, q, scales):
    """x [m, k] @ dequantized(q)^T on the CPU's int8 path: x is quantized per row to int16 (symmetric, scale
    max|x| / 32767), each group of 32 products summed exactly in int32 and scaled by its group's scale in
    fp32. q: int8 [n, k]; scales: [n, ceil(k / 32)], bf16 values (as quantize_int8 returns them)."""
    xa = _act(x, "matmul_int8", "x", (1, 2))
    qa = check.array("[matmul_int8] q", q)
    if qa.dtype != np.int8 or qa.ndim != 2:
        raise ValueError(f"[matmul_int8] q must be a 2-D int8 array, got {qa.dtype} of shape {list(qa.shape)}")
    sa = check.array("[matmul_int8] scales", scales)
    groups = -(-qa.shape[1] // 32)
    if sa.shape != (qa.shape[0], groups) or sa.dtype.kind != "f":
        raise ValueError(f"[matmul_int8] scales must be float [{qa.shape[0]}, {groups}], got {sa.dtype} of shape "
                         f"{list(sa.shape)}")
    bits = np.ascontiguousarray(sa, np.float32).view(np.uint32)
    if np.any(bits & 0xFFFF):
        raise ValueError("[matmul_int8] scales must be bf16 values (as quantize_int8 returns them)")
    k = xa.shape[-1]
    if qa.shape[1] != k:
        raise ValueError(f"[matmul_int8] q has shape {list(qa.shape)}, expected [n, {k}]")
    if xa.host is None:
        raise ValueError("[matmul_int8] int8 products run on the CPU (x is a device array)")
    m = 1 if xa.ndim == 1 else xa.shape[0]
    qh = np.ascontiguousarray(qa)
    out = _C.matmul(xa.host.reshape(m, k), qh, 3, False, np.ascontiguousarray(bits >> 16, dtype=np.uint16))
    return out.reshape((qa.shape[0],) if xa.ndim == 1 else (m, qa.shape[0]))


def rope(x, positions, inv_freq, attention_factor: float = 1.0, qscale_beta: float = 0.0,
         qscale_length: int = 16384, is_query: bool = True, device: str | None = None):
    """Rotate-half RoPE on x [n, heads, head_dim] at absolute positions [n]; queries (is_query) are also
    scaled by 1 + qscale_beta * ln(1 + floor(pos / qscale_length))."""
    xa = _act(x, "rope", "x", 3)
    pos = check.array("[rope] positions", positions)
    if pos.dtype.kind not in "iu" or pos.shape != (xa.shape[0],):
        raise ValueError(f"[rope] positions must be integers of shape [{xa.shape[0]}], got {pos.dtype} "
                         f"{list(pos.shape)}")
    if (pos < 0).any() or (pos > 2**62).any():
        raise ValueError("[rope] positions must be in [0, 2^62]")
    inv = check.array("[rope] inv_freq", inv_freq).astype(np.float32)
    if inv.shape != (xa.shape[2] // 2,) or xa.shape[2] % 2:
        raise ValueError(f"[rope] inv_freq must have head_dim/2 = {xa.shape[2] // 2} entries, got {inv.shape}")
    if not np.isfinite(inv).all():
        raise ValueError("[rope] inv_freq must be finite")
    params = {"inv_freq": [float(v) for v in inv],
              "attention_factor": check.real("[rope] attention_factor", attention_factor),
              "qscale_beta": check.real("[rope] qscale_beta", qscale_beta),
              "qscale_length": check.integer("[rope] qscale_length", qscale_length, 1, 2**62)}
    is_query = check.flag("[rope] is_query", is_query)
    n, heads, d = xa.shape
    if _device(device, xa) == "cpu":
        return _C.rope(xa.host, pos.astype(np.int64), params, is_query)
    call = Call(xa)
    pp = call.place(Arg(pos.shape, np.dtype(np.int64), host=pos.astype(np.int64)))
    out = call.out_copy(xa)          # the kernel rotates in place
    _C.cuda_raw.rope(out, n, heads, d, pp, params, is_query)
    return call.results()


def attention(q, k, v, causal: bool = True, scale: float | None = None, device: str | None = None):
    """q [n, heads, d] over k, v [T, kv_heads, d] with T >= n; the queries are the last n of the T
    positions. causal: query i sees keys 0..T-n+i (bottom-right); else every key. GQA by head grouping."""
    qa, ka, va = (_act(a, "attention", name, 3) for a, name in ((q, "q"), (k, "k"), (v, "v")))
    if ka.shape != va.shape:
        raise ValueError(f"[attention] k and v shapes differ: {list(ka.shape)} vs {list(va.shape)}")
    n, heads, d = qa.shape
    T, kv_heads, dk = ka.shape
    if dk != d:
        raise ValueError(f"[attention] q head_dim {d} != k head_dim {dk}")
    if not 0 < n <= T:
        raise ValueError(f"[attention] need 0 < n_q <= kv_len, got n_q {n}, kv_len {T}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"[attention] query heads {heads} not a multiple of kv heads {kv_heads}")
    if d == 0:
        raise ValueError("[attention] head_dim must be >= 1, got 0")
    causal = check.flag("[attention] causal", causal)
    scale = 1.0 / math.sqrt(d) if scale is None else check.real("[attention] scale", scale)
    if _device(device, qa, ka, va) == "cpu":
        return _C.attention(qa.host, ka.host, va.host, causal, scale)
    call = Call(qa, ka, va)
    qp, kp, vp = (call.place(a, np.float32) for a in (qa, ka, va))
    out = call.out(qa.shape, np.float32)
    _C.cuda_raw.attention(qp, kp, vp, out, n, T, heads, kv_heads, d, causal, scale)
    return call.results()


def swiglu(gate, up, device: str | None = None):
    """silu(gate) * up, elementwise."""
    ga = _act(gate, "swiglu", "gate", (1, 2, 3))
    ua = _act(up, "swiglu", "up", (1, 2, 3))
    if ga.shape != ua.shape:
        raise ValueError(f"[swiglu] gate shape {list(ga.shape)} != up shape {list(ua.shape)}")
    if _device(device, ga, ua) == "cpu":
        return _C.swiglu(ga.host, ua.host)
    call = Call(ga, ua)
    gp, up_ = call.place(ga, np.float32), call.place(ua, np.float32)
    out = call.out(ga.shape, np.float32)
    _C.cuda_raw.swiglu(gp, up_, out, int(np.prod(ga.shape)))
    return call.results()


def select(logits, exclude_id: int | None = None, temperature: float = 0.0, seed: int = 0, stream: int = 0,
           device: str | None = None):
    """Per row of logits [n, vocab]: the chosen id (argmax, first index on ties; Gumbel-max at temperature
    > 0 with noise from (seed, stream, row, id)) and its softmax probability over the unscaled row. The
    exclude_id is never chosen."""
    la = _act(logits, "select", "logits", (1, 2))
    vocab = la.shape[-1]
    n = 1 if la.ndim == 1 else la.shape[0]
    ex = -1 if exclude_id is None else check.integer("[select] exclude_id", exclude_id, 0, vocab - 1)
    temperature = check.real("[select] temperature", temperature, 0.0)
    seed = check.seed("[select] seed", seed)
    stream = check.seed("[select] stream", stream)
    if vocab == 0 or (vocab == 1 and ex == 0):
        raise ValueError(f"[select] nothing to select from: vocab {vocab}, exclude_id {exclude_id}")
    if _device(device, la) == "cpu":
        idx, conf = _C.select(la.host.reshape(n, vocab), ex, temperature, seed, stream)
    else:
        call = Call(la)
        lp = call.place(la, np.float32)
        ip, cp = call.out((n,), np.int32), call.out((n,), np.float32)
        _C.cuda_raw.select(lp, n, vocab, ex, temperature, seed, stream, ip, cp)
        idx, conf = call.results()
    return (idx[0], conf[0]) if la.ndim == 1 else (idx, conf)


def argmax_confidence(logits, exclude_id: int | None = None, device: str | None = None):
    """Per row of logits [n, vocab]: the first index of the maximum (never exclude_id) and its softmax
    probability over the full row (select at temperature 0)."""
    la = describe(logits, "[argmax_confidence] logits")
    if exclude_id is not None and la.ndim in (1, 2):
        check.integer("[argmax_confidence] exclude_id", exclude_id, 0, la.shape[-1] - 1)
    return select(logits, exclude_id, 0.0, device=device)

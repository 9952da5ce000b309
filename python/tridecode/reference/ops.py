from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(w, np.float64)


def matmul(x, w):
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64).T


def rope(x, positions, inv_freq, attention_factor=1.0, qscale_beta=0.0, qscale_length=16384, is_query=True,
         fp32_angles=False):
    """x [n, heads, d]; rotate-half RoPE at absolute positions, then the llama-4 query scale. fp32_angles:
    the angles pos * inv_freq are rounded to float32 first, as the kernels (and the HF reference) compute
    them; the rest stays float64."""
    x = np.asarray(x, np.float64)
    if fp32_angles:
        ang = (np.asarray(positions).astype(np.float32)[:, None] * np.asarray(inv_freq, np.float32)[None, :])
        ang = ang.astype(np.float32).astype(np.float64)
    else:
        pos = np.asarray(positions, np.float64)[:, None]
        ang = pos * np.asarray(inv_freq, np.float64)[None, :]      # [n, d/2]
    cos = np.cos(ang)[:, None, :] * attention_factor
    sin = np.sin(ang)[:, None, :] * attention_factor
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    out = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    if is_query and qscale_beta:
        s = 1.0 + qscale_beta * np.log1p(np.floor(np.asarray(positions, np.float64) / qscale_length))
        out = out * s[:, None, None]
    return out


def attention_mask(n_q: int, kv_len: int, causal: bool) -> np.ndarray:
    """[n_q, kv_len] bool: the queries are the last n_q positions; causal is bottom-right aligned."""
    if not causal:
        return np.ones((n_q, kv_len), dtype=bool)
    q_pos = np.arange(n_q)[:, None] + (kv_len - n_q)
    return np.arange(kv_len)[None, :] <= q_pos


def attention(q, k, v, causal=True, scale=None):
    """q [n, H, d], k/v [T, G, d] -> [n, H, d]; GQA maps head h to kv head h // (H // G)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    n, H, d = q.shape
    T, G, _ = k.shape
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    rep = H // G
    kh = np.repeat(k, rep, axis=1)   # [T, H, d]
    vh = np.repeat(v, rep, axis=1)
    s = np.einsum("nhd,thd->hnt", q, kh) * scale
    s = np.where(attention_mask(n, T, causal)[None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hnt,thd->nhd", p, vh)


def swiglu(gate, up):
    g = np.asarray(gate, np.float64)
    return g / (1.0 + np.exp(-g)) * np.asarray(up, np.float64)


def argmax_confidence(logits, exclude_id=None):
    l = np.asarray(logits, np.float64)
    z = l.copy()
    if exclude_id is not None:
        z[..., exclude_id] = -np.inf
    idx = np.argmax(z, axis=-1)   # first index on ties
    m = l.max(axis=-1, keepdims=True)
    p = np.exp(l - m) / np.exp(l - m).sum(axis=-1, keepdims=True)
    return idx, np.take_along_axis(p, idx[..., None], axis=-1)[..., 0]

"""How close a kernel must be to the truth: one rule for every op and backend, never a hand-picked number.

FlashAttention's rule: measured against a float64 reference, a kernel's error may be at most twice the
error of a naive implementation of the same op in the same precision (fp32 here, unless the kernel
rounds its inputs to a lower one), on the same inputs, plus a few units of fp32 roundoff so that a
baseline that happens to be exact does not demand an exact kernel. The bound thus grows with the
reduction length and the conditioning of each case by itself. Errors are normalized: max |out - ref| /
max |ref|.

The naive implementations below are plain numpy in float32, one operation at a time, as a framework would
run them unfused."""

from __future__ import annotations

import numpy as np

from tridecode import reference as ref

EPS32 = 2.0 ** -24          # fp32 unit roundoff
FACTOR = 2.0
FLOOR_ULPS = 4


def norm_err(out, ref) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.isfinite(out).all(), "output holds NaN/Inf"
    assert out.shape == ref.shape, f"shape {out.shape} != {ref.shape}"
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def bound(ref64, baseline) -> float:
    return FACTOR * norm_err(baseline, ref64) + FLOOR_ULPS * EPS32


def assert_within(got, ref64, baseline, what: str = "") -> float:
    """Asserts the rule; returns the error."""
    err, base = norm_err(got, ref64), norm_err(baseline, ref64)
    limit = FACTOR * base + FLOOR_ULPS * EPS32
    assert err <= limit, (f"{what}: error {err:.3g} against float64 exceeds {FACTOR:g} x the naive "
                          f"implementation's {base:.3g} + {FLOOR_ULPS} ulp = {limit:.3g}")
    return err


# ---- float64 references where the spec fixes an fp32 step ----

def rope_angles(positions, inv_freq) -> np.ndarray:
    """[n, d/2] angles as the spec computes them: float32(pos) * float32(inv_freq), rounded to fp32."""
    pos = np.asarray(positions).astype(np.float32)[:, None]
    return (pos * np.asarray(inv_freq, np.float32)[None, :]).astype(np.float32)


def rope64(x, positions, inv_freq, attention_factor=1.0, qscale_beta=0.0, qscale_length=16384, is_query=True):
    """Rotate-half RoPE in float64 on the spec's fp32 angles."""
    return ref.rope(x, positions, inv_freq, attention_factor, qscale_beta, qscale_length, is_query, fp32_angles=True)


# ---- naive fp32 implementations ----

F = np.float32


class naive32:
    @staticmethod
    def rms_norm(x, w, eps):
        x = np.asarray(x, F)
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=F)
        return (x * (F(1) / np.sqrt(ms + F(eps)))).astype(F) * np.asarray(w, F)

    @staticmethod
    def matmul(x, w):
        return np.asarray(x, F) @ np.asarray(w, F).T

    @staticmethod
    def rope(x, positions, inv_freq, attention_factor=1.0, qscale_beta=0.0, qscale_length=16384, is_query=True):
        x = np.asarray(x, F)
        ang = rope_angles(positions, inv_freq)
        cos = (np.cos(ang) * F(attention_factor))[:, None, :]
        sin = (np.sin(ang) * F(attention_factor))[:, None, :]
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        out = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(F)
        if is_query and qscale_beta:
            pos = np.asarray(positions, F)
            s = F(1) + F(qscale_beta) * np.log(F(1) + np.floor(pos / F(qscale_length)))
            out = out * s.astype(F)[:, None, None]
        return out

    @staticmethod
    def attention(q, k, v, causal=True, scale=None, bf16=False):
        """bf16: as a tensor-core kernel computes it, q and the unnormalised probabilities rounded to bf16
        (k and v are bf16 already), products accumulated in fp32, the sum taken over the rounded values."""
        from checkpoints import round_to
        q, k, v = (np.asarray(a, F) for a in (q, k, v))
        if bf16:
            q = round_to(q, "BF16")
        n, H, d = q.shape
        T, G, _ = k.shape
        scale = F(1.0 / np.sqrt(d)) if scale is None else F(scale)
        kh, vh = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)
        s = np.einsum("nhd,thd->hnt", q, kh).astype(F) * scale
        keep = np.arange(T)[None, :] <= (np.arange(n)[:, None] + T - n) if causal else np.ones((n, T), bool)
        s = np.where(keep[None], s, F(-np.inf))
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        if bf16:
            p = round_to(p, "BF16")
            out = np.einsum("hnt,thd->nhd", p, vh).astype(F)
            return (out / np.transpose(p.sum(axis=-1, dtype=F), (1, 0))[:, :, None]).astype(F)
        p = p / p.sum(axis=-1, keepdims=True, dtype=F)
        return np.einsum("hnt,thd->nhd", p.astype(F), vh).astype(F)

    @staticmethod
    def attention_bf16(q, k, v, causal=True, scale=None):
        return naive32.attention(q, k, v, causal, scale, bf16=True)

    @staticmethod
    def swiglu(g, u):
        g = np.asarray(g, F)
        return (g / (F(1) + np.exp(-g))) * np.asarray(u, F)

    @staticmethod
    def softmax_at(logits, idx):
        l = np.asarray(logits, F)
        e = np.exp(l - l.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True, dtype=F)
        return np.take_along_axis(p, np.asarray(idx)[..., None], axis=-1)[..., 0]


def softmax_at64(logits, idx):
    l = np.asarray(logits, np.float64)
    e = np.exp(l - l.max(axis=-1, keepdims=True))
    return np.take_along_axis(e / e.sum(axis=-1, keepdims=True), np.asarray(idx)[..., None], axis=-1)[..., 0]

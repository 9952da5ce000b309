"""A numpy forward of a checkpoint with its own KV cache. In float64 (the default) it is the truth the
backends' logits are measured against (tolerance.py); RoPE angles are rounded to fp32 as the spec computes
them. naive=True runs the same forward in float32 with tolerance.naive32's ops: the baseline of the rule for
a kernel that computes in fp32; bf16_inputs_over=N also rounds the inputs of every matmul over a chunk of
more than N rows to bf16, the precision of the CUDA backend's tensor-core path; bf16_cache=True rounds the
K/V to bf16 as they enter the cache, as the CUDA backend's bf16 KV cache stores them, and (naive) computes
attention as its tensor-core kernel does over that cache (q and the probabilities rounded to bf16)."""

from __future__ import annotations

import numpy as np

from tridecode import reference as ref
from tridecode.config import load_config
from tridecode.loader import load_weights
from tridecode.rope import inv_freq
from tridecode.safetensors_io import bf16_to_f32

from checkpoints import bf16_bits_to_f32, f32_to_bf16_bits
from tolerance import naive32, rope64


class ReferenceModel:
    def __init__(self, directory, naive: bool = False, bf16_inputs_over: int | None = None, bf16_cache=False):
        self.cfg = cfg = load_config(directory)
        weights, _, _ = load_weights(directory, cfg, None)
        self.dtype = np.float32 if naive else np.float64
        self.bf16_weights = {name for name, (_, code) in weights.items() if code == 2}
        self.w = {name: (bf16_to_f32(a) if code == 2 else np.asarray(a, np.float32)).astype(self.dtype)
                  for name, (a, code) in weights.items()}
        self.freqs, self.attention_factor = inv_freq(cfg.rope, cfg.head_dim)
        self.bf16_inputs_over = bf16_inputs_over
        self.bf16_cache = bf16_cache
        self.reset()

    def reset(self):
        empty = np.zeros((0, self.cfg.num_key_value_heads, self.cfg.head_dim), self.dtype)
        self.k = [empty] * self.cfg.num_hidden_layers
        self.v = list(self.k)

    @property
    def cache_length(self) -> int:
        return self.k[0].shape[0]

    def _rope(self, x, pos, is_query):
        rp = self.cfg.rope
        fn = naive32.rope if self.dtype == np.float32 else rope64
        return fn(x, pos, self.freqs, self.attention_factor, rp.llama_4_scaling_beta,
                  rp.original_max_position_embeddings or 1, is_query)

    def _mm(self, x, name):
        w = self.w[name]
        if self.bf16_inputs_over is not None and x.shape[0] > self.bf16_inputs_over and name in self.bf16_weights:
            x = bf16_bits_to_f32(f32_to_bf16_bits(x.astype(np.float32))).astype(self.dtype)
        return x @ w.T

    def _ops(self):
        if self.dtype == np.float32:
            d = self.cfg.head_dim
            mma = self.bf16_cache and d % 16 == 0 and d <= 128    # the CUDA kernel for such a cache
            return naive32.rms_norm, naive32.attention_bf16 if mma else naive32.attention, naive32.swiglu
        return ref.rms_norm, ref.attention, ref.swiglu

    def forward(self, ids, mode="causal"):
        """[n, vocab] float64 logits; a causal chunk is appended to the cache, a bidirectional one is not."""
        c, w, mm = self.cfg, self.w, self._mm
        rms_norm, attention, swiglu = self._ops()
        ids = np.asarray(ids)
        n, H, G, d = ids.size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        pos = np.arange(self.cache_length, self.cache_length + n)
        x = w["embed"][ids]
        for i in range(c.num_hidden_layers):
            p = f"layers.{i}."
            h = rms_norm(x, w[p + "in_norm"], c.rms_norm_eps)
            q = self._rope(mm(h, p + "q").reshape(n, H, d), pos, True)
            k = self._rope(mm(h, p + "k").reshape(n, G, d), pos, False)
            v = mm(h, p + "v").reshape(n, G, d)
            if self.bf16_cache:
                k, v = (bf16_bits_to_f32(f32_to_bf16_bits(a.astype(np.float32))).astype(self.dtype) for a in (k, v))
            keys, vals = np.concatenate([self.k[i], k]), np.concatenate([self.v[i], v])
            if mode == "causal":
                self.k[i], self.v[i] = keys, vals
            a = attention(q, keys, vals, causal=mode == "causal").reshape(n, H * d)
            x = x + mm(a, p + "o")
            h = rms_norm(x, w[p + "post_norm"], c.rms_norm_eps)
            x = x + mm(swiglu(mm(h, p + "gate"), mm(h, p + "up")), p + "down")
        return mm(rms_norm(x, w["final_norm"], c.rms_norm_eps), "head")

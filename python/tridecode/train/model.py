"""A torch twin of the tridecode forward (same math, same tensor names), for training.

Pre-norm decoder: h = x + o(attn(rmsnorm(x))); x = h + down(silu(gate(n)) * up(n)), n = rmsnorm(h);
final rmsnorm; an untied head (`diffusion_head`). GQA attention with rotate-half RoPE (default rope type)
under an explicit boolean mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exps)
    ang = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.s = s
        self.q_proj = nn.Linear(s.hidden_size, s.num_attention_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, s.num_key_value_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, s.num_key_value_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.num_attention_heads * s.head_dim, s.hidden_size, bias=False)
        self.lora_A = None          # set by TriModeLM.add_lora(): the self-speculation drafter on o_proj
        self.lora_B = None
        self.lora_scale = 0.0

    def forward(self, x, cos, sin, mask, lora_rows=None):
        b, t, _ = x.shape
        s = self.s
        q = self.q_proj(x).view(b, t, s.num_attention_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = s.num_attention_heads // s.num_key_value_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, t, -1)
        out = self.o_proj(o)
        if self.lora_A is not None and lora_rows:
            # the adapter acts on the draft rows only (the noisy copy), as tridecode applies it to draft passes
            delta = self.lora_B(self.lora_A(o[:, :lora_rows])) * self.lora_scale
            out = torch.cat([out[:, :lora_rows] + delta, out[:, lora_rows:]], dim=1)
        return out


class MLP(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mlp = MLP(s)

    def forward(self, x, cos, sin, mask, lora_rows=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, lora_rows)
        return h + self.mlp(self.post_attention_layernorm(h))


class Encoder(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(Layer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)


class TriModeLM(nn.Module):
    """Parameter names match the checkpoint format (`encoder.*`, `diffusion_head.weight`)."""

    def __init__(self, s: Shape):
        super().__init__()
        self.shape = s
        self.encoder = Encoder(s)
        self.diffusion_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, lora_rows=None) -> torch.Tensor:
        """ids [b, t], positions [t], mask [t, t] or [b, 1, t, t] bool (True = may attend) -> logits
        [b, t, vocab]. lora_rows: apply the o_proj adapter (add_lora) to rows 0..lora_rows-1 only."""
        cos, sin = rope_tables(positions, self.shape.head_dim, self.shape.rope_theta)
        x = self.encoder.embed_tokens(ids)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, mask, lora_rows)
        return self.diffusion_head(self.encoder.norm(x))

    def add_lora(self, rank: int, alpha: float, seed: int = 0) -> list:
        """Attaches a LoRA adapter to every o_proj (A ~ Kaiming-uniform, B = 0, as PEFT initialises them)
        and freezes everything else; returns the adapter's parameters."""
        g = torch.Generator().manual_seed(seed)
        params = []
        for layer in self.encoder.layers:
            att = layer.self_attn
            att.lora_A = nn.Linear(att.o_proj.in_features, rank, bias=False)
            att.lora_B = nn.Linear(rank, att.o_proj.out_features, bias=False)
            bound = 1.0 / att.o_proj.in_features ** 0.5
            with torch.no_grad():
                att.lora_A.weight.uniform_(-bound, bound, generator=g)
                att.lora_B.weight.zero_()
            att.lora_scale = alpha / rank
            params += [att.lora_A.weight, att.lora_B.weight]
        for p in self.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params

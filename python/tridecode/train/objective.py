"""L = L_AR + alpha * L_diff over the doubled sequence [x_t | x_0] (see masks.py).

x_t masks tokens of x_0 with probability t, t ~ U(eps, 1) drawn per sequence (or t = 1, every slot, with
probability t_one: the self-speculation draft pass). Only block slots 1..L-1 are ever masked: slot 0 of a
block is its seed, the token the causal pass already chose, as at inference; the clean prefix before the
first block is never masked. L_diff is the cross-entropy on the masked noisy positions (no shift: logits at
i predict x_0[i]) divided by t, averaged over the maskable positions; L_AR is the shifted cross-entropy of
the clean stream. An optional certainty term (weight `confidence`) lowers the entropy of the masked
predictions that are already right, which makes correct drafts confident enough to commit in parallel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import batch_doubled_mask, causal_mask, doubled_positions


def maskable(n: int, block_size: int, offsets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[b, n] bool: block slots 1..L-1 after each sequence's prefix (and inside its valid length)."""
    idx = torch.arange(n)[None, :]
    rel = idx - offsets[:, None]
    keep = (rel >= 0) & (torch.remainder(rel, block_size) != 0)
    return keep if valid is None else keep & valid


def noisy_copy(x0: torch.Tensor, mask_id: int, eps: float, gen: torch.Generator, keep: torch.Tensor,
               t_one: float = 0.0):
    """(x_t, masked [b, n] bool, t [b]): masks each maskable token with probability t."""
    b, n = x0.shape
    t = eps + (1 - eps) * torch.rand(b, generator=gen)
    if t_one > 0:
        t = torch.where(torch.rand(b, generator=gen) < t_one, torch.ones_like(t), t)
    masked = (torch.rand(b, n, generator=gen) < t[:, None]) & keep
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked, t


def ar_loss(model, x0: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    n = x0.shape[1]
    logits = model(x0, torch.arange(n), causal_mask(n))
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x0[:, 1:].reshape(-1), reduction="none")
    if valid is None:
        return ce.mean()
    w = valid[:, 1:].reshape(-1).float()
    return (ce * w).sum() / w.sum()


def diffusion_terms(model, x0, mask_id, block_size, eps, gen, offsets, valid=None, t_one=0.0, lora_mask=False):
    """(L_diff, certainty term, clean-stream logits) of one doubled forward."""
    b, n = x0.shape
    keep = maskable(n, block_size, offsets, valid)
    xt, masked, t = noisy_copy(x0, mask_id, eps, gen, keep, t_one)
    kwargs = {"lora_rows": n} if lora_mask else {}
    logits = model(torch.cat([xt, x0], dim=1), doubled_positions(n), batch_doubled_mask(n, block_size, offsets), **kwargs)
    noisy, clean = logits[:, :n], logits[:, n:]
    ce = F.cross_entropy(noisy.reshape(-1, noisy.shape[-1]), x0.reshape(-1), reduction="none").view(b, n)
    l_diff = (ce * masked / t[:, None]).sum() / keep.sum().clamp(min=1)
    logp = F.log_softmax(noisy.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    right = (noisy.argmax(-1) == x0) & masked
    certainty = (entropy * right).sum() / masked.sum().clamp(min=1)
    return l_diff, certainty, clean


def joint_loss(model, x0: torch.Tensor, mask_id: int, block_size: int, alpha: float, eps: float,
               gen: torch.Generator, aligned: bool = True) -> tuple[torch.Tensor, dict]:
    """The joint stage on corpus windows: blocks start after a prefix of 1..L tokens drawn per sequence
    (aligned), or at multiples of L from position 0 with every slot maskable (the recipe's first form)."""
    b, n = x0.shape
    if aligned:
        offsets = torch.randint(1, block_size + 1, (b,), generator=gen)
        l_diff, _, clean = diffusion_terms(model, x0, mask_id, block_size, eps, gen, offsets)
    else:
        offsets = torch.zeros(b, dtype=torch.long)
        keep = torch.ones(b, n, dtype=torch.bool)
        xt, masked, t = noisy_copy(x0, mask_id, eps, gen, keep)
        logits = model(torch.cat([xt, x0], dim=1), doubled_positions(n), batch_doubled_mask(n, block_size, offsets))
        noisy, clean = logits[:, :n], logits[:, n:]
        ce = F.cross_entropy(noisy.reshape(-1, noisy.shape[-1]), x0.reshape(-1), reduction="none").view(b, n)
        l_diff = (ce * masked / t[:, None]).sum() / (b * n)
    l_ar = F.cross_entropy(clean[:, :-1].reshape(-1, clean.shape[-1]), x0[:, 1:].reshape(-1))
    loss = l_ar + alpha * l_diff
    return loss, {"ar": l_ar.item(), "diff": l_diff.item(), "loss": loss.item()}


@torch.no_grad()
def heldout_ar_loss(model, stream: torch.Tensor, seq_len: int, windows: int = 64) -> float:
    """Mean next-token cross-entropy over `windows` evenly spaced windows of a held-out token stream."""
    model.eval()
    starts = torch.linspace(0, stream.numel() - seq_len - 1, windows).long().tolist()
    x = torch.stack([stream[s:s + seq_len] for s in starts])
    loss = sum(ar_loss(model, x[i:i + 16]).item() * len(x[i:i + 16]) for i in range(0, len(x), 16)) / len(x)
    model.train()
    return loss


"""L = L_AR + alpha * L_diff over the doubled sequence [x_t | x_0] (see masks.py).

x_t masks each token of x_0 with probability t, t ~ U(eps, 1) drawn per sequence. L_diff is the
cross-entropy on the masked noisy positions (no shift: logits at i predict x_0[i]) divided by t and
averaged over all noisy positions; L_AR is the shifted cross-entropy of the clean stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import causal_mask, doubled_mask, doubled_positions


def noisy_copy(x0: torch.Tensor, mask_id: int, eps: float, gen: torch.Generator):
    """(x_t, masked [b, n] bool, t [b])."""
    b, n = x0.shape
    t = eps + (1 - eps) * torch.rand(b, generator=gen)
    masked = torch.rand(b, n, generator=gen) < t[:, None]
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked, t


def ar_loss(model, x0: torch.Tensor) -> torch.Tensor:
    n = x0.shape[1]
    logits = model(x0, torch.arange(n), causal_mask(n))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x0[:, 1:].reshape(-1))


def joint_loss(model, x0: torch.Tensor, mask_id: int, block_size: int, alpha: float, eps: float,
               gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    b, n = x0.shape
    xt, masked, t = noisy_copy(x0, mask_id, eps, gen)
    logits = model(torch.cat([xt, x0], dim=1), doubled_positions(n), doubled_mask(n, block_size))
    noisy, clean = logits[:, :n], logits[:, n:]
    l_ar = F.cross_entropy(clean[:, :-1].reshape(-1, clean.shape[-1]), x0[:, 1:].reshape(-1))
    ce = F.cross_entropy(noisy.reshape(-1, noisy.shape[-1]), x0.reshape(-1), reduction="none").view(b, n)
    l_diff = (ce * masked / t[:, None]).sum() / (b * n)
    loss = l_ar + alpha * l_diff
    return loss, {"ar": l_ar.item(), "diff": l_diff.item(), "loss": loss.item()}

"""The attention mask of the doubled training sequence [x_t | x_0] (noisy copy, then clean copy).

- A noisy token sees every noisy token of its own block (bidirectional) and the clean tokens of the
  *earlier* blocks only: exactly what a diffusion block sees at inference (itself + the causal cache).
- A clean token sees the clean tokens up to itself (plain causal): the AR stream.
- RoPE positions restart at 0 for the clean half, so a noisy token and its clean twin share a position.
"""

from __future__ import annotations

import torch


def doubled_mask(n: int, block_size: int, device=None) -> torch.Tensor:
    """[2n, 2n] bool, True where query (row) may attend to key (column)."""
    idx = torch.arange(n, device=device)
    blk = idx // block_size
    noisy_noisy = blk[:, None] == blk[None, :]
    noisy_clean = blk[None, :] < blk[:, None]
    clean_clean = idx[None, :] <= idx[:, None]
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)
    bottom = torch.cat([torch.zeros(n, n, dtype=torch.bool, device=device), clean_clean], dim=1)
    return torch.cat([top, bottom], dim=0)


def doubled_positions(n: int, device=None) -> torch.Tensor:
    """RoPE positions of [x_t | x_0]: 0..n-1 twice."""
    idx = torch.arange(n, device=device)
    return torch.cat([idx, idx])


def causal_mask(n: int, device=None) -> torch.Tensor:
    idx = torch.arange(n, device=device)
    return idx[None, :] <= idx[:, None]

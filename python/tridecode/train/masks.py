"""The attention mask of the doubled training sequence [x_t | x_0] (noisy copy, then clean copy).

- The noisy copy is cut into blocks of block_size starting at `offset` (the length of a clean prefix, as
  at inference, where a block starts right after the prompt): a noisy token sees every noisy token of its
  own block (bidirectional) and the clean tokens before its block's start: exactly what a diffusion block
  sees at inference (itself + the causal cache). Noisy tokens of the prefix (before offset) carry no loss.
- A clean token sees the clean tokens up to itself (plain causal): the AR stream.
- RoPE positions restart at 0 for the clean half, so a noisy token and its clean twin share a position.
"""

from __future__ import annotations

import torch


def block_index(n: int, block_size: int, offset: int = 0, device=None) -> torch.Tensor:
    """[n]: the block of each position; -1 for the prefix before offset."""
    idx = torch.arange(n, device=device)
    return torch.div(idx - offset, block_size, rounding_mode="floor")


def doubled_mask(n: int, block_size: int, offset: int = 0, device=None) -> torch.Tensor:
    """[2n, 2n] bool, True where query (row) may attend to key (column)."""
    idx = torch.arange(n, device=device)
    blk = block_index(n, block_size, offset, device)
    noisy_noisy = blk[:, None] == blk[None, :]
    noisy_clean = idx[None, :] < (offset + blk[:, None] * block_size)
    clean_clean = idx[None, :] <= idx[:, None]
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)
    bottom = torch.cat([torch.zeros(n, n, dtype=torch.bool, device=device), clean_clean], dim=1)
    return torch.cat([top, bottom], dim=0)


def batch_doubled_mask(n: int, block_size: int, offsets, device=None) -> torch.Tensor:
    """[b, 1, 2n, 2n]: one doubled mask per sequence (offsets: one per sequence)."""
    return torch.stack([doubled_mask(n, block_size, int(o), device) for o in offsets])[:, None]


def doubled_positions(n: int, device=None) -> torch.Tensor:
    """RoPE positions of [x_t | x_0]: 0..n-1 twice."""
    idx = torch.arange(n, device=device)
    return torch.cat([idx, idx])


def causal_mask(n: int, device=None) -> torch.Tensor:
    idx = torch.arange(n, device=device)
    return idx[None, :] <= idx[:, None]

"""Token selection from one row of logits: greedy (temperature 0) or seeded sampling with top-k / top-p.
The mask id of a tri-mode model is never selected."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _C
from . import _check as check


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def validate(self) -> None:
        check.real("temperature", self.temperature, 0.0)
        check.optional_integer("top_k", self.top_k, 1)
        if self.top_p is not None:
            check.real("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            check.seed("seed", self.seed)


class Sampler:
    def __init__(self, params: SamplingParams, exclude_id: int | None):
        params.validate()
        self.params = params
        self.exclude_id = -1 if exclude_id is None else int(exclude_id)
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits: [vocab] float32 -> the chosen token id."""
        if self.params.temperature == 0:
            idx, _ = _C.select(logits.reshape(1, -1), self.exclude_id, 0.0, 0, 0)
            return int(idx[0])
        return sample(logits, self.params, self.rng, self.exclude_id)


def filtered_probs(logits: np.ndarray, params: SamplingParams, exclude_id: int = -1) -> np.ndarray:
    """softmax(logits / T) restricted to top-k then top-p, renormalised (float64). Used by the sampler and
    by the statistical tests."""
    with np.errstate(over="ignore"):
        z = logits.astype(np.float64) / params.temperature
    if exclude_id >= 0:
        z[exclude_id] = -np.inf
    if np.isinf(z.max()):   # a temperature so small that the logits overflow: the limit is greedy
        z = np.where(z == z.max(), 0.0, -np.inf)
    if params.top_k is not None and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z[z < kth] = -np.inf
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p is not None and params.top_p < 1:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = int(np.searchsorted(cum, params.top_p) + 1)   # smallest prefix with mass >= top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[:keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, exclude_id: int = -1) -> int:
    p = filtered_probs(logits, params, exclude_id)
    return int(rng.choice(p.size, p=p))

"""numpy references of the decode-loop ops: token selection (argmax / Gumbel-max with the same counter hash
as the native code), diffusion commit selection and its fixed schedule, speculative acceptance."""

from __future__ import annotations

import numpy as np

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform01(seed, stream, row, col):
    h = _mix64(np.uint64(seed) ^ _mix64(np.uint64(stream) ^ _mix64(np.asarray(row, np.uint64) ^
                                                                 _mix64(np.asarray(col, np.uint64)))))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def select(logits, exclude_id=-1, temperature=0.0, seed=0, stream=0):
    """Per row of logits [n, vocab]: (chosen ids, softmax confidence of the choice over unscaled logits)."""
    l = np.asarray(logits, np.float64)
    n, vocab = l.shape
    if temperature > 0:
        rows = np.arange(n, dtype=np.uint64)[:, None]
        cols = np.arange(vocab, dtype=np.uint64)[None, :]
        key = l / np.float64(np.float32(temperature)) - np.log(-np.log(uniform01(seed, stream, rows, cols)))
    else:
        key = l.copy()
    if exclude_id >= 0:
        key[:, exclude_id] = -np.inf
    idx = np.argmax(key, axis=1)
    m = l.max(axis=1, keepdims=True)
    p = np.exp(l - m) / np.exp(l - m).sum(axis=1, keepdims=True)
    return idx, p[np.arange(n), idx]


def select_commits(conf, masked, threshold=None, k=None):
    """Threshold mode (k None): the most confident masked slot plus every masked slot with conf >= threshold.
    Fixed mode: the k most confident masked slots. Ties go to the lower slot. Returns a bool mask."""
    conf = np.asarray(conf, np.float64)
    masked = np.asarray(masked, bool)
    slots = [i for i in np.argsort(-conf, kind="stable") if masked[i]]
    commit = np.zeros(conf.shape, bool)
    if not slots:
        return commit
    if k is None:
        commit[slots[0]] = True
        for i in slots[1:]:
            commit[i] = conf[i] >= threshold
    else:
        commit[slots[:k]] = True
    return commit


def fixed_schedule(masks: int, steps: int) -> list[int]:
    """Tokens to commit at each step: masks spread evenly over steps, the remainder on the first steps."""
    base, rem = divmod(masks, steps)
    return [base + (1 if s < rem else 0) for s in range(steps)]


def accept_length(draft, target):
    """The longest c with target[j] == draft[j + 1] for j < c."""
    c = 0
    while c < len(draft) - 1 and target[c] == draft[c + 1]:
        c += 1
    return c

"""Mode B, block diffusion (SPEC section 5).

Causal prefill; the AR seed opens each block [seed, MASK x (L-1)]. Bidirectional forwards over the cache
(never written) fill the masks: each step commits the most confident masked slot plus every one at or above
the threshold (or, with threshold None, a fixed number per step); nothing is re-masked. Denoising stops
when no mask is left, or when the block holds an EOS with no mask before it. One causal forward then commits
the block's K/V and gives the next seed.

Deviation from the reference, on purpose: max_new_tokens need not be a multiple of L. Blocks are always L
long (so tokens equal the reference's, truncated), and the last block stops denoising once the slots that
will be returned are filled.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .. import _C
from ..reference.decode import fixed_schedule
from ..result import GenerateResult
from .common import Emitter, first_eos


def diffusion_generate(model, prompt, out: Emitter, block_length, threshold, steps, selector) -> GenerateResult:
    L = block_length
    mask = model.config.mask_token_id
    eos_ids = out.eos_ids
    blocks = math.ceil(out.max_new / L)
    model.reset()
    model.check_room(len(prompt) + blocks * L)
    start = time.perf_counter()
    forwards = 0

    def run(ids, causal, rows):
        nonlocal forwards
        idx, conf = selector(ids, causal=causal, write_cache=causal, last_only=rows == "last", stream=forwards)
        forwards += 1
        return idx, conf

    seed_idx, seed_conf = run(prompt, True, "last")
    seed, seed_conf = int(seed_idx[0]), float(seed_conf[0])
    steps_per_block = []
    schedule = fixed_schedule(L - 1, steps) if threshold is None else None
    while not out.done:
        need = min(L, out.remaining)        # slots of this block that will be returned
        x = np.full(L, mask, np.int32)
        x[0] = seed
        chosen = np.zeros(L, np.float32)     # the probability each slot was committed with
        chosen[0] = seed_conf
        masked = np.ones(L, np.uint8)
        masked[0] = 0
        n_steps = 0
        while masked.any() and n_steps < L:
            idx, conf = run(x, False, "all")
            if out.cancelled:
                break
            k = schedule[n_steps] if schedule is not None else -1
            commit = _C.select_commits(conf, masked, 0.0 if threshold is None else threshold, k).astype(bool)
            x[commit] = idx[commit]
            chosen[commit] = conf[commit]
            masked[commit] = 0
            n_steps += 1
            e = first_eos(np.where(masked, -1, x).tolist(), eos_ids)
            if e >= 0 and not masked[:e].any():
                break
            if not masked[:need].any():
                break
        if out.cancelled:
            break
        steps_per_block.append(n_steps)
        seed_idx, seed_conf = run(x, True, "last")   # commits the block's K/V
        seed, seed_conf = int(seed_idx[0]), float(seed_conf[0])
        out.emit(x[:need].tolist(), chosen[:need].tolist())
    seconds = time.perf_counter() - start
    return GenerateResult(tokens=out.tokens, mode="diffusion", nfe=forwards - 1, forwards=forwards,
                          seconds=seconds, stopped_on_eos=out.stopped_on_eos,
                          steps_per_block=steps_per_block)

"""Mode C, linear self-speculation (SPEC section 6).

Causal prefill gives the pending token. Each cycle drafts the block [pending, MASK x (L-1)] with one
bidirectional forward (the LoRA drafter on; iterated when draft_threshold > 0), verifies it with one causal
forward that writes its L K/V, accepts the longest prefix the verifier agrees with plus the verifier's own
next token (1..L tokens), and crops the cache back to the accepted length. At temperature 0 the output is
the AR greedy output.
"""

from __future__ import annotations

import time

import numpy as np

from .. import _C
from ..result import GenerateResult
from .common import Emitter


def self_spec_generate(model, prompt, out: Emitter, block_length, draft_threshold, use_lora,
                       selector) -> GenerateResult:
    L = block_length
    max_new_tokens = out.max_new
    mask = model.config.mask_token_id
    model.reset()
    # A cycle runs only while fewer than max_new_tokens are out, so its block starts at most at
    # prompt + max_new_tokens - 2 (the pending token is not cached) and writes L rows from there.
    model.check_room(len(prompt) + (max_new_tokens - 2 + L if max_new_tokens > 1 else 0))
    start = time.perf_counter()
    forwards = 0

    def run(ids, causal, last_only=False, lora=False):
        nonlocal forwards
        res = selector(ids, causal=causal, write_cache=causal, last_only=last_only, stream=forwards,
                       use_lora=lora)
        forwards += 1
        return res

    idx, conf = run(prompt, True, last_only=True)
    pending = int(idx[0])
    out.emit([pending], [conf[0]])
    accepted, drafts_per_cycle = [], []
    while not out.done:
        base = model.cache_length
        block = np.full(L, mask, np.int32)
        block[0] = pending
        masked = np.ones(L, np.uint8)
        masked[0] = 0
        drafts = 0
        while masked.any() and not out.cancelled:
            idx, conf = run(block, False, lora=use_lora)
            drafts += 1
            if draft_threshold > 0:
                commit = _C.select_commits(conf, masked, draft_threshold, -1).astype(bool)
            else:
                commit = masked.astype(bool)
            block[commit] = idx[commit]
            masked[commit] = 0
        if out.cancelled:
            break
        target, tconf = run(block, True)             # verify: writes the block's L K/V
        c = _C.accept_length(block, target)
        model.crop(base + c + 1)                     # keep pending + c matched drafts
        pending = int(target[c])
        out.emit(target[: c + 1].tolist(), tconf[: c + 1].tolist())
        accepted.append(c + 1)
        drafts_per_cycle.append(drafts)
    seconds = time.perf_counter() - start
    # The reference's nfe for linear_spec_generate counts every forward, the prefill included.
    return GenerateResult(tokens=out.tokens, mode="self_spec", nfe=forwards, forwards=forwards, seconds=seconds,
                          stopped_on_eos=out.stopped_on_eos, accepted_per_cycle=accepted,
                          drafts_per_cycle=drafts_per_cycle)

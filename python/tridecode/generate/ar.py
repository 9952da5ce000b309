"""Mode A, autoregressive decoding (SPEC section 4).

Causal prefill of the prompt, then one causal forward per token; stop at EOS (kept) or max_new_tokens.
Only the last row of logits is computed in each forward.
"""

from __future__ import annotations

import time

from ..result import GenerateResult


def ar_generate(model, prompt, max_new_tokens, sampler, eos_ids, on_tokens=None) -> GenerateResult:
    model.reset()
    model.check_room(len(prompt) + max_new_tokens - 1)   # the last token is never fed back
    start = time.perf_counter()
    logits = model.forward(prompt, mode="causal", logits="last")
    forwards = 1
    tokens: list[int] = []
    while True:
        tok = sampler(logits[-1])
        tokens.append(tok)
        if on_tokens is not None:
            on_tokens([tok])
        if tok in eos_ids or len(tokens) >= max_new_tokens:
            break
        logits = model.forward([tok], mode="causal", logits="last")
        forwards += 1
    seconds = time.perf_counter() - start
    # The reference's nfe for ar_generate counts one forward per generated token (prefill included).
    return GenerateResult(tokens=tokens, mode="ar", nfe=forwards, forwards=forwards, seconds=seconds,
                          stopped_on_eos=tokens[-1] in eos_ids)

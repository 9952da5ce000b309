"""Mode A, autoregressive decoding (SPEC section 4).

Causal prefill of the prompt, then one causal forward per token; stop at EOS (kept) or max_new_tokens.
Only the last row goes through the LM head.
"""

from __future__ import annotations

import time

from ..result import GenerateResult
from .common import Emitter


def ar_generate(model, prompt, out: Emitter, picker) -> GenerateResult:
    """picker(ids, stream) runs one causal forward that writes the cache and returns (the next token, the
    probability it had)."""
    model.reset()
    model.check_room(len(prompt) + out.max_new - 1)   # the last token is never fed back
    start = time.perf_counter()
    forwards = 0
    ids = prompt
    while True:
        tok, conf = picker(ids, forwards)
        forwards += 1
        out.emit([tok], [conf])
        if out.done:
            break
        ids = [tok]
    seconds = time.perf_counter() - start
    # The reference's nfe for ar_generate counts one forward per generated token (prefill included).
    return GenerateResult(tokens=out.tokens, mode="ar", nfe=forwards, forwards=forwards, seconds=seconds,
                          stopped_on_eos=out.stopped_on_eos)

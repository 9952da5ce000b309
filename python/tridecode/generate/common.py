"""Pieces shared by the generate loops."""

from __future__ import annotations


def first_eos(tokens, eos_ids) -> int:
    """Index of the first EOS in tokens, or -1."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return i
    return -1


class Emitter:
    """Collects output tokens under the output contract: at most max_new_tokens, and nothing after the
    first EOS (which is kept). Streams each accepted run to the callback."""

    def __init__(self, max_new_tokens: int, eos_ids, on_tokens=None):
        self.max_new = max_new_tokens
        self.eos_ids = eos_ids
        self.on_tokens = on_tokens
        self.tokens: list[int] = []
        self.stopped_on_eos = False

    @property
    def done(self) -> bool:
        return self.stopped_on_eos or len(self.tokens) >= self.max_new

    @property
    def remaining(self) -> int:
        return self.max_new - len(self.tokens)

    def emit(self, run) -> None:
        run = [int(t) for t in run][: self.remaining]
        e = first_eos(run, self.eos_ids)
        if e >= 0:
            run = run[: e + 1]
            self.stopped_on_eos = True
        if run:
            self.tokens.extend(run)
            if self.on_tokens is not None:
                self.on_tokens(run)

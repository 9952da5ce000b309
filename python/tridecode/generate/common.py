"""Pieces shared by the generate loops."""

from __future__ import annotations

import math

from ..result import StreamChunk


def first_eos(tokens, eos_ids) -> int:
    """Index of the first EOS in tokens, or -1."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return i
    return -1


class Emitter:
    """Collects output tokens under the output contract: at most max_new_tokens, nothing after the first EOS
    (which is kept), nothing after the token that completes a stop string (the text ends before the string).
    Streams each accepted run to the callbacks: on_tokens(token ids), on_chunk(StreamChunk).

    `cancel` (a threading.Event) ends the generation at the next check of `done`; the loops check it after
    each forward, so at most one more forward runs."""

    def __init__(self, max_new_tokens: int, eos_ids, on_tokens=None, *, text=None, on_chunk=None,
                 logprobs: bool = False, cancel=None):
        self.max_new = max_new_tokens
        self.eos_ids = eos_ids
        self.on_tokens = on_tokens
        self.on_chunk = on_chunk
        self.text = text                 # a TextTracker when the model has a tokenizer
        self.cancel = cancel
        self.tokens: list[int] = []
        self.logprobs: list[float] | None = [] if logprobs else None
        self.stopped_on_eos = False
        self._sent = 0                   # characters of text already streamed

    @property
    def stopped(self) -> bool:
        return self.stopped_on_eos or (self.text is not None and self.text.stop_string is not None)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    @property
    def done(self) -> bool:
        return self.stopped or len(self.tokens) >= self.max_new or self.cancelled

    @property
    def remaining(self) -> int:
        return self.max_new - len(self.tokens)

    def emit(self, run, confidences=None) -> None:
        """run: the tokens committed, in order; confidences: the probability each was chosen with."""
        run = [int(t) for t in run][: self.remaining]
        n = len(run)
        for i, t in enumerate(run):
            if t in self.eos_ids:
                self.stopped_on_eos = True
            stop_here = self.stopped_on_eos or (self.text is not None and self.text.push(t))
            if stop_here:
                n = i + 1
                break
        run = run[:n]
        if not run:
            return
        self.tokens.extend(run)
        lp = None
        if self.logprobs is not None:
            lp = [math.log(float(c)) if c > 0 else -math.inf for c in confidences[:n]]
            self.logprobs.extend(lp)
        if self.on_tokens is not None:
            self.on_tokens(run)
        if self.on_chunk is not None:
            self.on_chunk(StreamChunk(self._take_text(self.stopped or len(self.tokens) >= self.max_new), run, lp))

    def _take_text(self, final: bool) -> str:
        if self.text is None:
            return ""
        end = max(self._sent, self.text.releasable(final))
        out = self.text.text[self._sent:end]
        self._sent = end
        return out

    def finish(self) -> str:
        """Ends the output; returns the finish reason. A last chunk streams the text still held back."""
        if self.text is not None:
            self.text.finish()
            rest = self._take_text(True)
            if rest and self.on_chunk is not None:
                self.on_chunk(StreamChunk(rest, [], [] if self.logprobs is not None else None))
        if self.stopped:
            return "stop"
        if len(self.tokens) >= self.max_new:
            return "length"
        return "cancelled" if self.cancelled else "length"

"""Output text as tokens are committed: incremental decoding, stop strings, and the text safe to stream."""

from __future__ import annotations

from .errors import ArgumentTypeError

_REPLACEMENT = "\ufffd"   # what a byte-level decoder gives for a character whose bytes have not all arrived


def check_stop(stop) -> tuple:
    """stop: None, a string or a sequence of strings -> a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(f"generate: stop must be a string or a list of strings, got {type(stop).__name__}")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise ArgumentTypeError(f"generate: stop[{i}] must be a string, got {type(s).__name__}")
        if s == "":
            raise ValueError(f"generate: stop[{i}] is the empty string")
    return tuple(dict.fromkeys(items))


class TextTracker:
    """Decodes the output one token at a time and finds stop strings in it.

    The text of the new token is decode(window + token) minus decode(window), over a window of the tokens
    before it: a multi-token character comes out whole once its last byte is there (until then the tokens
    wait), a tokenizer that drops a leading space at the start of a decode keeps the space of a later
    token, and long outputs stay linear. `text` is the output so far, cut before the first stop string;
    `releasable` is the part of it that can be streamed without ever being taken back (what could still
    grow into a stop string is held)."""

    WINDOW = 6

    def __init__(self, tokenizer, stop: tuple = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.stop_string = None
        self._prefix = 0     # ids[_prefix:_read] is the decode window, ids[_read:] waits for its character
        self._read = 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def push(self, token: int) -> bool:
        """Adds one token; True when the output now holds a stop string (the text is cut before it)."""
        self.ids.append(int(token))
        window = self.ids[self._prefix:self._read]
        before = self._decode(window)
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return False   # no new whole character yet
        self._add(after[len(before):])
        self._read = len(self.ids)
        self._prefix = max(0, self._read - self.WINDOW)
        return self.stop_string is not None

    def finish(self) -> None:
        """The output has ended: the tokens still waiting for a character's last byte count as they decode."""
        if self.stop_string is None and self._read < len(self.ids):
            before = self._decode(self.ids[self._prefix:self._read])
            after = self._decode(self.ids[self._prefix:])
            if len(after) > len(before):
                self._add(after[len(before):])
            self._read = len(self.ids)

    def _add(self, delta: str) -> None:
        start = len(self.text)
        self.text += delta
        if not self.stop:
            return
        best = None
        for s in self.stop:   # the earliest match wins; among matches at one place, the first listed
            p = self.text.find(s, max(0, start - len(s) + 1))
            if p >= 0 and (best is None or p < best[0]):
                best = (p, s)
        if best is not None:
            self.text = self.text[:best[0]]
            self.stop_string = best[1]

    def releasable(self, final: bool) -> int:
        """Length of the text that can be streamed: all of it at the end, else all but the longest tail that
        is the start of a stop string."""
        if final or self.stop_string is not None or not self.stop:
            return len(self.text)
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        return len(self.text) - hold

"""Text <-> token ids through a Hugging Face tokenizer.json (the `tokenizers` package)."""

from __future__ import annotations

from .errors import CheckpointError


class Tokenizer:
    def __init__(self, tok):
        self._tok = tok

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:  # pragma: no cover - tokenizers is a dependency
            raise ImportError("reading tokenizer.json needs the 'tokenizers' package") from e
        try:
            return cls(HFTokenizer.from_file(path))
        except Exception as e:
            raise CheckpointError(f"tokenizer.json: cannot be read: {e}") from e

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

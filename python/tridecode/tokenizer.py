"""Text <-> token ids through a Hugging Face tokenizer.json (the `tokenizers` package)."""

from __future__ import annotations

from . import _files
from .errors import CheckpointError

#: Encoded once at load: a tokenizer that cannot encode plain text is refused there, not at generate().
PROBE = "Hello, world! 123"


class Tokenizer:
    def __init__(self, tok, path: str = "tokenizer.json"):
        self._tok = tok
        self.path = path

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:  # pragma: no cover - tokenizers is a dependency
            raise ImportError("reading tokenizer.json needs the 'tokenizers' package") from e
        raw = _files.read_bytes(path, _files.MAX_TOKENIZER_BYTES, "tokenizer.json")
        try:
            tok = cls(HFTokenizer.from_str(raw.decode("utf-8")), path)
        except Exception as e:   # the tokenizers package raises plain Exception for any malformed file
            raise CheckpointError(f"{path}: cannot be read: {e}") from None
        try:
            tok.decode(tok.encode(PROBE))
        except ValueError as e:
            raise CheckpointError(f"{path}: loads, but {e}") from None
        return tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, token_id: int):
        """The token's string in the vocabulary (None for an id outside it)."""
        return self._tok.id_to_token(int(token_id))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        except Exception as e:   # e.g. "WordLevel error: Missing [UNK] token"
            raise ValueError(f"{self.path}: cannot encode the text: {e}") from None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        try:
            return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        except Exception as e:
            raise ValueError(f"{self.path}: cannot decode token ids: {e}") from None

"""The user-facing model: forward over the KV cache, cache control, and generate()."""

from __future__ import annotations

import numbers

import numpy as np

from .config import ModelConfig
from .generate import ar_generate
from .result import GenerateResult
from .sampling import Sampler, SamplingParams

MODES = ("ar",)


class Model:
    """A loaded checkpoint with its own KV cache. Create it with `tridecode.load`."""

    def __init__(self, native, config: ModelConfig, weights: dict, *, directory: str, tokenizer=None,
                 tied: bool = False):
        self._native = native
        self._weights = weights          # keeps the memory maps alive for the native views
        self.config = config
        self.directory = directory
        self.tokenizer = tokenizer
        self.tied_embeddings = tied
        self.device = "cpu"

    # ---- cache ----
    @property
    def cache_length(self) -> int:
        """Number of committed tokens in the KV cache."""
        return self._native.cache_length

    @property
    def max_context(self) -> int:
        """KV-cache capacity in tokens."""
        return self._native.capacity

    def reset(self) -> None:
        """Empties the KV cache."""
        self._native.reset()

    def crop(self, length: int) -> None:
        """Rolls the cache back to its first `length` tokens."""
        self._native.crop(int(length))

    def check_room(self, tokens: int) -> None:
        if self.cache_length + tokens > self.max_context:
            raise ValueError(f"the request needs {self.cache_length + tokens} tokens of KV cache, but the "
                             f"capacity is {self.max_context} (pass a larger max_context to tridecode.load)")

    @property
    def weight_bytes(self) -> int:
        return sum(a.nbytes for a, _ in self._weights.values())

    # ---- forward ----
    def _ids(self, token_ids, what: str = "token_ids", allow_mask: bool = True) -> np.ndarray:
        if isinstance(token_ids, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of integer token ids, got {type(token_ids).__name__}")
        arr = np.asarray(token_ids)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {list(arr.shape)}")
        if arr.size == 0:
            raise ValueError(f"{what} is empty")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.config.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{what}[{i}] = {int(arr[i])} is outside the vocabulary [0, "
                             f"{self.config.vocab_size})")
        mask = self.config.mask_token_id
        if not allow_mask and mask is not None and (arr == mask).any():
            i = int(np.argmax(arr == mask))
            raise ValueError(f"{what}[{i}] is the mask token id {mask}, which a prompt may not contain")
        return arr.astype(np.int32)

    def forward(self, token_ids, mode: str = "causal", write_cache: bool | None = None,
                start_pos: int | None = None, logits: str = "all") -> np.ndarray:
        """Runs a chunk of tokens over the cached context and returns logits as float32 numpy.

        mode: "causal" (token i sees the cache and chunk tokens 0..i) or "bidirectional" (every chunk token
            sees the cache and the whole chunk; never writes the cache).
        write_cache: commit the chunk's K/V (default: True for causal, False for bidirectional).
        start_pos: absolute position of the first token (default: the cache length).
        logits: "all" -> [n, vocab]; "last" -> [1, vocab] (cheaper: the LM head runs on one row).
        Causal logits at i predict token i+1; bidirectional logits at i predict token i.
        """
        if mode not in ("causal", "bidirectional"):
            raise ValueError(f"forward: mode must be 'causal' or 'bidirectional', got {mode!r}")
        causal = mode == "causal"
        if write_cache is None:
            write_cache = causal
        if write_cache and not causal:
            raise ValueError("forward: a bidirectional forward cannot write the cache")
        if logits not in ("all", "last"):
            raise ValueError(f"forward: logits must be 'all' or 'last', got {logits!r}")
        if start_pos is None:
            start = -1
        elif isinstance(start_pos, numbers.Integral) and not isinstance(start_pos, bool) and start_pos >= 0:
            start = int(start_pos)
        else:
            raise ValueError(f"forward: start_pos must be None or an integer >= 0, got {start_pos!r}")
        ids = self._ids(token_ids)
        self.check_room(ids.size)
        return self._native.forward(ids, start, causal, bool(write_cache), -1 if logits == "last" else 0)

    # ---- text ----
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: the checkpoint has no tokenizer.json; pass token ids instead")
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: the checkpoint has no tokenizer.json")
        return self.tokenizer.decode(ids)

    # ---- generation ----
    def _eos_ids(self, eos_token_id) -> frozenset:
        if eos_token_id is None:
            return frozenset(self.config.eos_token_ids)
        ids = eos_token_id if isinstance(eos_token_id, (list, tuple, set, frozenset)) else [eos_token_id]
        for e in ids:
            if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < self.config.vocab_size:
                raise ValueError(f"eos_token_id {e!r} is not a token id in [0, {self.config.vocab_size})")
        return frozenset(int(e) for e in ids)

    def generate(self, prompt, mode: str = "ar", max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id=None, on_tokens=None) -> GenerateResult:
        """Generates from a prompt (token ids, or text when the checkpoint has a tokenizer).

        mode: "ar" (autoregressive).
        temperature 0 is greedy; otherwise tokens are sampled from softmax(logits / temperature) after
        optional top_k / top_p filtering, reproducibly for a given seed.
        eos_token_id: int or list; default the config's. Generation stops after the first EOS (kept).
        on_tokens: called with each list of newly committed tokens as they are produced (streaming).
        """
        if mode not in MODES:
            raise ValueError(f"generate: unknown mode {mode!r} (available: {', '.join(MODES)})")
        if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral)
                or max_new_tokens < 1):
            raise ValueError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        text_in = isinstance(prompt, str)
        ids = self._ids(self.encode(prompt) if text_in else prompt, "prompt", allow_mask=False)
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, seed), self.config.mask_token_id)
        eos = self._eos_ids(eos_token_id)
        result = ar_generate(self, ids, int(max_new_tokens), sampler, eos, on_tokens)
        if self.tokenizer is not None:
            result.text = self.tokenizer.decode(result.tokens)
        return result

    def __repr__(self) -> str:
        c = self.config
        return (f"tridecode.Model({c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}x{c.head_dim}, vocab={c.vocab_size}, "
                f"device={self.device}, max_context={self.max_context})")

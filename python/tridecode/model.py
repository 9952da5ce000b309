"""The user-facing model: forward over the KV cache, cache control, and generate()."""

from __future__ import annotations

import functools
import numbers
import queue
import threading

import numpy as np

from . import _C
from . import _check as check
from .config import ModelConfig
from .errors import ArgumentTypeError
from .generate import ar_generate, diffusion_generate, self_spec_generate
from .generate.common import Emitter
from .params import DEFAULTS, normalize_mode
from .result import GenerateResult, StreamChunk
from .sampling import Sampler, SamplingParams
from .text import TextTracker, check_stop
_DEFAULT = object()   # distinguishes "threshold not given" from threshold=None (the fixed schedule)


def _is_zero(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == 0


def _locked(method):
    """Runs the method under the model's lock (see Model.lock)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class Model:
    """A loaded checkpoint with its own KV cache. Create it with `tridecode.load`.

    Thread safety: a model may be shared between threads. Every call that touches its state (forward,
    generate, crop, reset, LoRA, cache queries) holds `model.lock`, a reentrant lock, for its whole
    duration, so calls from different threads run one after another, each on a consistent cache; a whole
    generate() is one such call. Hold `with model.lock:` yourself to make a sequence of calls atomic (for
    example reset() then forward()). Different models run in parallel."""

    def __init__(self, native, config: ModelConfig, weights: dict, *, directory: str, tokenizer=None,
                 tied: bool = False, device: str = "cpu"):
        self.lock = threading.RLock()
        self._native = native
        self._weights = weights          # keeps the memory maps alive for the native views
        self.config = config
        self.directory = directory
        self.tokenizer = tokenizer
        self.tied_embeddings = tied
        self.device = device
        self.compute_dtype = "auto"      # "float32": bf16 weights multiply fp32 activations (load's option)
        self.lora = None               # the attached LoraAdapter, if any
        self._chat_template = None     # chat.ChatTemplate, on first use

    # ---- LoRA drafter ----
    @_locked
    def attach_lora(self, path) -> None:
        """Attaches a PEFT LoRA adapter on o_proj (the self-speculation drafter), used by draft passes only."""
        if path is None:
            raise ValueError("attach_lora: give the adapter directory (use detach_lora() to remove one)")
        from .lora import load_adapter

        adapter = load_adapter(check.path("attach_lora: path", path), self.config)
        self._native.set_lora(adapter.a, adapter.b, adapter.scale)
        self.lora = adapter

    @_locked
    def detach_lora(self) -> None:
        self._native.set_lora([], [], 0.0)
        self.lora = None

    # ---- cache ----
    @property
    def cache_length(self) -> int:
        """Number of committed tokens in the KV cache."""
        with self.lock:
            return self._native.cache_length

    @property
    def max_context(self) -> int:
        """KV-cache capacity in tokens."""
        return self._native.capacity

    @property
    def kv_cache_dtype(self) -> str:
        """Storage dtype of the KV cache: "float32" or "bfloat16" (see `tridecode.load`)."""
        return self._native.cache_dtype

    @property
    def cuda_graphs(self) -> bool:
        """Whether decode and block forwards on CUDA replay recorded CUDA graphs (see `tridecode.load`); a
        setting, not a promise: the CPU backend has none, and a shape the driver refuses runs eagerly."""
        return self._native.graphs

    @cuda_graphs.setter
    def cuda_graphs(self, on: bool) -> None:
        on = check.flag("cuda_graphs", on)
        with self.lock:
            self._native.graphs = on

    @property
    def cuda_graph_count(self) -> int:
        """CUDA graphs recorded and ready to replay (0 on the CPU)."""
        with self.lock:
            return self._native.graph_count

    @_locked
    def reset(self) -> None:
        """Empties the KV cache."""
        self._native.reset()

    @_locked
    def crop(self, length: int) -> None:
        """Rolls the cache back to its first `length` tokens (0 <= length <= cache_length)."""
        self._native.crop(check.integer("crop: length", length, 0, self._native.cache_length))

    @_locked
    def append_random_cache(self, n: int, seed: int = 0) -> None:
        """Appends n cached tokens of random K/V (N(0, 1)) without running a prefill: for benchmarks and
        traffic counts of a forward over a long context."""
        n = check.integer("append_random_cache: n", n, 0, None)
        self.check_room(n)
        self._native.append_random_cache(n, check.integer("append_random_cache: seed", seed, 0, 2**64 - 1))

    def check_room(self, tokens: int) -> None:
        if self.cache_length + tokens > self.max_context:
            raise ValueError(f"the request needs {self.cache_length + tokens} tokens of KV cache, but the "
                             f"capacity is {self.max_context} (pass a larger max_context to tridecode.load)")

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights as loaded (host memory maps on the CPU; int8 weights with their scales)."""
        return sum(a.nbytes for t in self._weights.values() for a in t if isinstance(a, np.ndarray))

    @property
    def weight_dtypes(self) -> dict:
        """{native weight name: storage dtype} ("float32", "float16", "bfloat16" or "int8")."""
        names = {0: "float32", 1: "float16", 2: "bfloat16", 3: "int8"}
        return {k: names[t[1]] for k, t in self._weights.items()}

    @property
    def device_memory_bytes(self) -> int:
        """Bytes of backend memory this model holds: on CUDA the uploaded weights, KV cache and scratch."""
        return int(self._native.backend_bytes)

    # ---- forward ----
    def _ids(self, token_ids, what: str = "token_ids", allow_mask: bool = True) -> np.ndarray:
        if isinstance(token_ids, (str, bytes)):
            raise ArgumentTypeError(f"{what} must be a sequence of integer token ids, got {type(token_ids).__name__}")
        arr = check.array(what, token_ids)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {list(arr.shape)}")
        if arr.size == 0:
            raise ValueError(f"{what} is empty")
        if arr.dtype.kind not in "iu":
            raise ArgumentTypeError(f"{what} must hold integers, got dtype {arr.dtype}")
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

    @_locked
    def forward(self, token_ids, mode: str = "causal", write_cache: bool | None = None,
                start_pos: int | None = None, logits: str = "all", use_lora: bool = False, out: str = "host"):
        """Runs a chunk of tokens over the cached context and returns logits as float32 numpy.

        mode: "causal" (token i sees the cache and chunk tokens 0..i) or "bidirectional" (every chunk token
            sees the cache and the whole chunk; never writes the cache).
        write_cache: commit the chunk's K/V (default: True for causal, False for bidirectional).
        start_pos: absolute position of the first token (default: the cache length).
        logits: "all" -> [n, vocab]; "last" -> [1, vocab] (cheaper: the LM head runs on one row).
        use_lora: apply the attached LoRA adapter on o_proj (as self-speculation drafts do).
        out: "host" returns numpy; "device" (CUDA models) returns a cupy array that never left the GPU.
        Causal logits at i predict token i+1; bidirectional logits at i predict token i.
        """
        ids, start, causal, write_cache = self._check_forward(token_ids, mode, write_cache, start_pos, logits,
                                                              use_lora)
        last = -1 if logits == "last" else 0
        check.one_of("forward: out", out, ("host", "device"))
        if out == "host":
            return self._native.forward(ids, start, causal, write_cache, last, bool(use_lora))
        if out != "device":
            raise ValueError(f"forward: out must be 'host' or 'device', got {out!r}")
        if self.device != "cuda":
            raise ValueError("forward: out='device' needs a model loaded with device='cuda'")
        if _C.cuda_emulated():
            raise ValueError("forward: out='device' returns a cupy array, which needs a real GPU; this build "
                             "emulates CUDA on the CPU (TRIDECODE_CUDA=EMU): use out='host'")
        from ._device import cupy
        result = cupy().empty((1 if last else ids.size, self.config.vocab_size), dtype=np.float32)
        self._native.forward_into(ids, start, causal, write_cache, last, bool(use_lora), int(result.data.ptr))
        return result

    @_locked
    def forward_select(self, token_ids, mode: str = "causal", write_cache: bool | None = None,
                       start_pos: int | None = None, logits: str = "all", use_lora: bool = False,
                       temperature: float = 0.0, seed: int = 0, stream: int = 0):
        """Like forward, but the sampler head is fused with the LM head: returns (token ids, confidences)
        per row instead of logits. temperature 0 is argmax; > 0 is Gumbel-max with noise from
        (seed, stream, row, token). The mask token is never chosen."""
        ids, start, causal, write_cache = self._check_forward(token_ids, mode, write_cache, start_pos, logits,
                                                              use_lora)
        temperature = check.real("forward_select: temperature", temperature, 0.0)
        seed = check.seed("forward_select: seed", seed)
        stream = check.seed("forward_select: stream", stream)
        exclude = -1 if self.config.mask_token_id is None else self.config.mask_token_id
        return self._native.forward_select(ids, start, causal, write_cache, -1 if logits == "last" else 0,
                                           use_lora, exclude, temperature, seed, stream)

    def _check_forward(self, token_ids, mode, write_cache, start_pos, logits, use_lora):
        causal = check.one_of("forward: mode", mode, ("causal", "bidirectional")) == "causal"
        write_cache = causal if write_cache is None else check.flag("forward: write_cache", write_cache)
        if write_cache and not causal:
            raise ValueError("forward: a bidirectional forward cannot write the cache")
        check.one_of("forward: logits", logits, ("all", "last"))
        use_lora = check.flag("forward: use_lora", use_lora)
        if use_lora and self.lora is None:
            raise ValueError("forward: use_lora=True but no LoRA adapter is attached")
        ids = self._ids(token_ids)
        max_pos = self.config.max_position_embeddings
        if start_pos is None:
            start = -1
            if self._native.cache_length + ids.size > max_pos:
                raise ValueError(f"forward: positions up to {self._native.cache_length + ids.size} exceed the "
                                 f"model's max_position_embeddings ({max_pos})")
        else:
            start = check.integer("forward: start_pos", start_pos, 0, max_pos - ids.size)
        self.check_room(ids.size)
        return ids, start, causal, write_cache

    # ---- text ----
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ArgumentTypeError(f"encode: text must be a str, got {type(text).__name__}")
        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: the checkpoint has no tokenizer.json; pass token ids instead")
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: the checkpoint has no tokenizer.json")
        arr = check.array("decode: ids", ids)
        if arr.size == 0:
            return ""
        return self.tokenizer.decode(self._ids(arr, "decode: ids").tolist())

    # ---- generation ----
    def _eos_ids(self, eos_token_id) -> frozenset:
        if eos_token_id is None:
            return frozenset(self.config.eos_token_ids)
        ids = eos_token_id if isinstance(eos_token_id, (list, tuple, set, frozenset)) else [eos_token_id]
        return frozenset(check.integer("generate: eos_token_id", e, 0, self.config.vocab_size - 1) for e in ids)

    def generate(self, prompt, mode: str = DEFAULTS["mode"], max_new_tokens: int = DEFAULTS["max_new_tokens"],
                 temperature: float = DEFAULTS["temperature"], top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, eos_token_id=None, block_length: int | None = None, threshold=_DEFAULT,
                 steps: int | None = None, draft_threshold: float = DEFAULTS["draft_threshold"],
                 use_lora: bool | None = None, on_tokens=None, stop=None, logprobs: bool = False, on_chunk=None,
                 cancel=None) -> GenerateResult:
        """Generates from a prompt (token ids, or text when the checkpoint has a tokenizer).

        mode: "ar" (autoregressive), "diffusion" (block diffusion) or "self_spec" (linear self-speculation;
            "self-spec" is accepted too).
        max_new_tokens: a hard cap in every mode.
        temperature: 0 is greedy. Otherwise AR samples from softmax(logits / temperature) (with optional
            top_k / top_p); diffusion and self-spec use Gumbel-max sampling. Reproducible for a given seed.
        eos_token_id: int or list (default: the config's). Generation stops after the first EOS (kept).
        block_length: diffusion / self-spec block length L (default: the config's block_size, else 32).
        threshold: diffusion commit threshold in (0, 1] (default 0.9); None = fixed schedule of `steps`
            denoising steps per block (default L - 1, i.e. one token per step).
        draft_threshold: self-spec; 0 drafts the whole block in one forward, > 0 iterates (commit every
            draft with confidence >= draft_threshold, at least one per forward).
        use_lora: self-spec; apply the attached LoRA drafter to draft passes (default: when attached).
        stop: a string or list of strings (needs a tokenizer). The output ends at the token that completes
            the first match; result.text ends before it. Found wherever it falls: inside a token, across
            tokens, inside a block that diffusion or self-spec committed at once.
        logprobs: also return result.logprobs, each token's log-probability in the forward that chose it.
        on_tokens: called with each run of newly committed tokens, as they are committed (streaming).
        on_chunk: called with a StreamChunk (text, tokens, logprobs) per committed run; the chunks' texts
            add up to result.text (see also `stream`).
        cancel: a threading.Event; once set, generation ends after the current forward and the result holds
            what was committed, with finish_reason "cancelled" (set before the call: no forward runs and
            no token comes out).
        """
        return self._execute(self._prepare(prompt, mode=mode, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                           eos_token_id=eos_token_id, block_length=block_length,
                                           threshold=threshold, steps=steps, draft_threshold=draft_threshold,
                                           use_lora=use_lora, on_tokens=on_tokens, stop=stop, logprobs=logprobs,
                                           on_chunk=on_chunk, cancel=cancel))

    def stream(self, prompt, **kwargs) -> "TokenStream":
        """Generates in a background thread and returns an iterator of StreamChunk (text, tokens, logprobs),
        one per committed run; arguments as generate() (bad ones raise here, not while iterating). After the
        iterator is exhausted, `.result` is the GenerateResult. Closing it (or leaving a `with` block, or
        breaking out of a for loop and dropping it) cancels the generation."""
        for name in ("on_chunk", "cancel"):
            if name in kwargs:
                raise ValueError(f"stream: {name} is stream's own; pass it to generate() instead")
        if getattr(self.lock, "_is_owned", lambda: False)():
            # The generating thread would wait for the lock this thread holds while this one waits for it.
            raise RuntimeError("stream: this thread holds model.lock, so the stream could never run; call "
                               "generate(..., on_chunk=...) inside the lock instead")
        return TokenStream(self, self._prepare(prompt, **kwargs))

    def chat(self, messages, **kwargs) -> GenerateResult:
        """Generates the assistant's reply to a conversation: `messages` (a list of {"role", "content"}) are
        rendered by the checkpoint's chat template with add_generation_prompt=True, as Hugging Face does;
        other arguments as generate(). result.text is the reply."""
        return self.generate(self._chat_prompt(messages), **kwargs)

    def stream_chat(self, messages, **kwargs) -> "TokenStream":
        """chat() as a stream (see `stream`)."""
        return self.stream(self._chat_prompt(messages), **kwargs)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """The conversation as the checkpoint's chat template renders it (the prompt chat() generates from)."""
        from .chat import ChatTemplate

        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: the checkpoint has no tokenizer.json, so no chat")
        add_generation_prompt = check.flag("apply_chat_template: add_generation_prompt", add_generation_prompt)
        if self._chat_template is None:     # read and compiled on first use, like the tokenizer once per model
            self._chat_template = ChatTemplate(self.directory, self.tokenizer)
        return self._chat_template.render(messages, add_generation_prompt)

    def _chat_prompt(self, messages) -> list:
        # The template writes the special tokens itself (BOS included): the tokenizer must not add them again.
        text = self.apply_chat_template(messages)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prepare(self, prompt, mode=DEFAULTS["mode"], max_new_tokens=DEFAULTS["max_new_tokens"],
                 temperature=DEFAULTS["temperature"], top_k=None, top_p=None, seed=None, eos_token_id=None,
                 block_length=None, threshold=_DEFAULT, steps=None, draft_threshold=DEFAULTS["draft_threshold"],
                 use_lora=None, on_tokens=None, stop=None, logprobs=False, on_chunk=None, cancel=None):
        """Checks every argument of a generate call; returns the call ready to run (see _execute)."""
        try:
            mode = normalize_mode(mode)
        except ValueError as e:
            raise ValueError(f"generate: {e}") from None
        max_new_tokens = check.integer("generate: max_new_tokens", max_new_tokens, 1)
        on_tokens = check.callback("generate: on_tokens", on_tokens)
        on_chunk = check.callback("generate: on_chunk", on_chunk)
        if cancel is not None and not callable(getattr(cancel, "is_set", None)):
            raise ArgumentTypeError(f"generate: cancel must be a threading.Event, got {type(cancel).__name__}")
        logprobs = check.flag("generate: logprobs", logprobs)
        stop = check_stop(stop)
        if stop and self.tokenizer is None:
            raise ValueError(f"generate: stop strings need a tokenizer, and {self.directory} has no tokenizer.json")
        text_in = isinstance(prompt, str)
        ids = self._ids(self.encode(prompt) if text_in else prompt, "prompt", allow_mask=False)
        params = SamplingParams(temperature, top_k, top_p, seed)
        params.validate()
        eos = self._eos_ids(eos_token_id)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])

        if mode == "ar":
            if block_length is not None or steps is not None or use_lora is not None:
                bad = next(n for n, v in (("block_length", block_length), ("steps", steps), ("use_lora", use_lora))
                           if v is not None)
                raise ValueError(f"generate: {bad} applies to diffusion / self_spec, not mode 'ar'")
            if threshold is not _DEFAULT or not _is_zero(draft_threshold):
                raise ValueError("generate: threshold / draft_threshold apply to diffusion / self_spec, not 'ar'")
            picker = self._ar_picker(params, seed, logprobs)

            def run(out):
                return ar_generate(self, ids, out, picker)
        else:
            L = self._check_parallel_mode(mode, top_k, top_p, block_length)

            def selector(chunk, causal, write_cache, last_only, stream, use_lora=False):
                return self.forward_select(chunk, "causal" if causal else "bidirectional", write_cache=write_cache,
                                           logits="last" if last_only else "all", use_lora=use_lora,
                                           temperature=temperature, seed=seed, stream=stream)

            if mode == "diffusion":
                thr, n_steps = self._diffusion_schedule(L, threshold, steps, use_lora, draft_threshold)

                def run(out):
                    return diffusion_generate(self, ids, out, L, thr, n_steps, selector)
            else:
                dt, lora_on = self._self_spec_drafting(threshold, steps, draft_threshold, use_lora)

                def run(out):
                    return self_spec_generate(self, ids, out, L, dt, lora_on, selector)

        def emitter(stream_chunk=None, stream_cancel=None):
            # Text is followed token by token only when something needs it as it comes (stop strings,
            # streamed chunks); otherwise the result's text is one decode at the end.
            follow = self.tokenizer is not None and (stop or on_chunk or stream_chunk)
            text = TextTracker(self.tokenizer, stop) if follow else None
            return Emitter(max_new_tokens, eos, on_tokens, text=text, on_chunk=on_chunk or stream_chunk,
                           logprobs=logprobs, cancel=cancel or stream_cancel)
        return _Prepared(run, emitter, len(ids), mode)

    @_locked
    def _execute(self, job: "_Prepared", stream_chunk=None, stream_cancel=None) -> GenerateResult:
        """Runs a prepared call; stream() passes its own chunk callback and cancel event."""
        out = job.emitter(stream_chunk, stream_cancel)
        if out.cancelled:   # set before the call: not even the prefill runs
            result = GenerateResult(tokens=[], mode=job.mode, nfe=0, forwards=0, seconds=0.0)
        else:
            result = job.run(out)
        result.finish_reason = out.finish()
        result.prompt_tokens = job.prompt_tokens
        result.logprobs = out.logprobs
        if out.text is not None:
            result.text = out.text.text
            result.stop_string = out.text.stop_string
        elif self.tokenizer is not None:
            result.text = self.tokenizer.decode(result.tokens)
        return result

    # ---- parameter checks of generate(), one per mode ----
    def _ar_picker(self, params: SamplingParams, seed: int, logprobs: bool):
        """picker(chunk, stream) -> (the next token, its probability): the fused sampler head, or logits + the
        numpy sampler when top_k / top_p filter the distribution (the probability then only with logprobs)."""
        if params.top_k is None and params.top_p is None:
            def picker(chunk, stream):
                idx, conf = self.forward_select(chunk, "causal", logits="last", temperature=params.temperature,
                                                seed=seed, stream=stream)
                return int(idx[0]), float(conf[0])
            return picker
        sampler = Sampler(params, self.config.mask_token_id)

        def sampled(chunk, stream):
            logits = self.forward(chunk, "causal", logits="last")[-1]
            tok = sampler(logits)
            if not logprobs:
                return tok, None
            z = logits.astype(np.float64) - float(logits.max())   # the sampler head's confidence, in numpy
            return tok, float(np.exp(z[tok]) / np.exp(z).sum())
        return sampled

    def _check_parallel_mode(self, mode, top_k, top_p, block_length) -> int:
        """Checks shared by diffusion and self_spec; returns the block length."""
        if self.config.mask_token_id is None:
            raise ValueError(f"generate: mode {mode!r} needs a mask_token_id in config.json (a tri-mode "
                             "checkpoint)")
        if top_k is not None or top_p is not None:
            raise ValueError(f"generate: top_k / top_p apply to mode 'ar' only; {mode} samples with "
                             "Gumbel-max at the given temperature")
        if block_length is None:
            return self.default_block_length
        return check.integer("generate: block_length", block_length, 2, self.max_context)

    @property
    def default_block_length(self) -> int:
        """The block length diffusion and self_spec use when none is given: the checkpoint's block_size
        (the block length it was trained with) when config.json has one, else 32."""
        b = self.config.block_size
        return b if b is not None and b >= 2 else 32

    @staticmethod
    def _diffusion_schedule(L, threshold, steps, use_lora, draft_threshold):
        """(threshold or None for the fixed schedule, denoising steps of the fixed schedule)."""
        if use_lora is not None or not _is_zero(draft_threshold):
            raise ValueError("generate: use_lora / draft_threshold apply to self_spec, not diffusion")
        thr = 0.9 if threshold is _DEFAULT else threshold
        if thr is not None:
            thr = check.real("generate: threshold", thr, 0.0, 1.0, lo_open=True)
        if steps is not None and thr is not None:
            raise ValueError("generate: steps applies to the fixed schedule (threshold=None) only")
        n_steps = L - 1 if steps is None else check.integer("generate: steps", steps, 1, L - 1)
        return thr, n_steps

    def _self_spec_drafting(self, threshold, steps, draft_threshold, use_lora):
        """(draft threshold, whether drafts use the LoRA)."""
        if threshold is not _DEFAULT or steps is not None:
            raise ValueError("generate: threshold / steps apply to diffusion; self_spec takes draft_threshold")
        dt = check.real("generate: draft_threshold", draft_threshold, 0.0, 1.0)
        if use_lora is not None:
            use_lora = check.flag("generate: use_lora", use_lora)
        if use_lora and self.lora is None:
            raise ValueError("generate: use_lora=True but no LoRA adapter is attached "
                             "(tridecode.load(..., lora=PATH) or model.attach_lora(PATH))")
        return dt, (self.lora is not None if use_lora is None else use_lora)

    def __repr__(self) -> str:
        c = self.config
        return (f"tridecode.Model({c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}x{c.head_dim}, vocab={c.vocab_size}, "
                f"device={self.device}, max_context={self.max_context})")


class _Prepared:
    """A checked generate call: run(emitter) -> GenerateResult, and the emitter factory."""

    def __init__(self, run, emitter, prompt_tokens: int, mode: str):
        self.run, self.emitter, self.prompt_tokens, self.mode = run, emitter, prompt_tokens, mode


class TokenStream:
    """The iterator `Model.stream` returns (see there)."""

    _END = object()

    def __init__(self, model: Model, job: _Prepared):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()   # unbounded: the generating thread never waits
        self._cancel = threading.Event()
        self._result = None
        self._error = None
        self._finished = False
        self._thread = threading.Thread(target=self._work, args=(model, job), name="tridecode-stream", daemon=True)
        self._thread.start()

    def _work(self, model, job) -> None:
        try:
            self._result = model._execute(job, self._queue.put, self._cancel)
        except BaseException as e:   # handed to the consumer, who sees it on next()
            self._error = e
        finally:
            self._queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self) -> StreamChunk:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._finished = True
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item

    @property
    def result(self) -> GenerateResult:
        """The GenerateResult; waits for the generation to end (after close(): what was committed)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def close(self) -> None:
        """Cancels the generation (it ends after the current forward) and waits for it."""
        self._cancel.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self._cancel.set()


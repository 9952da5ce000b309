"""Checkpoint directory -> native model. Validates names, shapes and dtypes against config.json and
hands the tensors to the native core: memory-mapped without a copy, or (on the CPU, for models past the TLB's
reach) copied once into transparent huge pages."""

from __future__ import annotations

import mmap
import os
import re

import numpy as np

from . import _C
from . import _check as check
from . import _files
from .config import ModelConfig, load_config
from .errors import CheckpointError
from .rope import native_rope_params
from .safetensors_io import SUPPORTED_DTYPES, Checkpoint, bf16_to_f32, to_bf16_bits

#: Per-layer tensors: native name -> (HF suffix, shape function of the config).
_LAYER_TENSORS = {
    "in_norm": ("input_layernorm.weight", lambda c: (c.hidden_size,)),
    "q": ("self_attn.q_proj.weight", lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size)),
    "k": ("self_attn.k_proj.weight", lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size)),
    "v": ("self_attn.v_proj.weight", lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size)),
    "o": ("self_attn.o_proj.weight", lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim)),
    "post_norm": ("post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    "gate": ("mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    "up": ("mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    "down": ("mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size)),
}

#: Names of tensors a checkpoint may carry that inference never reads.
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)

_DTYPE_ALIASES = {
    None: None, "auto": None,
    "float32": "F32", "fp32": "F32", "f32": "F32",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "bfloat16": "BF16", "bf16": "BF16",
    "int8": "I8", "i8": "I8",
}

#: Native weights an int8 load quantizes (the products); the embedding (gathered, not read whole) and the
#: norm vectors keep their stored dtype.
_INT8_WEIGHTS = frozenset({"head", *(n for n in _LAYER_TENSORS if not n.endswith("norm"))})
INT8_CODE = 3


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[str, tuple]]:
    """native name -> (checkpoint tensor name, expected shape)."""
    p = cfg.prefix
    head_name = "diffusion_head.weight" if cfg.is_tri_mode else "lm_head.weight"
    out = {
        "embed": (f"{p}embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size)),
        "final_norm": (f"{p}norm.weight", (cfg.hidden_size,)),
        "head": (head_name, (cfg.vocab_size, cfg.hidden_size)),
    }
    for i in range(cfg.num_hidden_layers):
        for native, (suffix, shape) in _LAYER_TENSORS.items():
            out[f"layers.{i}.{native}"] = (f"{p}layers.{i}.{suffix}", shape(cfg))
    return out


def _convert(arr: np.ndarray, code: int, target: str) -> tuple[np.ndarray, int]:
    """Casts a stored tensor to another storage dtype (this copies; only done when asked for)."""
    src = {0: "F32", 1: "F16", 2: "BF16"}[code]
    if src == target:
        return arr, code
    f32 = arr.astype(np.float32) if src != "BF16" else bf16_to_f32(arr)
    if target == "F32":
        return np.ascontiguousarray(f32), 0
    if target == "F16":
        return np.ascontiguousarray(f32.astype(np.float16)), 1
    return to_bf16_bits(f32), 2


def _target_dtype(dtype) -> str | None:
    """The safetensors dtype a load converts to (None: keep each tensor's)."""
    target = _DTYPE_ALIASES.get(dtype.lower(), "?") if isinstance(dtype, str) else (None if dtype is None else "?")
    if target == "?":
        raise ValueError(f"load: unsupported dtype {check._show(dtype)} "
                         "(use None, 'float32', 'float16', 'bfloat16' or 'int8')")
    return target


INT8_GROUP = 32


def quantize_int8(arr: np.ndarray, code: int = 0) -> tuple[np.ndarray, int, np.ndarray]:
    """Symmetric int8 with one scale per group of 32 along each row (the last group may be shorter):
    w[r, c] ~ q[r, c] * scale[r, c // 32], the scale max|group| / 127 rounded up to a bf16 (so no q leaves
    [-127, 127] and the stored scale is the exact one used). Returns (q int8 [rows, cols], 3, scales as bf16
    bits uint16 [rows, ceil(cols / 32)]), the tuple the native model takes for an int8 weight. arr holds
    stored-dtype values (code 0 F32, 1 F16, 2 BF16 bits)."""
    if arr.ndim != 2:
        raise ValueError(f"quantize_int8: weight must be 2-D, got shape {list(arr.shape)}")
    rows, cols = arr.shape
    groups = -(-cols // INT8_GROUP)
    q = np.empty(arr.shape, np.int8)
    scales = np.empty((rows, groups), np.uint16)
    step = max(1, (1 << 22) // max(1, cols))      # a few MB of fp32 at a time
    for r0 in range(0, rows, step):
        part = arr[r0:r0 + step]
        f = bf16_to_f32(part) if code == 2 else part.astype(np.float32)
        if not np.isfinite(f).all():
            raise ValueError(f"quantize_int8: weight rows {r0}..{r0 + len(part) - 1} hold inf or nan")
        padded = np.zeros((len(part), groups * INT8_GROUP), np.float32)
        padded[:, :cols] = f
        g = padded.reshape(len(part), groups, INT8_GROUP)
        s = np.abs(g).max(axis=2) / np.float32(127)
        bits = s.view(np.uint32)
        up = ((bits + np.uint32(0xFFFF)) >> 16).astype(np.uint16)        # round the scale up to a bf16
        s_up = (up.astype(np.uint32) << 16).view(np.float32)
        inv = np.where(s_up > 0, np.float32(1) / np.where(s_up > 0, s_up, 1), 0).astype(np.float32)
        qg = np.clip(np.rint(g * inv[:, :, None]), -127, 127).astype(np.int8)
        q[r0:r0 + step] = qg.reshape(len(part), -1)[:, :cols]
        scales[r0:r0 + step] = up
    return q, INT8_CODE, scales


def load_weights(directory: str, cfg: ModelConfig, dtype: str | None):
    """Returns ({native name: (array, dtype code)}, Checkpoint). Raises CheckpointError on any mismatch."""
    target = _target_dtype(dtype)
    ckpt = Checkpoint(directory)
    present = ckpt.names()
    if cfg.num_hidden_layers > len(present) // len(_LAYER_TENSORS) + 1:   # before listing 9 names per layer
        raise CheckpointError(f"{directory}: config.json: num_hidden_layers = {cfg.num_hidden_layers} needs "
                              f"{len(_LAYER_TENSORS)} tensors a layer, but the checkpoint has {len(present)} in all")
    expected = expected_tensors(cfg)
    tied = False
    if expected["head"][0] not in present and cfg.tie_word_embeddings and not cfg.is_tri_mode:
        expected["head"] = (expected["embed"][0], expected["head"][1])
        tied = True
    wanted = {name for name, _ in expected.values()}
    missing = sorted(wanted - present)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{directory}: missing tensor {missing[0]}{more}")
    unexpected = sorted(t for t in present - wanted if not t.endswith(_IGNORABLE_SUFFIXES)
                        and not (t == "lm_head.weight" and cfg.tie_word_embeddings))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{ckpt.file_of(unexpected[0])}: unexpected tensor {unexpected[0]}{more}")
    out = {}
    for native, (tname, shape) in expected.items():
        info = ckpt.info(tname)
        if info.shape != tuple(shape):
            raise CheckpointError(f"{ckpt.file_of(tname)}: tensor {tname} has shape {list(info.shape)}, "
                                  f"expected {list(shape)}")
        if info.dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{ckpt.file_of(tname)}: tensor {tname} has unsupported dtype {info.dtype} "
                                  f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        arr, code = ckpt.array(tname)
        if target == "I8":
            out[native] = quantize_int8(arr, code) if native.rsplit(".", 1)[-1] in _INT8_WEIGHTS else (arr, code)
            continue
        if target is not None:
            arr, code = _convert(arr, code, target)
        out[native] = (arr, code)
    return out, ckpt, tied


_KV_CODES = {"float32": 0, "bfloat16": 2}


def _kv_cache_dtype(where: str, value, device: str, weight_code: int) -> str:
    """The KV cache dtype a load asks for: "auto" is bfloat16 for bf16 weights on CUDA (the cache dtype of a
    bf16 model in the reference on a GPU), float32 otherwise (the CPU backend and fp32 / fp16 checkpoints)."""
    if not isinstance(value, str) or value not in ("auto", *_KV_CODES):
        raise ValueError(f"{where}: kv_cache_dtype must be 'auto', 'float32' or 'bfloat16', got {value!r}")
    if value == "auto":
        return "bfloat16" if device == "cuda" and weight_code == 2 else "float32"
    if value == "bfloat16" and device != "cuda":
        raise ValueError(f"{where}: kv_cache_dtype='bfloat16' needs device='cuda' (the CPU backend keeps an "
                         "fp32 KV cache)")
    return value


def _compute_f32(where: str, value, device: str) -> bool:
    if not isinstance(value, str) or value not in ("auto", "float32"):
        raise ValueError(f"{where}: compute_dtype must be 'auto' or 'float32', got {check._show(value)}")
    if value == "float32" and device == "cuda":
        raise ValueError(f"{where}: compute_dtype='float32' needs device='cpu' (the CUDA backend's tensor-core "
                         "products of bf16 weights take bf16 activations)")
    return value == "float32"


def native_config(cfg: ModelConfig, kv_cache_dtype: str = "float32", compute_f32: bool = False) -> dict:
    return {
        "kv_dtype": _KV_CODES[kv_cache_dtype],
        "compute_f32": compute_f32,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "intermediate": cfg.intermediate_size,
        "vocab": cfg.vocab_size,
        "rms_eps": cfg.rms_norm_eps,
        **native_rope_params(cfg.rope, cfg.head_dim),
    }


def load(path, device: str = "cpu", dtype: str | None = None, max_context: int | None = None, lora="auto",
         kv_cache_dtype: str = "auto", cuda_graphs: bool = True, compute_dtype: str = "auto",
         revision: str | None = None, hugepages: bool | None = None):
    """Loads a Hugging Face checkpoint: a directory, or a model id ("org/name") in the local hub cache.

    path: a directory with config.json and model.safetensors (or shards + model.safetensors.index.json),
        optionally tokenizer.json (and a chat template: chat_template.jinja or tokenizer_config.json's); or
        a Hugging Face model id, found in the hub cache ($HF_HUB_CACHE, $HF_HOME/hub or
        ~/.cache/huggingface/hub) without network access.
    revision: with a model id, the branch, tag or commit of the cached snapshot (default "main").
    device: "cpu" (the CUDA backend is not available for whole models yet).
    dtype: None keeps each tensor's stored dtype (BF16 / F16 / F32); "float32",
        "float16" or "bfloat16" converts at load (a copy); "int8" quantizes every product's weight (q/k/v/o,
        gate/up/down, LM head) to symmetric int8 with a bf16 scale per group of 32 (CPU only; 1.06 bytes a
        weight), each product quantizing its activations per row to int16 as it runs.
    compute_dtype: "auto" multiplies bf16 weights by bf16-rounded activations with fp32 accumulation (as the
        reference does on a GPU; vdpbf16ps where the CPU has it); "float32" keeps fp32 activations and exact
        fp32 products of the bf16 weights (CPU only). fp32 and f16 weights always use fp32 activations.
    hugepages: where a CPU model keeps its weights. None (default): copied once into transparent huge pages
        when the kernel offers them (madvise or always), the weights a forward reads pass 16 MiB (a decode
        step streams every weight; 2 MiB pages spare the TLB misses of 4 KiB ones) and the copy takes at
        most 3/4 of the available memory, else memory-mapped from the checkpoint files; True: huge pages
        (ValueError where the kernel has none, MemoryError where memory is short); False: memory-mapped,
        never copied (pages shared with the file cache). The embedding table always stays mapped.
    max_context: KV-cache capacity in tokens (default min(max_position_embeddings, 4096)).
    lora: the self-speculation LoRA drafter: "auto" attaches `<path>/linear_spec_lora/` when present, a path
        attaches that adapter, None attaches none.
    kv_cache_dtype: "auto" (bfloat16 for bf16 weights on CUDA, else float32), "float32" or "bfloat16"
        (CUDA only). A bf16 cache halves the bytes attention reads; scores and sums stay fp32.
    cuda_graphs: on CUDA, record the layer stack of each decode / block shape as a CUDA graph the second
        time it runs and replay it after (one launch instead of one per op; same results bit for bit).
        False runs every op eagerly. Settable later as `model.cuda_graphs`.
    """
    from .model import Model  # local import: model.py imports this module

    from .hub import resolve

    directory = resolve(check.path("load: path", path), revision)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    if hugepages is not None:
        hugepages = check.flag("load: hugepages", hugepages)
        if hugepages and isinstance(device, str) and device == "cuda":
            raise ValueError("load: hugepages=True is a CPU option (device='cuda' keeps its weights on the GPU)")
    _check_device(device)
    _target_dtype(dtype)
    if not (lora is None or (isinstance(lora, str) and lora == "auto")):
        lora = check.path("load: lora", lora)
    if max_context is not None:
        check.integer("load: max_context", max_context, 1)
    cuda_graphs = check.flag("load: cuda_graphs", cuda_graphs)
    compute_f32 = _compute_f32("load", compute_dtype, device)
    if device == "cuda" and _target_dtype(dtype) == "I8":
        raise ValueError("load: dtype='int8' needs device='cpu' (the CUDA backend has no int8 kernels)")
    cfg = load_config(directory)
    if max_context is None:
        max_context = min(cfg.max_position_embeddings, 4096)
    max_context = check.integer("load: max_context", max_context, 1, cfg.max_position_embeddings)
    weights, ckpt, tied = load_weights(directory, cfg, dtype)
    if _use_hugepages(hugepages, device, weights):
        to_huge_pages(weights)
    kv_dtype = _kv_cache_dtype("load", kv_cache_dtype, device, weights["layers.0.q"][1])
    try:
        native = _C.Model(native_config(cfg, kv_dtype, compute_f32), weights, max_context, device)
    except MemoryError:
        kv_bytes = 2 * (4 if kv_dtype == "float32" else 2) * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * max_context
        raise MemoryError(f"load: cannot allocate the KV cache for max_context={max_context} "
                          f"({kv_bytes / 2**30:.1f} GiB); pass a smaller max_context") from None
    tokenizer = None
    tok_path = os.path.join(directory, "tokenizer.json")
    if _files.exists(tok_path):
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.from_file(tok_path)
    native.graphs = cuda_graphs
    # A device model holds its own copy of the weights: the memory maps need not stay open.
    model = Model(native, cfg, weights if device == "cpu" else {}, directory=directory, tokenizer=tokenizer,
                  tied=tied, device=device)
    model.compute_dtype = "float32" if compute_f32 else "auto"
    if isinstance(lora, str) and lora == "auto":
        from .lora import find_default
        lora = find_default(directory)
    if lora is not None:
        model.attach_lora(lora)
    return model


def _check_host_memory(cfg: ModelConfig, itemsize: int, max_context: int) -> None:
    """Refuses, before allocating, a random model that cannot fit in this machine's memory (allocations of
    that size may succeed lazily and end the process when touched)."""
    c = cfg
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * (2 * q + 2 * kv + 3 * c.intermediate_size) + 2 * c.hidden_size
    need = itemsize * (2 * c.vocab_size * c.hidden_size + c.hidden_size + c.num_hidden_layers * per_layer)
    need += 8 * c.num_hidden_layers * kv * max_context
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise MemoryError(f"random_model: the model needs {need / 2**30:.1f} GiB, more than this machine's "
                          f"{have / 2**30:.1f} GiB of memory")


#: Past this many bytes of weights, a CPU load copies them into huge pages by default: with 4 KiB pages a
#: forward's weight stream misses the TLB about once a page (an L2 TLB covers roughly 12 MiB), and each miss
#: is a page walk, twice as long in a virtual machine; 2 MiB pages remove nearly all of them.
HUGEPAGES_MIN_BYTES = 16 << 20
_HUGE_PAGE = 2 << 20
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str | None = None) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), None where there is none."""
    path = THP_SETTING if path is None else path
    try:
        with open(path) as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def _streamed(weights: dict) -> list[tuple[str, int]]:
    """(name, index) of the arrays a forward reads whole: all but the embedding table (it reads rows)."""
    return [(name, i) for name, t in weights.items() if name != "embed"
            for i, a in enumerate(t) if isinstance(a, np.ndarray)]


def hugepages_available() -> bool:
    """Whether a mapping can be advised into transparent huge pages here (THP always or madvise)."""
    return thp_mode() in ("always", "madvise") and hasattr(mmap, "MADV_HUGEPAGE")


def _use_hugepages(hugepages: bool | None, device: str, weights: dict) -> bool:
    if device != "cpu" or hugepages is False:
        return False
    available = hugepages_available()
    size = sum(weights[n][i].nbytes for n, i in _streamed(weights))
    free = available_memory()
    fits = free is None or size <= 0.75 * free
    if hugepages is None:
        return available and fits and size >= HUGEPAGES_MIN_BYTES
    if not available:                       # hugepages=True from here on
        mode = thp_mode()
        raise ValueError(f"load: hugepages=True needs transparent huge pages, but {THP_SETTING} "
                         + (f"says [{mode}]" if mode else "is not there") + " (pass hugepages=False)")
    if not fits:
        raise MemoryError(f"load: hugepages=True copies {size / 2**30:.2f} GiB of weights, but only "
                          f"{free / 2**30:.2f} GiB of memory is available (pass hugepages=False to map them "
                          "from the files)")
    return True


def available_memory(path: str = "/proc/meminfo") -> int | None:
    """Bytes of memory available without swapping (MemAvailable), None where the kernel does not say."""
    try:
        with open(path) as f:
            found = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def to_huge_pages(weights: dict) -> mmap.mmap:
    """Copies the streamed weight arrays into one private anonymous mapping advised MADV_HUGEPAGE (2 MiB
    aligned, each array on a 64-byte boundary) and puts read-only views of it in their place; the arrays
    keep the mapping alive. Returns the mapping."""
    slots = _streamed(weights)
    offsets, total = [], 0
    for name, i in slots:
        offsets.append(total)
        total += -(-weights[name][i].nbytes // 64) * 64
    arena = mmap.mmap(-1, max(total, 1) + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(arena, dtype=np.uint8)
    start = -raw.ctypes.data % _HUGE_PAGE
    for (name, i), off in zip(slots, offsets):
        src = weights[name][i]
        dst = raw[start + off:start + off + src.nbytes].view(src.dtype).reshape(src.shape)
        dst[...] = src
        dst.flags.writeable = False
        t = list(weights[name])
        t[i] = dst
        weights[name] = tuple(t)
    return arena


def _check_device(device) -> None:
    if isinstance(device, str) and device == "cpu":
        return
    if not (isinstance(device, str) and device == "cuda"):
        raise ValueError(f"load: unknown device {check._show(device)} (use 'cpu' or 'cuda')")
    if not _C.cuda_compiled():
        raise ValueError("load: device='cuda' but this build has no CUDA backend (reinstall with TRIDECODE_CUDA=ON, or "
                         "TRIDECODE_CUDA=EMU to run its kernels on the CPU emulator)")
    if _C.cuda_device_count() == 0:
        raise ValueError("load: device='cuda' but no CUDA device is usable (no GPU or no driver)")


def random_model(config: dict, device: str = "cpu", dtype: str = "bfloat16", max_context: int = 4096,
                 seed: int = 0, kv_cache_dtype: str = "auto", cuda_graphs: bool = True, compute_dtype: str = "auto"):
    """A model of the given config.json contents with random weights made directly in the backend's memory
    (no checkpoint, no host copy): for benchmarks. Weights ~ N(0, 1/fan_in), norms 1."""
    from .config import parse_config
    from .model import Model

    _check_device(device)
    target = _target_dtype(dtype) or "BF16"
    cfg = parse_config(config)
    max_context = check.integer("random_model: max_context", max_context, 1, cfg.max_position_embeddings)
    seed = check.seed("random_model: seed", seed)
    cuda_graphs = check.flag("random_model: cuda_graphs", cuda_graphs)
    compute_f32 = _compute_f32("random_model", compute_dtype, device)
    if target == "I8":
        raise ValueError("random_model: int8 weights are made by quantizing a checkpoint: load(..., dtype='int8')")
    code = {"F32": 0, "F16": 1, "BF16": 2}[target]
    if device == "cpu":
        _check_host_memory(cfg, 4 if code == 0 else 2, max_context)
    kv_dtype = _kv_cache_dtype("random_model", kv_cache_dtype, device, code)
    native = _C.Model.random(native_config(cfg, kv_dtype, compute_f32), code, max_context, device, seed)
    native.graphs = cuda_graphs
    model = Model(native, cfg, {}, directory="<random>", device=device)
    model.compute_dtype = "float32" if compute_f32 else "auto"
    return model

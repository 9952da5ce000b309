"""Builders for tiny Hugging Face style checkpoint directories used by the tests.

A checkpoint directory is config.json plus either model.safetensors or shards listed by
model.safetensors.index.json. F32 and F16 files are written with the `safetensors` package; BF16 (which
numpy cannot represent) and deliberately broken files go through the small raw writer below, which lays
out the format by hand: an 8-byte little-endian header length, a JSON header, then the data section.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import safetensors.numpy

#: safetensors dtype -> numpy storage dtype used to produce raw bytes for it.
STORAGE_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

_DTYPE_ALIASES = {"f32": "F32", "float32": "F32", "f16": "F16", "float16": "F16", "bf16": "BF16",
                  "bfloat16": "BF16"}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nld-tiny-a")


def canonical_dtype(dtype: str) -> str:
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).upper())
    if d not in STORAGE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return d


# ---------------------------------------------------------------------------------------------------------
# bfloat16 bits
# ---------------------------------------------------------------------------------------------------------

def f32_to_bf16_bits(a) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest, ties to even. NaNs stay NaN."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(bits) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to(a, dtype: str) -> np.ndarray:
    """The float32 values a tensor has after being stored as `dtype` (F32, F16 or BF16)."""
    d = canonical_dtype(dtype)
    a = np.asarray(a, dtype=np.float32)
    if d == "F32":
        return a.copy()
    if d == "F16":
        return a.astype(np.float16).astype(np.float32)
    if d == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a))
    raise ValueError(f"round_to: {dtype} is not a float storage type")


def tensor_bytes(a, dtype: str) -> bytes:
    """Raw little-endian bytes of `a` stored as safetensors dtype `dtype`."""
    d = canonical_dtype(dtype)
    if d == "BF16":
        arr = np.asarray(a)
        if arr.dtype == np.uint16:
            return np.ascontiguousarray(arr, dtype="<u2").tobytes()
        return f32_to_bf16_bits(arr).astype("<u2").tobytes()
    return np.ascontiguousarray(np.asarray(a), dtype=STORAGE_DTYPES[d]).tobytes()


# ---------------------------------------------------------------------------------------------------------
# raw safetensors writer / reader
# ---------------------------------------------------------------------------------------------------------

def write_raw(path, header, data: bytes = b"", *, header_len: int | None = None, pad: bool = True) -> str:
    """Writes a file in safetensors layout from arbitrary parts.

    header: a dict (serialised as JSON), a str, or bytes (written verbatim, so it may be malformed).
    data: the data section, verbatim.
    header_len: the value written in the 8-byte prefix (default: the real header size), so a file can lie
        about its header size.
    pad: pad a dict/str header with spaces to a multiple of 8 bytes, as the format's writers do.
    """
    if isinstance(header, (dict, list)):
        hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    elif isinstance(header, str):
        hb = header.encode("utf-8")
    else:
        hb = bytes(header)
    if pad and not isinstance(header, (bytes, bytearray)):
        hb += b" " * (-len(hb) % 8)
    n = len(hb) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.write(hb)
        f.write(data)
    return os.fspath(path)


def build_entries(entries: dict) -> tuple[dict, bytes]:
    """entries: name -> (dtype, shape, raw bytes) -> (header dict, data section), tensors packed in order."""
    header, chunks, pos = {}, [], 0
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    return header, b"".join(chunks)


def write_tensors_raw(path, tensors: dict, dtype: str | dict = "F32", metadata: dict | None = None) -> str:
    """Writes float tensors (name -> array) with the raw writer; dtype is one for all or name -> dtype."""
    entries = {}
    for name, a in tensors.items():
        d = canonical_dtype(dtype[name] if isinstance(dtype, dict) else dtype)
        a = np.asarray(a)
        entries[name] = (d, a.shape, tensor_bytes(a, d))
    header, data = build_entries(entries)
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    return write_raw(path, header, data)


def read_raw(path) -> tuple[dict, bytes]:
    """(header dict, data section bytes) of a well-formed safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n].decode("utf-8")), blob[8 + n:]


def rewrite_header(path, edit) -> str:
    """Calls edit(header dict), which changes the header in place, and rewrites the file with the same data."""
    header, data = read_raw(path)
    edit(header)
    return write_raw(path, header, data)


def read_tensors(path) -> dict:
    """All tensors of a file as float32 numpy arrays (BF16 decoded exactly)."""
    header, data = read_raw(path)
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[b:end], dtype=STORAGE_DTYPES[e["dtype"]]).reshape(e["shape"])
        out[name] = bf16_bits_to_f32(arr) if e["dtype"] == "BF16" else arr.astype(np.float32)
    return out


def read_checkpoint_tensors(directory) -> dict:
    """All tensors of a checkpoint directory (single file or shards) as float32 arrays."""
    index = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [SINGLE_NAME]
    out = {}
    for fname in files:
        out.update(read_tensors(os.path.join(directory, fname)))
    return out


# ---------------------------------------------------------------------------------------------------------
# configs and tensor sets
# ---------------------------------------------------------------------------------------------------------

def nld_config(**overrides) -> dict:
    """A small nemotron_labs_diffusion config (default RoPE unless overridden)."""
    cfg = {
        "model_type": "nemotron_labs_diffusion",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 48,
        "vocab_size": 64,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "mask_token_id": 63,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    cfg.update(overrides)
    return cfg


def llama_config(model_type: str = "llama", **overrides) -> dict:
    """A small llama / mistral / ministral3 config."""
    cfg = nld_config(model_type=model_type)
    del cfg["mask_token_id"]
    cfg.update(overrides)
    return cfg


def head_dim_of(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def tensor_shapes(cfg: dict, *, include_head: bool | None = None) -> dict:
    """HF tensor name -> shape for a config. include_head: default False for tied llama-style configs."""
    nld = cfg["model_type"] == "nemotron_labs_diffusion"
    p = "encoder." if nld else "model."
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = head_dim_of(cfg)
    if include_head is None:
        include_head = nld or not cfg.get("tie_word_embeddings", False)
    shapes = {f"{p}embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        q = f"{p}layers.{i}."
        shapes.update({
            q + "input_layernorm.weight": (h,),
            q + "self_attn.q_proj.weight": (heads * hd, h),
            q + "self_attn.k_proj.weight": (kv * hd, h),
            q + "self_attn.v_proj.weight": (kv * hd, h),
            q + "self_attn.o_proj.weight": (h, heads * hd),
            q + "post_attention_layernorm.weight": (h,),
            q + "mlp.gate_proj.weight": (inter, h),
            q + "mlp.up_proj.weight": (inter, h),
            q + "mlp.down_proj.weight": (h, inter),
        })
    shapes[f"{p}norm.weight"] = (h,)
    if include_head:
        shapes["diffusion_head.weight" if nld else "lm_head.weight"] = (vocab, h)
    return shapes


def random_tensors(cfg: dict, seed: int = 0, *, include_head: bool | None = None) -> dict:
    """Random float32 weights for a config: norms near 1, matrices ~ N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in tensor_shapes(cfg, include_head=include_head).items():
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------------------
# checkpoint directories
# ---------------------------------------------------------------------------------------------------------

def shard_names(n: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def split_evenly(names: list, n: int) -> list[list]:
    """Splits names into n contiguous, non-empty groups of nearly equal size."""
    if not 1 <= n <= len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {n} shards")
    k, r = divmod(len(names), n)
    groups, pos = [], 0
    for i in range(n):
        size = k + (1 if i < r else 0)
        groups.append(names[pos:pos + size])
        pos += size
    return groups


def _write_file(path, tensors: dict, dtype: str, metadata: dict | None) -> None:
    if dtype == "BF16":
        write_tensors_raw(path, tensors, "BF16", metadata)
    else:
        np_dtype = STORAGE_DTYPES[dtype]
        safetensors.numpy.save_file({k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in tensors.items()},
                                    os.fspath(path), metadata=metadata)


def write_config(directory, config) -> str:
    """Writes config.json: a dict as JSON, a str verbatim."""
    path = os.path.join(directory, "config.json")
    with open(path, "w", encoding="utf-8") as f:
        if isinstance(config, str):
            f.write(config)
        else:
            json.dump(config, f, indent=1)
    return path


def write_checkpoint(directory, config, tensors: dict, *, dtype: str = "F32", shards: int | None = None,
                     metadata: dict | None = None) -> str:
    """Writes a checkpoint directory and returns its path.

    config: dict (written as config.json), a str (written verbatim) or None (no config.json).
    tensors: name -> float array; each is stored as `dtype` (F32 / F16 / BF16, BF16 rounded to nearest even).
    shards: None -> one model.safetensors; N -> N files model-0000i-of-0000N.safetensors plus
        model.safetensors.index.json.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    dtype = canonical_dtype(dtype)
    if config is not None:
        write_config(directory, config)
    meta = {"format": "pt", **(metadata or {})}
    if shards is None:
        _write_file(os.path.join(directory, SINGLE_NAME), tensors, dtype, meta)
        return directory
    names = list(tensors)
    weight_map, total = {}, 0
    for fname, group in zip(shard_names(shards), split_evenly(names, shards)):
        part = {k: tensors[k] for k in group}
        _write_file(os.path.join(directory, fname), part, dtype, meta)
        for k in group:
            weight_map[k] = fname
            total += int(np.asarray(tensors[k]).size) * (4 if dtype == "F32" else 2)
    write_index(directory, weight_map, total_size=total)
    return directory


def write_index(directory, weight_map: dict, total_size: int = 0) -> str:
    path = os.path.join(directory, INDEX_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=1)
    return path


def write_random_checkpoint(directory, config: dict, *, seed: int = 0, dtype: str = "F32",
                            shards: int | None = None, include_head: bool | None = None) -> str:
    """config + random weights of the right names and shapes."""
    return write_checkpoint(directory, config, random_tensors(config, seed, include_head=include_head),
                            dtype=dtype, shards=shards)


def golden_config() -> dict:
    with open(os.path.join(GOLDEN_DIR, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def golden_tensors() -> dict:
    return read_tensors(os.path.join(GOLDEN_DIR, SINGLE_NAME))


def copy_golden(directory, *, dtype: str = "F32", shards: int | None = None, config_overrides=None) -> str:
    """The golden tiny checkpoint re-saved (optionally as F16 / BF16, optionally sharded)."""
    cfg = golden_config()
    cfg.update(config_overrides or {})
    return write_checkpoint(directory, cfg, golden_tensors(), dtype=dtype, shards=shards)


def checkpoint_bytes(directory) -> int:
    """Total size of the safetensors files in a directory."""
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))


# ---------------------------------------------------------------------------------------------------------
# shaped random weights and LoRA drafter adapters
# ---------------------------------------------------------------------------------------------------------

def golden_recipe_tensors(cfg: dict, seed: int = 0, *, head_scale: float = 8.0, qk_gain: float = 0.5,
                          emb_std: float = 0.02, norm_jitter: float = 0.1,
                          mask_head_row_scale: float = 0.05) -> dict:
    """Random weights drawn like the golden checkpoint's: small embeddings (the residual stream is led by
    attention), q/k scaled by qk_gain, a diffusion head N(0, head_scale^2 / hidden) whose mask-token row is
    shrunk (so the mask is never a confident choice), norms near 1, other matrices ~ N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    mask = cfg.get("mask_token_id")
    out = {}
    for name, shape in tensor_shapes(cfg).items():
        if len(shape) == 1:
            out[name] = (1.0 + norm_jitter * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("embed_tokens.weight"):
            out[name] = (emb_std * rng.standard_normal(shape)).astype(np.float32)
        elif name in ("diffusion_head.weight", "lm_head.weight"):
            w = head_scale * rng.standard_normal(shape) / np.sqrt(shape[1])
            if mask is not None:
                w[mask] *= mask_head_row_scale
            out[name] = w.astype(np.float32)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w *= qk_gain
            out[name] = w.astype(np.float32)
    return out


def lora_tensor_names(cfg: dict, layer: int) -> tuple[str, str]:
    """(lora_A name, lora_B name) of the o_proj adapter of one layer, as PEFT saves them."""
    prefix = "encoder." if cfg["model_type"] == "nemotron_labs_diffusion" else "model."
    base = f"base_model.model.{prefix}layers.{layer}.self_attn.o_proj"
    return f"{base}.lora_A.weight", f"{base}.lora_B.weight"


def random_lora_tensors(cfg: dict, r: int, seed: int = 0, *, a_std: float | None = None,
                        b_std: float = 0.05) -> dict:
    """Random o_proj LoRA factors: A [r, heads*head_dim] ~ N(0, a_std^2) (default 1/fan_in),
    B [hidden, r] ~ N(0, b_std^2 / r)."""
    rng = np.random.default_rng(seed)
    q_dim = cfg["num_attention_heads"] * head_dim_of(cfg)
    a_std = 1.0 / np.sqrt(q_dim) if a_std is None else a_std
    out = {}
    for i in range(cfg["num_hidden_layers"]):
        a_name, b_name = lora_tensor_names(cfg, i)
        out[a_name] = (a_std * rng.standard_normal((r, q_dim))).astype(np.float32)
        out[b_name] = (b_std * rng.standard_normal((cfg["hidden_size"], r)) / np.sqrt(r)).astype(np.float32)
    return out


def write_lora_adapter(directory, tensors: dict, *, r: int, lora_alpha: float, config_overrides=None) -> str:
    """Writes a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) on o_proj."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    ac = {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, "target_modules": ["o_proj"],
          "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
          "use_dora": False, "task_type": None, "inference_mode": True}
    ac.update(config_overrides or {})
    with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(ac, f, indent=1)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                                os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory


def successor_tensors(cfg: dict, seed: int = 0, *, head_gain: float = 1e3, mix: float = 0.1) -> tuple[dict, np.ndarray]:
    """Weights of a model whose every prediction is certain: the logits at a position holding token v favour
    succ[v] by a margin of hundreds, so every softmax confidence is 1 in float32.

    Embeddings are N(0, 1) rows; the attention and MLP outputs are scaled by `mix`, so the residual stream
    stays close to the token's own embedding; the head row of token w is head_gain / hidden times the sum of
    the embeddings of the tokens v with succ[v] == w. succ permutes the non-mask tokens and maps the mask id to
    one of them; no token's successor is the mask id (its head row is zero). Returns (tensors, succ)."""
    rng = np.random.default_rng(seed)
    vocab, hidden = cfg["vocab_size"], cfg["hidden_size"]
    mask = cfg.get("mask_token_id")
    out = random_tensors(cfg, seed + 1)
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    ids = np.array([v for v in range(vocab) if v != mask])
    succ = np.empty(vocab, np.int64)
    succ[ids] = rng.permutation(ids)
    if mask is not None:
        succ[mask] = ids[int(rng.integers(len(ids)))]
    prefix = "encoder." if cfg["model_type"] == "nemotron_labs_diffusion" else "model."
    out[f"{prefix}embed_tokens.weight"] = emb
    for name in out:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = (out[name] * mix).astype(np.float32)
    head = np.zeros((vocab, hidden), np.float64)
    np.add.at(head, succ, emb.astype(np.float64) * (head_gain / hidden))
    out["diffusion_head.weight" if cfg["model_type"] == "nemotron_labs_diffusion" else "lm_head.weight"] = \
        head.astype(np.float32)
    return out, succ


def write_byte_tokenizer(path) -> None:
    """A tokenizer.json whose 256 ids are the 256 byte values (text round-trips through latin-1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {bytes([i]).decode("latin-1"): i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=bytes([0]).decode("latin-1")))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(path))

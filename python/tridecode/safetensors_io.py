"""Reading safetensors files without torch: the header is validated, the data memory-mapped.

Tensors come back as numpy views into one read-only memory map per file, so loading never makes a second
copy of the weights. numpy has no bfloat16, so BF16 tensors are uint16 views tagged with their dtype.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from . import _files
from .errors import CheckpointError

#: Headers larger than this are refused (the format's own readers use the same bound).
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: safetensors dtype -> (numpy storage dtype, element size, native code). Native codes match csrc/core/dtype.h.
SUPPORTED_DTYPES = {
    "F32": (np.dtype("<f4"), 4, 0),
    "F16": (np.dtype("<f2"), 2, 1),
    "BF16": (np.dtype("<u2"), 2, 2),
}
#: Every dtype of the format, with its size in bits (the sub-byte ones pack several elements per byte).
_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
               "F32": 32, "F64": 64, "I64": 64, "U64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4,
               "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64}


def to_bf16_bits(a) -> np.ndarray:
    """float values -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_to_f32(bits) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str           # safetensors dtype string, e.g. "BF16"
    shape: tuple
    begin: int           # byte offsets into the data section
    end: int


class SafetensorsFile:
    """One .safetensors file: a validated header plus a lazily created read-only memory map.

    The format's rules are enforced as its reference reader does: an 8-byte little-endian header length
    (at most MAX_HEADER_BYTES), a UTF-8 JSON object without duplicate keys, `__metadata__` a map of strings
    to strings, every entry a known dtype with a shape whose byte size equals its data_offsets span, and
    the entries' byte ranges in order, contiguous and covering the data section exactly: no overlap, no gap,
    no unused bytes before the first tensor or after the last."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        size = _files.stat_regular(self.path, self.name).st_size
        try:
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{self.name}: file is truncated ({size} bytes, no header length)")
                header_len = int.from_bytes(prefix, "little")
                if header_len > MAX_HEADER_BYTES:
                    raise CheckpointError(
                        f"{self.name}: header length {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES}")
                if header_len > size - 8:
                    raise CheckpointError(
                        f"{self.name}: header length {header_len} bytes exceeds the file size ({size} bytes): "
                        "the file is truncated or not a safetensors file")
                raw = f.read(header_len)
        except OSError as e:
            raise CheckpointError(f"{self.name}: cannot read: {e}") from e
        if len(raw) != header_len:
            raise CheckpointError(f"{self.name}: the file changed while its header was read")
        self.data_start = 8 + header_len
        self.data_size = size - self.data_start
        header = _files.parse_json(raw, f"{self.name}: header")
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.name}: malformed header (expected a JSON object)")
        self.metadata = self._parse_metadata(header.pop("__metadata__", None))
        self.tensors: dict[str, TensorInfo] = {}
        for tname, entry in header.items():
            self.tensors[tname] = self._parse_entry(tname, entry)
        self._check_layout()
        self._map = None

    def _parse_metadata(self, meta) -> dict:
        if meta is None:
            return {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise CheckpointError(f"{self.name}: malformed header: __metadata__ must map strings to strings")
        return meta

    def _parse_entry(self, tname: str, entry) -> TensorInfo:
        where = f"{self.name}: tensor {tname}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise CheckpointError(f"{where}: malformed header entry (needs dtype, shape, data_offsets)")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
            raise CheckpointError(f"{where}: malformed header: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise CheckpointError(f"{where}: malformed header: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise CheckpointError(f"{where}: malformed header: bad data_offsets {offs!r}")
        begin, end = offs
        if begin < 0 or end < begin:
            raise CheckpointError(f"{where}: data_offsets {offs} are out of order")
        if end > self.data_size:
            raise CheckpointError(
                f"{where}: data_offsets {offs} lie beyond the data section ({self.data_size} bytes): "
                "offsets out of range or the file is truncated")
        bits = math.prod(shape) * _DTYPE_BITS[dtype]   # Python ints: no overflow
        if bits % 8 or end - begin != bits // 8:
            raise CheckpointError(
                f"{where}: data_offsets {offs} span {end - begin} bytes, but shape {shape} of {dtype} "
                f"needs {bits / 8:g}")
        return TensorInfo(tname, dtype, tuple(shape), begin, end)

    def _check_layout(self) -> None:
        """The byte ranges, in order of their start, must tile the data section exactly."""
        pos, prev = 0, None
        for info in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if info.begin < pos:
                raise CheckpointError(f"{self.name}: tensors {prev} and {info.name} overlap (bytes {info.begin} to "
                                      f"{pos} of the data section)")
            if info.begin > pos:
                what = "before the first tensor" if prev is None else f"between tensors {prev} and {info.name}"
                raise CheckpointError(f"{self.name}: {info.begin - pos} unused bytes {what} (the data section "
                                      "must be covered exactly)")
            pos, prev = info.end, info.name
        if pos != self.data_size:
            raise CheckpointError(f"{self.name}: {self.data_size - pos} trailing bytes after the last tensor "
                                  "(the data section must be covered exactly)")

    def _mapped(self) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def array(self, tname: str) -> tuple[np.ndarray, int]:
        """The tensor as a read-only numpy view (no copy) and its native dtype code."""
        info = self.tensors[tname]
        if info.dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(
                f"{self.name}: tensor {tname} has unsupported dtype {info.dtype} "
                f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        np_dtype, itemsize, code = SUPPORTED_DTYPES[info.dtype]
        start = self.data_start + info.begin
        if start % itemsize:
            raise CheckpointError(f"{self.name}: tensor {tname} starts at a misaligned byte offset {start}")
        raw = self._mapped()[start:self.data_start + info.end]
        return raw.view(np_dtype).reshape(info.shape), code


class Checkpoint:
    """All tensors of a model directory: one file or shards listed by model.safetensors.index.json."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, SafetensorsFile] = {}
        index = os.path.join(self.directory, "model.safetensors.index.json")
        single = os.path.join(self.directory, "model.safetensors")
        if _files.exists(index):
            self._load_index(index)
        elif _files.exists(single):
            f = SafetensorsFile(single)
            self.files[f.name] = f
            self.where = {t: f for t in f.tensors}
        else:
            raise CheckpointError(
                f"{self.directory}: no model.safetensors or model.safetensors.index.json found")

    def _load_index(self, index: str) -> None:
        name = os.path.basename(index)
        data = _files.load_json(index, _files.MAX_INDEX_BYTES)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{name}: missing or empty 'weight_map'")
        for tname, fname in weight_map.items():
            if (not isinstance(fname, str) or os.path.basename(fname) != fname or fname in ("", ".", "..")
                    or "\x00" in fname or not fname.endswith(".safetensors")):
                raise CheckpointError(f"{name}: tensor {tname} maps to {fname!r}, which is not the name of a "
                                      ".safetensors file in the checkpoint directory")
            if fname not in self.files:
                path = os.path.join(self.directory, fname)
                if not _files.exists(path):
                    raise CheckpointError(f"{name}: shard {fname} (holding {tname}) does not exist")
                self.files[fname] = SafetensorsFile(path)
            shard = self.files[fname]
            if tname not in shard.tensors:
                raise CheckpointError(f"{name}: tensor {tname} is listed in {fname} but that file lacks it")
            self.where[tname] = shard
        for shard in self.files.values():
            for tname in shard.tensors:
                if tname not in weight_map:
                    raise CheckpointError(f"{shard.name}: tensor {tname} is not listed in {name}")

    def names(self) -> set[str]:
        return set(self.where)

    def info(self, tname: str) -> TensorInfo:
        return self.where[tname].tensors[tname]

    def file_of(self, tname: str) -> str:
        return self.where[tname].name

    def array(self, tname: str) -> tuple[np.ndarray, int]:
        return self.where[tname].array(tname)

"""Reading checkpoint files defensively: only regular files are opened (a FIFO would block, /dev/zero never
ends, a directory is not a file), sizes are bounded before reading, and JSON is parsed with duplicate keys
and excessive nesting refused. Every problem is a CheckpointError naming the file."""

from __future__ import annotations

import json
import os
import stat

from .errors import CheckpointError

#: Upper bounds on what is read into memory (bytes).
MAX_CONFIG_BYTES = 16 << 20        # config.json, adapter_config.json
MAX_INDEX_BYTES = 256 << 20        # model.safetensors.index.json
MAX_TOKENIZER_BYTES = 1 << 30      # tokenizer.json


def stat_regular(path: str, what: str | None = None) -> os.stat_result:
    """os.stat of path (links followed), which must be a regular file."""
    label = what or os.path.basename(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {label} not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: {label} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise CheckpointError(f"{path}: {label} is {kind}, not a regular file")
    return st


def exists(path: str) -> bool:
    """Whether anything (a file, a directory, a broken link) is at path."""
    return os.path.lexists(path)


def read_bytes(path: str, max_bytes: int, what: str | None = None) -> bytes:
    label = what or os.path.basename(path)
    st = stat_regular(path, label)
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {label} is {st.st_size} bytes, more than the {max_bytes} this reader accepts")
    try:
        with open(path, "rb") as f:
            data = f.read(st.st_size + 1)   # read(n) allocates n bytes up front: ask for what the file holds
    except OSError as e:
        raise CheckpointError(f"{path}: {label} cannot be read: {e.strerror or e}") from None
    if len(data) > st.st_size:
        raise CheckpointError(f"{path}: {label} grew while being read")
    return data


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _Duplicate(k)
        d[k] = v
    return d


class _Duplicate(Exception):
    pass


def parse_json(raw: bytes, where: str):
    """JSON text -> object. Duplicate keys, invalid UTF-8 and nesting deeper than Python can parse are
    refused. NaN and Infinity (which Python's json writes) pass: the field checks name them."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise CheckpointError(f"{where}: malformed JSON: the key {str(e.args[0])!r} appears twice") from None
    except RecursionError:
        raise CheckpointError(f"{where}: malformed JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: malformed JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValueError as e:   # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{where}: malformed JSON: {e}") from None


def load_json(path: str, max_bytes: int = MAX_CONFIG_BYTES, what: str | None = None):
    return parse_json(read_bytes(path, max_bytes, what), path if what is None else f"{path}")

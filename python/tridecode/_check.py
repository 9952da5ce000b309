"""Argument checks shared by the public API. Each returns the value in a canonical Python type or raises
a ValueError naming the parameter and the value (ArgumentTypeError, also a TypeError, for wrong types),
before any work is done. Huge integers, infinities, NaN, bools posing as numbers and strings posing as
integers are all refused here rather than deep inside numpy or the native core."""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from .errors import ArgumentTypeError

UINT64 = 2**64


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def integer(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (Python or numpy, never bool) in [lo, hi]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {_show(v)}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be an integer in {rng}, got {_show(v)}")
    return v


def optional_integer(name: str, v, lo: int | None = None, hi: int | None = None) -> int | None:
    return None if v is None else integer(name, v, lo, hi)


def real(name: str, v, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False) -> float:
    """A finite real number (never bool) in the given range."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {_show(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got {_show(v)}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {_show(v)}")
    if ((lo is not None and (f < lo or (lo_open and f == lo))) or
            (hi is not None and (f > hi or (hi_open and f == hi)))):
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {rng}, got {_show(v)}")
    return f


def flag(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {_show(v)}")
    return bool(v)


def one_of(name: str, v, options):
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {_show(v)}")
    return v


def seed(name: str, v) -> int:
    """A seed or stream: an integer in [0, 2**64)."""
    return integer(name, v, 0, UINT64 - 1)


def path(name: str, v) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path (str or os.PathLike), got {_show(v)}")
    p = os.fspath(v)
    if not isinstance(p, str):
        raise ArgumentTypeError(f"{name} must be a text path, got {_show(v)}")
    if not p or "\x00" in p:
        raise ValueError(f"{name} must be a non-empty path without NUL characters, got {_show(v)}")
    return p


def callback(name: str, v):
    if v is not None and not callable(v):
        raise ArgumentTypeError(f"{name} must be None or callable, got {_show(v)}")
    return v


def array(name: str, v) -> np.ndarray:
    """np.asarray(v) for a numeric array-like, with numpy's own errors (ragged lists, huge ints, objects)
    turned into a ValueError naming the parameter."""
    if isinstance(v, (str, bytes)):
        raise ArgumentTypeError(f"{name} must be an array of numbers, got {type(v).__name__}")
    try:
        a = np.asarray(v)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{name} must be a rectangular array of numbers: {e}") from None
    if a.dtype.kind not in "biuf":
        raise ArgumentTypeError(f"{name} must hold numbers, got an array of dtype {a.dtype}")
    return a

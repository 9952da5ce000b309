"""Exceptions raised for bad input. All derive from ValueError so callers can catch one type."""

from __future__ import annotations

from . import _C

#: Raised by the native core (shape, token id, capacity, ... checks). A ValueError.
NativeError = _C.TridecodeError


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or inconsistent. The message names the file and key/tensor."""


class ArgumentTypeError(ValueError, TypeError):
    """An argument of the wrong type: a ValueError like every bad input, and a TypeError."""

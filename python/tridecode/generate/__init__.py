"""The generate loops, one per decoding mode."""

from .ar import ar_generate

__all__ = ["ar_generate"]

"""Plain numpy (float64) versions of the native ops: the oracle the tests compare every backend with."""

from .ops import argmax_confidence, attention, attention_mask, matmul, rms_norm, rope, swiglu

__all__ = ["argmax_confidence", "attention", "attention_mask", "matmul", "rms_norm", "rope", "swiglu"]

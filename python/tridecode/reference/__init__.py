"""Plain numpy (float64) versions of the native ops: the oracle the tests compare every backend with."""

from .decode import accept_length, fixed_schedule, select, select_commits, uniform01
from .ops import argmax_confidence, attention, attention_mask, matmul, rms_norm, rope, swiglu

__all__ = ["accept_length", "argmax_confidence", "attention", "attention_mask", "fixed_schedule", "matmul",
           "rms_norm", "rope", "select", "select_commits", "swiglu", "uniform01"]

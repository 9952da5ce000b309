"""The tolerance rule every parity test uses (tolerance.py) can fail, and scales with the baseline."""

import numpy as np
import pytest

from tolerance import EPS32, assert_within, naive32, norm_err


def test_norm_err_is_relative_to_the_reference():
    assert norm_err(np.ones(3), np.ones(3)) == 0
    assert norm_err(np.array([2.0, 4.0]), np.array([2.0, 2.0])) == 1.0
    with pytest.raises(AssertionError, match="NaN"):
        norm_err(np.array([np.nan]), np.array([1.0]))


def test_a_kernel_worse_than_twice_the_baseline_fails():
    ref = np.linspace(1, 2, 50)
    baseline = ref * (1 + 1e-5)
    assert_within(ref * (1 + 1.9e-5), ref, baseline)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within(ref * (1 + 2.2e-5), ref, baseline)


def test_an_exact_baseline_still_allows_a_few_ulps():
    ref = np.ones(10)
    assert_within(ref * (1 + 2 * EPS32), ref, ref)
    with pytest.raises(AssertionError):
        assert_within(ref * (1 + 8 * EPS32), ref, ref)


def test_the_naive_baseline_error_grows_with_the_reduction_length():
    rng = np.random.default_rng(0)
    errs = []
    for k in (16, 65536):
        x = rng.standard_normal((4, k)).astype(np.float32)
        w = rng.standard_normal((3, k)).astype(np.float32)
        want = x.astype(np.float64) @ w.astype(np.float64).T
        errs.append(norm_err(naive32.matmul(x, w), want))
    assert errs[1] > errs[0]

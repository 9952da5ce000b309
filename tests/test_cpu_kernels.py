"""The CPU kernel sets (generic, AVX2, AVX-512, AVX512_VNNI, AVX512_BF16: every one this CPU has) against
numpy, each switched in with use_cpu_kernels: fp32 products, bf16 weights with fp32 or bf16-rounded
activations (vdpbf16ps), and int8 weights with a bf16 scale per group of 32 times int16-quantized
activations, against the exact integer group sums computed in numpy. Every path must give a row the same
bits whatever the batch it is in (self-spec == AR depends on it)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tridecode
from tridecode import _C, ops

from checkpoints import bf16_bits_to_f32, f32_to_bf16_bits

SETS = _C.cpu_kernel_sets()
rng = np.random.default_rng(7)


@pytest.fixture(params=SETS)
def kernels(request):
    before = _C.cpu_paths()["kernels"]
    _C.use_cpu_kernels(request.param)
    yield request.param
    _C.use_cpu_kernels(before)


def test_sets_are_listed_and_the_best_is_the_default():
    assert SETS[0] == "generic"
    assert _C.cpu_paths()["kernels"] == SETS[-1]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    amx = _C.cpu_paths()["amx"]
    if " amx_bf16" in flags and " amx_tile" in flags:
        # the tiles must run (their self-test passed) unless the kernel refused this process the tile state
        assert amx in ("ok", "emulated") or "arch_prctl" in amx or amx == "not built", amx
    elif amx != "emulated":
        assert amx in ("no amx_bf16", "not built"), amx
    if amx in ("ok", "emulated"):
        assert SETS[-1] == "amx_bf16" and SETS[-2] != "amx_bf16"
        assert _C.cpu_paths()["bf16"].startswith("AMX tiles")
    elif " avx512_bf16" in flags and " avx512_vnni" in flags and " avx512bw" in flags:
        assert SETS[-1] == "avx512_bf16"
    if " avx2" in flags:
        assert "avx2" in SETS
    with pytest.raises(tridecode.NativeError, match="not available on this CPU"):
        _C.use_cpu_kernels("sse9")


SHAPES = [(1, 37, 100), (3, 8, 64), (4, 12, 257), (5, 19, 1030), (33, 17, 96)]


def _int8_reference(x, q, scales):
    """The int8 path in float64 from exact integers: x quantized per row to int16 in float32 as the kernel
    does (round(x * (32767 / max|x|)), scale max|x| / 32767), each group's sum of products exact, scaled by
    the group's scale; (reference, the sum of |products|, for the tolerance)."""
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=1)
    inv = np.float32(32767) / np.where(amax > 0, amax, np.float32(1))
    xq = np.clip(np.rint(x * inv[:, None]), -32767, 32767).astype(np.int64)
    xs = np.where(amax > 0, amax / np.float32(32767), np.float32(0)).astype(np.float64)
    n, k = q.shape
    out = np.zeros((x.shape[0], n))
    mag = np.zeros_like(out)
    for g in range(scales.shape[1]):
        sl = slice(32 * g, min(k, 32 * g + 32))
        part = (xq[:, sl] @ q[:, sl].astype(np.int64).T).astype(np.float64) * scales[:, g].astype(np.float64)
        out += part
        mag += (np.abs(xq[:, sl]) @ np.abs(q[:, sl].astype(np.int64)).T) * scales[:, g].astype(np.float64)
    return out * xs[:, None], mag * xs[:, None]


def _assert_int8(got, x, q, s):
    want, mag = _int8_reference(x, q, s)
    groups = s.shape[1]
    assert np.all(np.abs(got - want) <= 2 * (groups + 2) * np.finfo(np.float32).eps * mag + 1e-30)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_products_on_every_kernel_set(kernels, m, n, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T   # sum |x||w| per output
    tol = 4 * k * np.finfo(np.float32).eps * scale + 1e-30

    got = ops.matmul(x, w)
    assert np.all(np.abs(got - x.astype(np.float64) @ w.astype(np.float64).T) <= tol)

    bits = f32_to_bf16_bits(w)
    wb = bf16_bits_to_f32(bits).astype(np.float64)
    got = ops.matmul(x, bits, weight_dtype="bfloat16")                       # fp32 x
    assert np.all(np.abs(got - x.astype(np.float64) @ wb.T) <= tol)
    xb = bf16_bits_to_f32(f32_to_bf16_bits(x)).astype(np.float64)
    got16 = ops.matmul(x, bits, weight_dtype="bfloat16", compute_dtype="bfloat16")
    assert np.all(np.abs(got16 - xb @ wb.T) <= tol)                          # the products of rounded x
    assert not np.array_equal(got16, got)                                    # ... and not those of fp32 x

    q, s = ops.quantize_int8(w)
    _assert_int8(ops.matmul_int8(x, q, s), x, q, s)
    # the weight's rounding is the int8 path's main error: well under 1% of the product here
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(ops.matmul_int8(x, q, s) - exact).max() < 0.02 * np.abs(exact).max()


@pytest.mark.parametrize("m", [2, 4, 9, 32])
def test_a_row_does_not_depend_on_its_batch(kernels, m):
    k, n = 200, 21
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bits = f32_to_bf16_bits(w)
    q, s = ops.quantize_int8(w)
    runs = [lambda a: ops.matmul(a, w), lambda a: ops.matmul(a, bits, weight_dtype="bfloat16"),
            lambda a: ops.matmul(a, bits, weight_dtype="bfloat16", compute_dtype="bfloat16"),
            lambda a: ops.matmul_int8(a, q, s)]
    for run in runs:
        whole = run(x)
        for i in (0, m - 1):
            np.testing.assert_array_equal(run(x[i:i + 1])[0], whole[i])


def test_int8_extremes(kernels):
    k = 130
    q = np.full((9, k), 127, np.int8)
    q[1::2] = -127
    s = np.full((9, 5), 2.0 ** -7, np.float32)
    x = np.full((2, k), -3.0, np.float32)        # every x quantizes to -32767: the largest group sums
    x[1, ::3] = 0.0
    _assert_int8(ops.matmul_int8(x, q, s), x, q, s)
    np.testing.assert_allclose(ops.matmul_int8(x[:1], q, s)[0, :2], np.array([-3, 3]) * k * 127 / 128, rtol=1e-6)
    zero = ops.matmul_int8(np.zeros((1, k), np.float32), q, s)
    assert np.all(zero == 0)
    x[0, 5] = np.inf                             # a row with inf: nan outputs, never a silent number
    out = ops.matmul_int8(x, q, s)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_quantize_int8():
    w = rng.standard_normal((40, 77)).astype(np.float32)
    w[3] = 0.0
    q, s = ops.quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (40, 3)
    assert np.all(s.view(np.uint32) & 0xFFFF == 0)                          # bf16 values
    assert np.abs(q).max() <= 127 and not s[3].any() and not q[3].any()
    per = np.repeat(s, 32, axis=1)[:, :77]
    assert np.all(np.abs(q * per - w) <= per / 2 * (1 + 1e-6))              # rounding, never clipping
    groups = np.abs(np.pad(w, ((0, 0), (0, 19)))).reshape(40, 3, 32).max(axis=2)
    assert np.all(s >= groups / 127) and np.all(s <= groups / 127 * (1 + 2 ** -7))   # max|group| / 127, up
    with pytest.raises(ValueError, match="inf or nan"):
        ops.quantize_int8(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        ops.quantize_int8(np.ones(4, np.float32))


def test_int8_op_errors():
    q, s = ops.quantize_int8(np.ones((4, 8), np.float32))
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="int8"):
        ops.matmul_int8(x, q.astype(np.int16), s)
    with pytest.raises(ValueError, match="scales"):
        ops.matmul_int8(x, q, s[:3])
    with pytest.raises(ValueError, match="bf16 values"):
        ops.matmul_int8(x, q, s * 1.001)
    with pytest.raises(ValueError, match=r"expected \[n, 9\]"):
        ops.matmul_int8(np.ones((2, 9), np.float32), q, s)
    with pytest.raises(ValueError, match="compute_dtype"):
        ops.matmul(x, np.ones((4, 8), np.float32), compute_dtype="int4")


def test_openmp_threads_wait_briefly_then_sleep():
    """libgomp is told to spin 10000 times at most (about half a millisecond) before it sleeps, before the
    native module loads it, unless the user chose a wait policy or a spin count. OMP_DISPLAY_ENV makes
    libgomp print the settings it read."""
    code = "import tridecode"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"

    def shown(**extra):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stderr

    err = shown()
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in err and "GOMP_SPINCOUNT = '10000'" in err, err
    err = shown(OMP_WAIT_POLICY="ACTIVE")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err and "GOMP_SPINCOUNT = '10000'" not in err, err
    err = shown(OMP_WAIT_POLICY="PASSIVE")
    assert "GOMP_SPINCOUNT = '0'" in err, err
    err = shown(GOMP_SPINCOUNT="123")
    assert "GOMP_SPINCOUNT = '123'" in err, err


def test_threads_step_aside_when_the_cpus_are_oversubscribed():
    """With a spinning process on every CPU, large products run on the calling thread alone (a region's
    threads would otherwise wait a whole time slice for one the scheduler parked); the answer is re-read
    every few milliseconds."""
    import time
    if not os.path.exists("/proc/loadavg") or tridecode.num_threads() < 2:
        pytest.skip("needs Linux's /proc/loadavg and at least two threads")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        seen = []
        for _ in range(10):
            time.sleep(0.005)
            seen.append(_C.cpu_region_threads())
        assert seen.count(1) >= 8, seen
        # and the products still give the same bits on one thread
        x = rng.standard_normal((5, 300)).astype(np.float32)
        w = rng.standard_normal((700, 300)).astype(np.float32)
        busy = ops.matmul(x, w)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    time.sleep(0.1)
    np.testing.assert_array_equal(busy, ops.matmul(x, w))

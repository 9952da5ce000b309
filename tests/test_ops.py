"""One parity table: every op case runs on every backend (CPU, and CUDA where available) and is compared
with the float64 numpy reference by the rule of tolerance.py: at most twice the error of a naive fp32
implementation of the op on the same inputs, plus a few ulps, with a NaN/Inf check."""

import numpy as np
import pytest

from tridecode import ops
from tridecode import reference as ref
from tridecode.rope import inv_freq
from tridecode.config import RopeConfig

from conftest import require_cuda_or_skip
from tolerance import assert_within, naive32, rope64

rng = np.random.default_rng(1234)


from checkpoints import bf16_bits_to_f32 as bf16_values
from checkpoints import f32_to_bf16_bits as bf16_bits


def stored(w, wdtype):
    """(array as stored, weight_dtype argument, its exact values in float32)."""
    if wdtype == "float16":
        w16 = w.astype(np.float16)
        return w16, None, w16.astype(np.float32)
    if wdtype == "bfloat16":
        bits = bf16_bits(w)
        return bits, "bfloat16", bf16_values(bits)
    return w, None, w


def case_rms_norm(wdtype):
    def run(device):
        x = rng.standard_normal((7, 96)).astype(np.float32) * 3
        w, wd, wv = stored((1 + 0.1 * rng.standard_normal(96)).astype(np.float32), wdtype)
        got = ops.rms_norm(x, w, 1e-5, weight_dtype=wd, device=device)
        return got, ref.rms_norm(x, wv, 1e-5), naive32.rms_norm(x, wv, 1e-5)
    return run


def case_matmul(m, wdtype):
    def run(device):
        k, n = 200, 67    # k not a multiple of any vector width, n not a multiple of the 4-row tile
        x = rng.standard_normal((m, k)).astype(np.float32)
        w, wd, wv = stored((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), wdtype)
        return ops.matmul(x, w, weight_dtype=wd, device=device), ref.matmul(x, wv), naive32.matmul(x, wv)
    return run


def case_rope(positions, is_query, beta):
    def run(device):
        rc = RopeConfig("yarn", 1e6, factor=16.0, original_max_position_embeddings=16384, mscale=1.0,
                        mscale_all_dim=1.0)
        freqs, af = inv_freq(rc, 32)
        pos = np.asarray(positions, np.int64)
        x = rng.standard_normal((len(pos), 3, 32)).astype(np.float32)
        args = (pos, freqs, af, beta, 16384, is_query)
        # The reference takes the fp32 angle the kernel (and the HF reference) uses, evaluated in fp64.
        return ops.rope(x, *args, device=device), rope64(x, *args), naive32.rope(x, *args)
    return run


def case_attention(n_q, kv_len, heads, kv_heads, d, causal):
    def run(device):
        q = rng.standard_normal((n_q, heads, d)).astype(np.float32)
        k = rng.standard_normal((kv_len, kv_heads, d)).astype(np.float32)
        v = rng.standard_normal((kv_len, kv_heads, d)).astype(np.float32)
        return (ops.attention(q, k, v, causal=causal, device=device), ref.attention(q, k, v, causal=causal),
                naive32.attention(q, k, v, causal=causal))
    return run


def case_swiglu(device):
    g = rng.standard_normal((5, 300)).astype(np.float32) * 4
    u = rng.standard_normal((5, 300)).astype(np.float32)
    return ops.swiglu(g, u, device=device), ref.swiglu(g, u), naive32.swiglu(g, u)


# (name, function(device) -> (output, float64 reference, naive fp32 output))
CASES = [
    *[(f"rms_norm-{wd}", case_rms_norm(wd)) for wd in ("float32", "float16", "bfloat16")],
    *[(f"matmul-m{m}-{wd}", case_matmul(m, wd)) for m in (1, 3, 4, 9, 32) for wd in ("float32", "float16", "bfloat16")],
    ("rope-q-short", case_rope([0, 1, 5, 13, 100, 2047], True, 0.1)),
    ("rope-k-short", case_rope([0, 7, 300], False, 0.1)),
    ("rope-q-long", case_rope([16383, 16384, 20000, 40000, 100000], True, 0.1)),
    ("rope-k-long", case_rope([16384, 50000], False, 0.1)),
    *[(f"attention-n{n}-T{T}-h{h}/{g}-d{d}-{'causal' if c else 'bidir'}", case_attention(n, T, h, g, d, c))
      for (n, T, h, g, d) in [(1, 1, 4, 4, 16), (1, 37, 8, 2, 64), (8, 8, 4, 2, 16), (8, 45, 4, 1, 32),
                              (32, 100, 8, 8, 128), (5, 5, 2, 1, 64)]
      for c in (True, False)],
    ("swiglu", case_swiglu),
]

PARAMS = [pytest.param(fn, dev, id=f"{name}-{dev}") for name, fn in CASES for dev in ("cpu", "cuda")]


@pytest.mark.parametrize("fn,device", PARAMS)
def test_op_matches_reference(fn, device):
    if device == "cuda":
        require_cuda_or_skip()
    got, want, naive = fn(device)
    assert_within(got, want, naive, device)


def test_causal_first_query_sees_only_first_key():
    # n_q == kv_len: query 0 may only read key 0, so its output is exactly v[0] (per head group).
    q = rng.standard_normal((6, 4, 16)).astype(np.float32)
    k = rng.standard_normal((6, 2, 16)).astype(np.float32)
    v = rng.standard_normal((6, 2, 16)).astype(np.float32)
    out = ops.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out[0, :2], v[0, [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(out[0, 2:], v[0, [1, 1]], rtol=1e-6)


def test_bidirectional_ignores_query_order():
    q = rng.standard_normal((5, 2, 16)).astype(np.float32)
    k = rng.standard_normal((9, 1, 16)).astype(np.float32)
    v = rng.standard_normal((9, 1, 16)).astype(np.float32)
    full = ops.attention(q, k, v, causal=False)
    single = ops.attention(q[:1], k, v, causal=False)
    np.testing.assert_allclose(full[:1], single, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n,vocab", [(1, 10), (4, 256), (3, 131)])
def test_argmax_confidence(n, vocab):
    logits = rng.standard_normal((n, vocab)).astype(np.float32) * 5
    idx, conf = ops.argmax_confidence(logits)
    ridx, rconf = ref.argmax_confidence(logits)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(conf, rconf, rtol=1e-6)


def test_argmax_ties_take_the_lowest_index_and_exclusion():
    logits = np.zeros((1, 8), np.float32)
    logits[0, [2, 5, 6]] = 3.0
    idx, conf = ops.argmax_confidence(logits)
    assert idx[0] == 2
    np.testing.assert_allclose(conf[0], np.exp(3) / (3 * np.exp(3) + 5), rtol=1e-6)
    idx, _ = ops.argmax_confidence(logits, exclude_id=2)
    assert idx[0] == 5


@pytest.mark.parametrize("call,match", [
    (lambda: ops.rms_norm(np.ones((2, 4), np.float32), np.ones(5, np.float32)), "weight has shape"),
    (lambda: ops.rms_norm(np.ones((2, 4), np.int32), np.ones(4, np.float32)), "floating-point"),
    (lambda: ops.rms_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32), eps=0), "eps"),
    (lambda: ops.matmul(np.ones((2, 4), np.float32), np.ones((3, 5), np.float32)), "expected \\[n, 4\\]"),
    (lambda: ops.matmul(np.ones((2, 4), np.float32), np.ones((3, 4), np.int64)), "unsupported weight dtype"),
    (lambda: ops.matmul(np.ones((2, 4), np.float32), np.ones((3, 4), np.float32), "bfloat16"), "cannot hold"),
    (lambda: ops.attention(np.ones((3, 4, 8), np.float32), np.ones((2, 2, 8), np.float32),
                           np.ones((2, 2, 8), np.float32)), "n_q <= kv_len"),
    (lambda: ops.attention(np.ones((1, 3, 8), np.float32), np.ones((2, 2, 8), np.float32),
                           np.ones((2, 2, 8), np.float32)), "not a multiple"),
    (lambda: ops.attention(np.ones((1, 4, 8), np.float32), np.ones((2, 2, 4), np.float32),
                           np.ones((2, 2, 4), np.float32)), "head_dim"),
    (lambda: ops.rope(np.ones((2, 1, 8), np.float32), [0, 1], np.ones(3, np.float32)), "inv_freq"),
    (lambda: ops.rope(np.ones((2, 1, 8), np.float32), [0], np.ones(4, np.float32)), "positions"),
    (lambda: ops.swiglu(np.ones(3, np.float32), np.ones(4, np.float32)), "shape"),
    (lambda: ops.argmax_confidence(np.ones((2, 4), np.float32), exclude_id=9), "exclude_id"),
])
def test_ops_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cuda_unavailable_is_a_clear_error():
    import tridecode
    if tridecode.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA"):
        ops.rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32), device="cuda")


# ---- decode-loop ops: commit selection, fixed schedule, speculative acceptance ----

@pytest.mark.parametrize("trial", range(40))
def test_select_commits_matches_reference(trial):
    from tridecode import _C
    g = np.random.default_rng(trial)
    L = int(g.integers(2, 40))
    conf = g.random(L).astype(np.float32)
    if trial % 4 == 0:
        conf[g.integers(0, L, size=3)] = conf[0]          # exact ties
    masked = (g.random(L) < 0.7).astype(np.uint8)
    thr = float(g.choice([0.3, 0.5, 0.9, 1.0]))
    got = _C.select_commits(conf, masked, thr, -1).astype(bool)
    assert got.tolist() == ref.select_commits(conf, masked, threshold=thr).tolist()
    k = int(g.integers(0, L + 1))
    got = _C.select_commits(conf, masked, 0.0, k).astype(bool)
    assert got.tolist() == ref.select_commits(conf, masked, k=k).tolist()


def test_select_commits_rules_on_a_constructed_block():
    from tridecode import _C
    conf = np.array([0.99, 0.2, 0.95, 0.5, 0.95, 0.1], np.float32)
    masked = np.array([0, 1, 1, 1, 1, 1], np.uint8)
    # threshold 0.9: slots 2 and 4 clear it (slot 0 is not masked); the forced top-1 is among them.
    assert _C.select_commits(conf, masked, 0.9, -1).tolist() == [0, 0, 1, 0, 1, 0]
    # nothing clears 0.97: only the forced most confident, the lower slot of the 0.95 tie.
    assert _C.select_commits(conf, masked, 0.97, -1).tolist() == [0, 0, 1, 0, 0, 0]
    assert _C.select_commits(conf, masked, 0.0, 3).tolist() == [0, 0, 1, 1, 1, 0]
    assert _C.select_commits(conf, np.zeros(6, np.uint8), 0.5, -1).tolist() == [0] * 6


@pytest.mark.parametrize("masks,steps,want", [(7, 7, [1] * 7), (7, 3, [3, 2, 2]), (31, 32, [1] * 31 + [0]),
                                              (7, 1, [7]), (10, 4, [3, 3, 2, 2])])
def test_fixed_schedule(masks, steps, want):
    assert ref.fixed_schedule(masks, steps) == want


@pytest.mark.parametrize("draft,target,want", [
    ([5, 1, 2, 3], [1, 2, 3, 9], 3),     # every draft accepted, 9 is the bonus token
    ([5, 1, 2, 3], [1, 7, 3, 9], 1),     # mismatch at the second draft
    ([5, 1, 2, 3], [4, 2, 3, 9], 0),     # first draft rejected: only the correction is emitted
    ([5, 6], [6, 8], 1),
    ([5], [3], 0),
])
def test_accept_length(draft, target, want):
    from tridecode import _C
    assert _C.accept_length(np.array(draft, np.int32), np.array(target, np.int32)) == want
    assert ref.accept_length(draft, target) == want

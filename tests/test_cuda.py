"""The CUDA backend against the CPU backend: every op (normalized error, NaN/Inf, guard bytes around the
outputs), then whole models in all three modes. Skipped without a GPU; TRIDECODE_REQUIRE_CUDA=1 turns the
skips into failures (benchmarks/gpu_check.sh sets it)."""

import json

import numpy as np
import pytest

import tridecode
from tridecode import _C, ops
from tridecode.config import RopeConfig
from tridecode.rope import inv_freq

from conftest import REQUIRE_CUDA, require_cuda_or_skip
from golden import GOLDEN_DIR, PROMPTS, cases, generate_kwargs

# Normalized-error bounds, CUDA vs the CPU backend. Both accumulate in fp32 in different orders, so the
# bound is a small multiple of fp32 rounding over the reduction length.
TOL = {"rms_norm": 1e-6, "matmul": 2e-6, "rope": 2e-6, "attention": 2e-6, "swiglu": 1e-6, "logits": 1e-5}
GUARD = 256           # bytes of sentinel on each side of every output
SENTINEL = 0xA5

rng = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _gpu():
    require_cuda_or_skip()


def norm_err(got, want):
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "CUDA output holds NaN/Inf"
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


class Guarded:
    """A device output with sentinel bytes on both sides; check() fails if a kernel wrote outside it."""

    def __init__(self, shape, dtype=np.float32):
        self.host = np.empty(shape, dtype)
        self.buf = _C.DeviceBuffer(self.host.nbytes + 2 * GUARD)
        self.buf.upload(np.full(self.host.nbytes + 2 * GUARD, SENTINEL, np.uint8))
        self.ptr = self.buf.ptr + GUARD

    def fetch(self):
        raw = np.empty(self.host.nbytes + 2 * GUARD, np.uint8)
        self.buf.download(raw)
        assert (raw[:GUARD] == SENTINEL).all() and (raw[-GUARD:] == SENTINEL).all(), "write outside the output"
        return raw[GUARD:GUARD + self.host.nbytes].view(self.host.dtype).reshape(self.host.shape)


def dev(a):
    a = np.ascontiguousarray(a)
    b = _C.DeviceBuffer(max(a.nbytes, 1))
    b.upload(a)
    return b


from checkpoints import f32_to_bf16_bits as bf16  # noqa: E402


WEIGHT_DTYPES = [("float32", 0), ("float16", 1), ("bfloat16", 2)]


def as_stored(w, name):
    if name == "float32":
        return w.astype(np.float32)
    if name == "float16":
        return w.astype(np.float16)
    return bf16(w)


@pytest.mark.parametrize("wname,code", WEIGHT_DTYPES)
@pytest.mark.parametrize("n,dim", [(1, 64), (7, 96), (33, 4096)])
def test_rms_norm(wname, code, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w = as_stored((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32), wname)
    want = ops.rms_norm(x, w, 1e-5, weight_dtype=wname)
    out = Guarded((n, dim))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.rms_norm(xd.ptr, wd.ptr, code, out.ptr, n, dim, 1e-5)
    assert norm_err(out.fetch(), want) <= TOL["rms_norm"]


@pytest.mark.parametrize("wname,code", WEIGHT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 67, 200), (1, 512, 1024), (4, 300, 256), (8, 128, 64), (9, 96, 512),
                                   (32, 256, 1024), (64, 130, 136), (65, 64, 100), (70, 64, 4096),
                                   (257, 200, 1000)])
def test_matmul(wname, code, m, n, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = as_stored((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), wname)
    want = ops.matmul(x, w, weight_dtype=wname)
    out = Guarded((m, n))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.matmul(xd.ptr, m, wd.ptr, code, n, k, out.ptr)
    got = out.fetch()
    if wname == "bfloat16" and m > 64:
        # The tensor-core path rounds x to bf16: bound its error by twice that of a naive product of the
        # same bf16-rounded inputs (fp64 accumulation) against the fp32-input result.
        wv = (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        xb = (bf16(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        baseline = norm_err(xb @ wv.T, want)
        assert baseline > 0
        assert norm_err(got, want) <= 2 * baseline + 1e-6
    else:
        assert norm_err(got, want) <= TOL["matmul"]


@pytest.mark.parametrize("n,dim", [(1, 64), (5, 4096)])
def test_add_rms_norm(n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.standard_normal((n, dim)).astype(np.float32)
    w = bf16((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
    want_x = x + y
    want = ops.rms_norm(want_x, w, 1e-5, weight_dtype="bfloat16")
    xd, yd, wd = dev(x), dev(y), dev(w)
    out = Guarded((n, dim))
    _C.cuda_raw.add_rms_norm(xd.ptr, yd.ptr, wd.ptr, 2, out.ptr, n, dim, 1e-5)
    got_x = np.empty_like(x)
    xd.download(got_x)
    np.testing.assert_array_equal(got_x, want_x)
    assert norm_err(out.fetch(), want) <= TOL["rms_norm"]


@pytest.mark.parametrize("n,heads,kv_heads,head_dim,row0", [(1, 4, 2, 16, 0), (7, 32, 8, 128, 100)])
def test_rope_kv_append(n, heads, kv_heads, head_dim, row0):
    rc = RopeConfig("yarn", 1e6, factor=16.0, original_max_position_embeddings=16384, mscale=1.0, mscale_all_dim=1.0)
    freqs, af = inv_freq(rc, head_dim)
    params = {"inv_freq": [float(f) for f in freqs], "attention_factor": af, "qscale_beta": 0.1,
              "qscale_length": 16384}
    pos = np.arange(20000, 20000 + n, dtype=np.int64)
    q = rng.standard_normal((n, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32)
    cap = row0 + n + 3
    qd, kd, vd, pd = dev(q), dev(k), dev(v), dev(pos)
    ck = Guarded((kv_heads, cap, head_dim))
    cv = Guarded((kv_heads, cap, head_dim))
    _C.cuda_raw.rope_kv_append(qd.ptr, kd.ptr, vd.ptr, n, heads, kv_heads, head_dim, pd.ptr, params, ck.ptr, cv.ptr,
                               row0, cap * head_dim)
    got_q = np.empty_like(q)
    qd.download(got_q)
    assert norm_err(got_q, ops.rope(q, pos, freqs, af, 0.1, 16384, True)) <= 1e-4
    want_k = ops.rope(k, pos, freqs, af, 0.1, 16384, False)
    cache_k, cache_v = ck.fetch(), cv.fetch()
    assert norm_err(cache_k[:, row0:row0 + n].transpose(1, 0, 2), want_k) <= 1e-4
    np.testing.assert_array_equal(cache_v[:, row0:row0 + n].transpose(1, 0, 2), v)


@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("positions", [[0, 1, 5, 300], [16383, 16384, 40000, 100000]])
def test_rope(head_dim, positions):
    rc = RopeConfig("yarn", 1e6, factor=16.0, original_max_position_embeddings=16384, mscale=1.0, mscale_all_dim=1.0)
    freqs, af = inv_freq(rc, head_dim)
    pos = np.asarray(positions, np.int64)
    x = rng.standard_normal((len(pos), 3, head_dim)).astype(np.float32)
    for is_query in (True, False):
        want = ops.rope(x, pos, freqs, af, 0.1, 16384, is_query)
        got = ops.rope(x, pos, freqs, af, 0.1, 16384, is_query, device="cuda")
        # long positions: sin/cos of angles in the thousands of radians differ by ulps between libms
        assert norm_err(got, want) <= (TOL["rope"] if pos.max() < 1000 else 1e-4)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,T,h,g,d", [(1, 1, 4, 4, 16), (1, 37, 8, 2, 64), (8, 8, 4, 2, 16), (8, 300, 4, 1, 128),
                                       (32, 1000, 8, 2, 128), (1, 8192, 32, 8, 128), (5, 600, 2, 1, 64)])
def test_attention(causal, n, T, h, g, d):
    q = rng.standard_normal((n, h, d)).astype(np.float32)
    k = rng.standard_normal((T, g, d)).astype(np.float32)
    v = rng.standard_normal((T, g, d)).astype(np.float32)
    want = ops.attention(q, k, v, causal=causal)
    out = Guarded((n, h, d))
    qd, kd, vd = dev(q), dev(k), dev(v)
    _C.cuda_raw.attention(qd.ptr, kd.ptr, vd.ptr, out.ptr, n, T, h, g, d, causal, 1.0 / np.sqrt(d))
    assert norm_err(out.fetch(), want) <= TOL["attention"]


def test_swiglu_and_staged_ops():
    g = rng.standard_normal((5, 3000)).astype(np.float32) * 4
    u = rng.standard_normal((5, 3000)).astype(np.float32)
    assert norm_err(ops.swiglu(g, u, device="cuda"), ops.swiglu(g, u)) <= TOL["swiglu"]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("n,vocab", [(1, 256), (8, 1000), (3, 131072)])
def test_select_and_head_select(temperature, n, vocab):
    logits = (rng.standard_normal((n, vocab)) * 4).astype(np.float32)
    ci, cc = ops.select(logits, exclude_id=100, temperature=temperature, seed=5, stream=3)
    gi, gc = ops.select(logits, exclude_id=100, temperature=temperature, seed=5, stream=3, device="cuda")
    np.testing.assert_array_equal(gi, ci)
    np.testing.assert_allclose(gc, cc, rtol=1e-5)
    hidden = 64
    x = rng.standard_normal((n, hidden)).astype(np.float32)
    w = bf16(rng.standard_normal((vocab, hidden)) / 8)
    want_i, want_c = _C.head_select(x, w, 2, 100, temperature, 5, 3)
    idx, conf = Guarded((n,), np.int32), Guarded((n,))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.head_select(xd.ptr, n, wd.ptr, 2, vocab, hidden, 100, temperature, 5, 3, idx.ptr, conf.ptr)
    np.testing.assert_array_equal(idx.fetch(), want_i)
    np.testing.assert_allclose(conf.fetch(), want_c, rtol=1e-5)


@pytest.mark.parametrize("trial", range(10))
def test_select_commits_and_accept_length(trial):
    g = np.random.default_rng(trial)
    L = int(g.integers(2, 40))
    conf = g.random(L).astype(np.float32)
    masked = (g.random(L) < 0.7).astype(np.uint8)
    for thr, k in ((0.5, -1), (0.0, int(g.integers(0, L)))):
        want = _C.select_commits(conf, masked, thr, k)
        out = Guarded((L,), np.uint8)
        cd, md = dev(conf), dev(masked)
        count = _C.cuda_raw.select_commits(cd.ptr, md.ptr, L, thr, k, out.ptr)
        np.testing.assert_array_equal(out.fetch(), want)
        assert count == int(want.sum())
    draft = g.integers(0, 5, L).astype(np.int32)
    target = np.roll(draft, -1)
    target[int(g.integers(0, L))] = 99
    dd, td_ = dev(draft), dev(target)
    assert _C.cuda_raw.accept_length(dd.ptr, td_.ptr, L) == _C.accept_length(draft, target)


# ---- whole models ----

@pytest.fixture(scope="module")
def pair():
    require_cuda_or_skip()
    return tridecode.load(GOLDEN_DIR), tridecode.load(GOLDEN_DIR, device="cuda")


def test_cuda_model_reports_device_memory(pair):
    cpu, gpu = pair
    assert gpu.device == "cuda"
    assert gpu.device_memory_bytes > cpu.weight_bytes


def test_forward_logits_match_cpu(pair):
    cpu, gpu = pair
    for m in pair:
        m.reset()
    for chunk, mode in ((PROMPTS[4], "causal"), ([17] + [100] * 7, "bidirectional"), (PROMPTS[1], "causal")):
        want = cpu.forward(chunk, mode=mode)
        got = gpu.forward(chunk, mode=mode)
        assert norm_err(got, want) <= TOL["logits"]
        assert gpu.cache_length == cpu.cache_length


@pytest.mark.parametrize("case", cases("ar_generate") + cases("generate") + cases("linear_spec_generate"),
                         ids=lambda c: c["id"])
def test_golden_modes_on_cuda_equal_cpu(pair, case):
    cpu, gpu = pair
    kw = generate_kwargs(case)
    want = cpu.generate(PROMPTS[case["prompt_index"]], **kw)
    got = gpu.generate(PROMPTS[case["prompt_index"]], **kw)
    assert got.tokens == want.tokens == case["new_tokens"][: kw["max_new_tokens"]]
    assert got.nfe == want.nfe
    assert got.accepted_per_cycle == want.accepted_per_cycle


def test_bf16_model_greedy_matches_cpu(tmp_path):
    # A bf16 copy of the golden weights: CPU and CUDA compute from the same stored values.
    from checkpoints import write_checkpoint
    from safetensors.numpy import load_file
    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    tensors = load_file(f"{GOLDEN_DIR}/model.safetensors")
    d = write_checkpoint(tmp_path / "bf16", cfg, tensors, dtype="BF16")
    cpu, gpu = tridecode.load(d), tridecode.load(d, device="cuda")
    for p in PROMPTS[1:4]:
        assert norm_err(gpu.forward(p, write_cache=False), cpu.forward(p, write_cache=False)) <= TOL["logits"]


def test_out_device_returns_a_cupy_array(pair):
    if not REQUIRE_CUDA:
        pytest.importorskip("cupy")
    cpu, gpu = pair
    gpu.reset()
    cpu.reset()
    dlog = gpu.forward(PROMPTS[2], out="device")
    assert type(dlog).__module__.startswith("cupy")
    assert norm_err(dlog.get(), cpu.forward(PROMPTS[2])) <= TOL["logits"]
    # ops take the device array in place and return device arrays
    idx, conf = ops.select(dlog, exclude_id=100)
    assert type(idx).__module__.startswith("cupy")
    np.testing.assert_array_equal(idx.get(), ops.select(dlog.get(), exclude_id=100)[0])


def test_random_model_and_out_of_memory():
    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    m = tridecode.random_model(cfg, device="cuda", dtype="bfloat16", max_context=64)
    res = m.generate([1, 2, 3], max_new_tokens=4)
    assert len(res.tokens) == 4
    huge = dict(cfg, max_position_embeddings=2**31 - 1)
    with pytest.raises(MemoryError, match="out of device memory"):
        tridecode.random_model(huge, device="cuda", max_context=2**31 - 1)

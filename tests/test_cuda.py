"""The CUDA backend's ops: each against float64 and the CPU backend (the rule of tolerance.py, NaN/Inf,
guard bytes around every output), and every kernel and path launched (the emulator's launch log). Whole
models are in test_cuda_models.py.

Runs on a GPU, or on the CUDA emulator (a TRIDECODE_CUDA=EMU build runs the same kernels on the CPU);
skipped otherwise. TRIDECODE_REQUIRE_CUDA=1 turns the skips into failures (benchmarks/gpu_check.sh and
.ci/run set it)."""

import json
import os
import re

import numpy as np
import pytest

import tridecode
from tridecode import _C, ops
from tridecode import reference as ref
from tridecode.config import RopeConfig
from tridecode.reference.decode import select as ref_select
from tridecode.rope import inv_freq

from conftest import require_cuda_or_skip
from golden import GOLDEN_DIR, PROMPTS
from tolerance import assert_within, naive32, rope64, softmax_at64

GUARD = 256           # bytes of sentinel on each side of every output
SENTINEL = 0xA5
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc")

rng = np.random.default_rng(7)

@pytest.fixture(autouse=True)
def _gpu():
    require_cuda_or_skip()


class Guarded:
    """A device output with sentinel bytes on both sides; fetch() fails if a kernel wrote outside it."""

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


from checkpoints import bf16_bits_to_f32 as bf16_values  # noqa: E402
from checkpoints import f32_to_bf16_bits as bf16  # noqa: E402

WEIGHT_DTYPES = [("float32", 0), ("float16", 1), ("bfloat16", 2)]


def as_stored(w, name):
    """(stored array, its exact values as float32)."""
    if name == "float32":
        return w.astype(np.float32), w.astype(np.float32)
    if name == "float16":
        h = w.astype(np.float16)
        return h, h.astype(np.float32)
    b = bf16(w)
    return b, bf16_values(b)


# ---- ops ----

@pytest.mark.parametrize("wname,code", WEIGHT_DTYPES)
@pytest.mark.parametrize("n,dim", [(1, 64), (7, 96), (33, 4096)])
def test_rms_norm(wname, code, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w, wv = as_stored((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32), wname)
    want, base = ref.rms_norm(x, wv, 1e-5), naive32.rms_norm(x, wv, 1e-5)
    out = Guarded((n, dim))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.rms_norm(xd.ptr, wd.ptr, code, out.ptr, n, dim, 1e-5)
    assert_within(out.fetch(), want, base, "cuda")
    assert_within(ops.rms_norm(x, w, 1e-5, weight_dtype=wname), want, base, "cpu")


@pytest.mark.parametrize("wname,code", WEIGHT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 67, 200), (1, 512, 1024), (4, 300, 256), (8, 128, 64), (9, 96, 512),
                                   (32, 256, 1024), (64, 130, 136), (65, 64, 100), (70, 64, 4096),
                                   (257, 200, 1000), (5, 40, 100), (3, 300, 8192)])
def test_matmul(wname, code, m, n, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w, wv = as_stored((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), wname)
    want = x.astype(np.float64) @ wv.astype(np.float64).T
    out = Guarded((m, n))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.matmul(xd.ptr, m, wd.ptr, code, n, k, out.ptr)
    if wname == "bfloat16":
        # bf16 weights multiply bf16-rounded x (the tensor cores; the scalar path for other shapes rounds
        # alike): the naive counterpart is an fp32 product of the bf16-rounded inputs.
        base = naive32.matmul(bf16_values(bf16(x)), wv)
    else:
        base = naive32.matmul(x, wv)
    assert_within(out.fetch(), want, base, "cuda")
    assert_within(ops.matmul(x, w, weight_dtype=wname), want, naive32.matmul(x, wv), "cpu")


@pytest.mark.parametrize("wname,code", WEIGHT_DTYPES)
@pytest.mark.parametrize("n,k", [(96, 512), (40, 100), (300, 4096)])
def test_matmul_rows_are_batch_invariant(wname, code, n, k):
    """Each row of a product of up to 64 rows has the bits of that row multiplied alone (a decode step and
    the same token inside a verify block agree exactly), on every path: tensor cores with split-k, vector and
    scalar weight streaming."""
    x = rng.standard_normal((64, k)).astype(np.float32)
    w, _ = as_stored((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), wname)
    wd = dev(w)
    alone = np.empty((64, n), np.float32)
    for i in range(64):
        out = Guarded((1, n))
        xi = dev(x[i:i + 1])
        _C.cuda_raw.matmul(xi.ptr, 1, wd.ptr, code, n, k, out.ptr)
        alone[i] = out.fetch()[0]
    for m in (2, 9, 17, 33, 64):
        out = Guarded((m, n))
        xd = dev(x[:m])
        _C.cuda_raw.matmul(xd.ptr, m, wd.ptr, code, n, k, out.ptr)
        np.testing.assert_array_equal(out.fetch(), alone[:m], err_msg=f"{m} rows")


@pytest.mark.parametrize("n,dim", [(1, 64), (5, 4096)])
def test_add_rms_norm(n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.standard_normal((n, dim)).astype(np.float32)
    w = bf16((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
    want_x = x + y
    xd, yd, wd = dev(x), dev(y), dev(w)
    out = Guarded((n, dim))
    _C.cuda_raw.add_rms_norm(xd.ptr, yd.ptr, wd.ptr, 2, out.ptr, n, dim, 1e-5)
    got_x = np.empty_like(x)
    xd.download(got_x)
    np.testing.assert_array_equal(got_x, want_x)
    assert_within(out.fetch(), ref.rms_norm(want_x, bf16_values(w), 1e-5),
                  naive32.rms_norm(want_x, bf16_values(w), 1e-5))


YARN = RopeConfig("yarn", 1e6, factor=16.0, original_max_position_embeddings=16384, mscale=1.0, mscale_all_dim=1.0)


@pytest.mark.parametrize("cache", ["float32", "bfloat16"])
@pytest.mark.parametrize("n,heads,kv_heads,head_dim,row0", [(1, 4, 2, 16, 0), (7, 32, 8, 128, 100)])
def test_rope_kv_append(n, heads, kv_heads, head_dim, row0, cache):
    freqs, af = inv_freq(YARN, head_dim)
    params = {"inv_freq": [float(f) for f in freqs], "attention_factor": af, "qscale_beta": 0.1,
              "qscale_length": 16384}
    pos = np.arange(20000, 20000 + n, dtype=np.int64)
    q = rng.standard_normal((n, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32)
    cap = row0 + n + 3
    qd, kd, vd, pd = dev(q), dev(k), dev(v), dev(pos)
    store = np.float32 if cache == "float32" else np.uint16
    ck = Guarded((kv_heads, cap, head_dim), store)
    cv = Guarded((kv_heads, cap, head_dim), store)
    _C.cuda_raw.rope_kv_append(qd.ptr, kd.ptr, vd.ptr, n, heads, kv_heads, head_dim, pd.ptr, params, ck.ptr, cv.ptr,
                               row0, cap * head_dim, dict(WEIGHT_DTYPES)[cache])
    got_q = np.empty_like(q)
    qd.download(got_q)
    args = (pos, freqs, af, 0.1, 16384)
    assert_within(got_q, rope64(q, *args, True), naive32.rope(q, *args, True), "q")
    cache_k, cache_v = (c.fetch()[:, row0:row0 + n].transpose(1, 0, 2) for c in (ck, cv))
    want_k, base_k = rope64(k, *args, False), naive32.rope(k, *args, False)
    if cache == "float32":
        assert_within(cache_k, want_k, base_k, "k")
        np.testing.assert_array_equal(cache_v, v)
    else:   # stored rounded to nearest even: the naive counterpart rounds its fp32 rotation the same way
        assert_within(bf16_values(cache_k), want_k, bf16_values(bf16(base_k)), "k (bf16 cache)")
        np.testing.assert_array_equal(cache_v, bf16(v))
    untouched = np.ones(cap, bool)
    untouched[row0:row0 + n] = False
    assert (ck.fetch()[:, untouched].view(np.uint8) == SENTINEL).all()   # no row but the chunk's is written


@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("positions", [[0, 1, 5, 300], [16383, 16384, 40000, 100000]])
def test_rope(head_dim, positions):
    freqs, af = inv_freq(YARN, head_dim)
    pos = np.asarray(positions, np.int64)
    x = rng.standard_normal((len(pos), 3, head_dim)).astype(np.float32)
    for is_query in (True, False):
        args = (pos, freqs, af, 0.1, 16384, is_query)
        want, base = rope64(x, *args), naive32.rope(x, *args)
        assert_within(ops.rope(x, *args, device="cuda"), want, base, "cuda")
        assert_within(ops.rope(x, *args), want, base, "cpu")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,T,h,g,d", [(1, 1, 4, 4, 16), (1, 37, 8, 2, 64), (8, 8, 4, 2, 16), (8, 300, 4, 1, 128),
                                       (32, 1000, 8, 2, 128), (1, 8192, 32, 8, 128), (5, 600, 2, 1, 64),
                                       (40, 300, 8, 2, 48), (3, 50, 4, 2, 24)])
def test_attention(causal, n, T, h, g, d):
    q = rng.standard_normal((n, h, d)).astype(np.float32)
    k = rng.standard_normal((T, g, d)).astype(np.float32)
    v = rng.standard_normal((T, g, d)).astype(np.float32)
    want, base = ref.attention(q, k, v, causal=causal), naive32.attention(q, k, v, causal=causal)
    out = Guarded((n, h, d))
    qd, kd, vd = dev(q), dev(k), dev(v)
    _C.cuda_raw.attention(qd.ptr, kd.ptr, vd.ptr, out.ptr, n, T, h, g, d, causal, 1.0 / np.sqrt(d))
    assert_within(out.fetch(), want, base, "cuda")
    assert_within(ops.attention(q, k, v, causal=causal), want, base, "cpu")
    # A bf16 cache: the stored bf16 values are the kernel's inputs. With head_dim a multiple of 16 (up to 128)
    # it runs on the tensor cores, q and the probabilities rounded to bf16: held to a naive kernel that rounds
    # alike, against float64 on the rounded q; other head sizes keep to the fp32 rule.
    k16, v16 = bf16(k), bf16(v)
    kq, vq = bf16_values(k16), bf16_values(v16)
    kd, vd = dev(k16), dev(v16)
    _C.cuda_raw.attention(qd.ptr, kd.ptr, vd.ptr, out.ptr, n, T, h, g, d, causal, 1.0 / np.sqrt(d), 2)
    if d % 16 == 0 and d <= 128:
        qq = bf16_values(bf16(q))
        want16, base16 = ref.attention(qq, kq, vq, causal=causal), naive32.attention_bf16(q, kq, vq, causal=causal)
    else:
        want16, base16 = ref.attention(q, kq, vq, causal=causal), naive32.attention(q, kq, vq, causal=causal)
    assert_within(out.fetch(), want16, base16, "cuda, bf16 cache")


@pytest.mark.parametrize("cache", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_is_batch_invariant(cache, causal):
    """A query's output does not depend on the other queries of the launch nor on how many keys follow
    it: each query of a causal block of 8 is bit-identical to that query decoded alone over its own prefix,
    across a key-chunk boundary (2048), and a bidirectional block's rows equal the same rows run in two
    halves. This is what makes self-speculation == AR hold bit for bit on the GPU."""
    n, T, h, g, d = 8, 2052, 4, 2, 64
    q = rng.standard_normal((n, h, d)).astype(np.float32)
    k = rng.standard_normal((T, g, d)).astype(np.float32)
    v = rng.standard_normal((T, g, d)).astype(np.float32)
    if cache == "bfloat16":
        k, v = bf16(k), bf16(v)
    code = dict(WEIGHT_DTYPES)[cache]
    qd, kd, vd = dev(q), dev(k), dev(v)
    block = Guarded((n, h, d))
    _C.cuda_raw.attention(qd.ptr, kd.ptr, vd.ptr, block.ptr, n, T, h, g, d, causal, 0.125, code)
    whole = block.fetch().copy()
    for i in range(n):
        if causal:                              # query i alone over keys 0..T-n+i
            T_i, rows = T - n + i + 1, [i]
        else:                                   # every key, in two halves of the block
            T_i, rows = T, (list(range(n // 2)) if i < n // 2 else list(range(n // 2, n)))
            if rows[0] != i:
                continue
        part = Guarded((len(rows), h, d))
        qi = dev(q[rows])
        _C.cuda_raw.attention(qi.ptr, kd.ptr, vd.ptr, part.ptr, len(rows), T_i if causal else T, h, g, d, causal,
                              0.125, code)
        np.testing.assert_array_equal(part.fetch(), whole[rows], err_msg=f"query {i}")


def test_swiglu():
    g = rng.standard_normal((5, 3000)).astype(np.float32) * 4
    u = rng.standard_normal((5, 3000)).astype(np.float32)
    want, base = ref.swiglu(g, u), naive32.swiglu(g, u)
    assert_within(ops.swiglu(g, u, device="cuda"), want, base, "cuda")
    assert_within(ops.swiglu(g, u), want, base, "cpu")


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("n,vocab", [(1, 256), (8, 1000), (3, 131072)])
def test_select_and_head_select(temperature, n, vocab):
    logits = (rng.standard_normal((n, vocab)) * 4).astype(np.float32)
    want_i, _ = ref_select(logits, exclude_id=100, temperature=temperature, seed=5, stream=3)
    gi, gc = ops.select(logits, exclude_id=100, temperature=temperature, seed=5, stream=3, device="cuda")
    ci, _ = ops.select(logits, exclude_id=100, temperature=temperature, seed=5, stream=3)
    np.testing.assert_array_equal(gi, want_i)
    np.testing.assert_array_equal(ci, want_i)
    assert_within(gc, softmax_at64(logits, gi), naive32.softmax_at(logits, gi), "confidence")
    hidden = 64
    x = rng.standard_normal((n, hidden)).astype(np.float32)
    w = bf16(rng.standard_normal((vocab, hidden)) / 8)
    xr = bf16_values(bf16(x))                   # bf16 weights: the CUDA head multiplies bf16-rounded x
    cpu_i, _ = _C.head_select(xr, w, 2, 100, temperature, 5, 3)
    idx, conf = Guarded((n,), np.int32), Guarded((n,))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.head_select(xd.ptr, n, wd.ptr, 2, vocab, hidden, 100, temperature, 5, 3, idx.ptr, conf.ptr)
    got_i = idx.fetch()
    np.testing.assert_array_equal(got_i, cpu_i)
    l64 = x.astype(np.float64) @ bf16_values(w).astype(np.float64).T
    assert_within(conf.fetch(), softmax_at64(l64, got_i), naive32.softmax_at(naive32.matmul(xr, bf16_values(w)), got_i))


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


@pytest.mark.parametrize("n,kv_heads,head_dim,row0", [(1, 2, 16, 0), (5, 8, 128, 37)])
def test_kv_write_and_embed(n, kv_heads, head_dim, row0):
    cap = row0 + n + 2
    chunk = rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32)
    cache = Guarded((kv_heads, cap, head_dim))
    before = cache.fetch().copy()
    cd = dev(chunk)
    _C.cuda_raw.kv_write(cache.ptr, cd.ptr, n, kv_heads, head_dim, row0, cap * head_dim)
    got = cache.fetch()
    np.testing.assert_array_equal(got[:, row0:row0 + n].transpose(1, 0, 2), chunk)
    untouched = np.ones(cap, bool)
    untouched[row0:row0 + n] = False
    np.testing.assert_array_equal(got[:, untouched].view(np.uint8), before[:, untouched].view(np.uint8))
    cache16 = Guarded((kv_heads, cap, head_dim), np.uint16)
    before = cache16.fetch().copy()
    _C.cuda_raw.kv_write(cache16.ptr, cd.ptr, n, kv_heads, head_dim, row0, cap * head_dim, 2)
    got = cache16.fetch()
    np.testing.assert_array_equal(got[:, row0:row0 + n].transpose(1, 0, 2), bf16(chunk))   # nearest even
    np.testing.assert_array_equal(got[:, untouched], before[:, untouched])
    with pytest.raises(Exception, match="float16 is not supported"):
        _C.cuda_raw.kv_write(cache16.ptr, cd.ptr, n, kv_heads, head_dim, row0, cap * head_dim, 1)
    for wname, code in WEIGHT_DTYPES:
        table, values = as_stored(rng.standard_normal((50, head_dim)).astype(np.float32), wname)
        ids = rng.integers(0, 50, n).astype(np.int32)
        out = Guarded((n, head_dim))
        td_, idd = dev(table), dev(ids)
        _C.cuda_raw.embed(td_.ptr, code, 50, head_dim, idd.ptr, n, out.ptr)
        np.testing.assert_array_equal(out.fetch(), values[ids])


# ---- every kernel and path runs (the emulator's launch log) ----

def _kernels_in_source():
    names = set()
    for f in sorted(os.listdir(os.path.join(CSRC, "cuda"))):
        if f.endswith((".cu", ".cuh")):
            with open(os.path.join(CSRC, "cuda", f), encoding="utf-8") as fh:
                names |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", fh.read()))
    return names


def test_every_kernel_and_path_runs():
    if not tridecode.cuda_emulated():
        pytest.skip("the launch log belongs to the CUDA emulator")
    emu = _C.cuda_emu
    emu.take_launches()
    emu.configure(record_launches=1)
    try:
        for k in (64, 67):                      # vectorised and scalar skinny matmul
            for wname, _ in WEIGHT_DTYPES:
                w, _ = as_stored(rng.standard_normal((24, k)).astype(np.float32), wname)
                ops.matmul(rng.standard_normal((3, k)).astype(np.float32), w, weight_dtype=wname, device="cuda")
        ops.matmul(rng.standard_normal((65, 32)).astype(np.float32), bf16(rng.standard_normal((16, 32))),
                   weight_dtype="bfloat16", device="cuda")   # tensor cores, prefill tiles
        for rows in (2, 40):                    # skinny tensor cores, split-k: the <= 32 and <= 64 row shapes
            ops.matmul(rng.standard_normal((rows, 4096)).astype(np.float32), bf16(rng.standard_normal((16, 4096))),
                       weight_dtype="bfloat16", device="cuda")
        for T in (8, 2100):                     # one key chunk, several (merged)
            q, kv = rng.standard_normal((1, 2, 16)).astype(np.float32), rng.standard_normal((T, 1, 16)).astype(np.float32)
            ops.attention(q, kv, kv, device="cuda")
        ops.rope(rng.standard_normal((2, 1, 16)).astype(np.float32), [0, 1], np.ones(8, np.float32), device="cuda")
        test_select_commits_and_accept_length(0)
        test_kv_write_and_embed(1, 2, 16, 0)
        model = tridecode.load(GOLDEN_DIR, device="cuda")          # with the LoRA drafter (axpy)
        model.generate(PROMPTS[1], mode="self_spec", max_new_tokens=4, block_length=4)
        model.generate(PROMPTS[1], mode="diffusion", max_new_tokens=4, block_length=4, temperature=0.5, seed=1)
        bf16_model = tridecode.random_model(json.load(open(f"{GOLDEN_DIR}/config.json")), device="cuda", max_context=16)
        assert bf16_model.kv_cache_dtype == "bfloat16"
        bf16_model.forward([1, 2, 3])           # attention over a bf16 cache: the tensor-core kernel
    finally:
        emu.configure(record_launches=0)
    log = emu.take_launches()
    launched = {k.split("<")[0] for k, *_ in log}
    missing = _kernels_in_source() - launched
    assert not missing, f"kernels never launched: {sorted(missing)}"
    skinny = {(k, args) for k, args, *_ in log if k.startswith("skinny_matmul")}
    assert len(skinny) == 5, f"skinny matmul variants: {sorted(skinny)}"   # fp32/fp16 vector, 3 dtypes scalar
    splits = {grid[1] for k, _, grid, *_ in log if k.startswith("tc_skinny_kernel")}
    assert 1 in splits and max(splits) > 1, splits                       # one k-chunk, several
    shapes = {re.search(r"kMF = \d+; int kNF = \d+", args).group(0) for k, args, *_ in log
              if k.startswith("tc_skinny_kernel")}
    assert len(shapes) == 2, shapes
    inputs = {re.search(r"XT = ([\w:]+)", args).group(1) for k, args, *_ in log if k.startswith("tc_skinny_kernel")}
    assert inputs == {"float", "__nv_bfloat16"}, inputs                  # fp32 x, and bf16 activations
    chunks = {grid[1] for k, _, grid, *_ in log if k.startswith("attention_tile_kernel")}
    assert 1 in chunks and max(chunks) > 1, chunks
    assert "attention_mma_kernel" in launched and "attention_tile_kernel" in launched


def test_emulator_settings_change_the_device():
    if not tridecode.cuda_emulated():
        pytest.skip("settings of the CUDA emulator")
    import subprocess
    import sys
    script = (
        "import json, numpy as np, tridecode\n"
        "from tridecode import _C, ops\n"
        "_C.cuda_emu.configure(record_launches=1)\n"
        "q = np.ones((1, 2, 16), np.float32); kv = np.ones((4097, 1, 16), np.float32)\n"
        "ops.attention(q, kv, kv, device='cuda')\n"
        "chunks = [g[1] for k, _, g, *_ in _C.cuda_emu.take_launches() if k.startswith('attention_tile')]\n"
        "print(json.dumps([_C.cuda_device_name(0), _C.cuda_raw.memory_info()[1], chunks[0]]))\n")
    out = {}
    for sms, mem in (("132", "8G"), ("1", "32M")):
        env = dict(os.environ, TD_CUDA_EMU_SM_COUNT=sms, TD_CUDA_EMU_MEMORY=mem)
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        out[sms] = json.loads(p.stdout.splitlines()[-1])
    assert "132 SMs" in out["132"][0] and "1 SMs" in out["1"][0]
    assert out["132"][1] == 8 << 30 and out["1"][1] == 32 << 20
    assert out["132"][2] == out["1"][2] == 3    # key chunks of 2048, whatever the SM count (batch invariance)
    bad = subprocess.run([sys.executable, "-c", "import tridecode; tridecode._C.cuda_device_count()"],
                         capture_output=True, text=True, env=dict(os.environ, TD_CUDA_EMU_SM_COUNT="many"))
    assert bad.returncode != 0 and "TD_CUDA_EMU_SM_COUNT=many" in bad.stderr


# ---- traffic counters (the emulator's count_traffic) ----

def test_traffic_counters_count_each_byte_a_copy_moves():
    """kv_write and swiglu touch each element once: the counters see exactly their bytes; with counting
    off, launches carry no counts."""
    if not tridecode.cuda_emulated():
        pytest.skip("traffic counters belong to the CUDA emulator")
    emu = _C.cuda_emu
    n, kv_heads, head_dim = 5, 2, 16
    cache = Guarded((kv_heads, n + 3, head_dim))
    cd = dev(rng.standard_normal((n, kv_heads, head_dim)).astype(np.float32))
    gate, up = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    emu.take_launches()
    try:
        emu.configure(count_traffic=1)
    except _C.TridecodeError as e:
        # Only the AddressSanitizer build (loaded through LD_PRELOAD) has no access instrumentation.
        assert "libasan" in os.environ.get("LD_PRELOAD", ""), f"a plain emulated build must count traffic: {e}"
        assert "cannot count traffic" in str(e)
        return
    emu.configure(record_launches=1)
    try:
        _C.cuda_raw.kv_write(cache.ptr, cd.ptr, n, kv_heads, head_dim, 1, (n + 3) * head_dim)
        ops.swiglu(gate, up, device="cuda")
        emu.configure(count_traffic=0)
        ops.swiglu(gate, up, device="cuda")
    finally:
        emu.configure(record_launches=0, count_traffic=0)
    log = [(k, t) for k, *_, t in emu.take_launches()]
    chunk = n * kv_heads * head_dim * 4
    assert log == [("kv_write_kernel", (chunk, chunk)), ("swiglu_kernel", (2 * 4000, 4000)),
                   ("swiglu_kernel", None)], log


def test_a_long_cached_context_without_its_prefill():
    """append_random_cache: the same seed gives the same cache on either backend (one counter hash), a
    forward sees it, and the room is checked."""
    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    outs = []
    for dev_name in ("cpu", "cuda"):
        m = tridecode.random_model(cfg, device=dev_name, dtype="float32", max_context=300, seed=3)
        base = m.forward([5, 6, 7], "causal", write_cache=False, logits="last")
        m.append_random_cache(200, seed=9)
        assert m.cache_length == 200
        got = m.forward([5, 6, 7], "causal", write_cache=False, logits="last")
        assert not np.allclose(got, base)
        m.reset()
        m.append_random_cache(200, seed=9)
        np.testing.assert_array_equal(m.forward([5, 6, 7], "causal", write_cache=False, logits="last"), got)
        with pytest.raises(ValueError, match="capacity is 300"):
            m.append_random_cache(101)
        outs.append(got)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)


# ---- bf16 activations between ops: the same bits as the fp32 path, half the bytes ----

@pytest.mark.parametrize("m", [1, 20, 40])
def test_bf16_activations_give_the_fp32_paths_bits(m):
    """A producer that writes bf16 (round to nearest even) and a bf16-weight product that reads it give the
    bits of the fp32 producer and the product that rounds the fp32 x itself: RMSNorm (plain and with the
    residual add), SwiGLU, attention over both caches, and the skinny tensor-core product (split-k too)."""
    k, n = 4096, 48
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal(k) * 0.5 + 1).astype(np.float32)
    wd = dev(w)
    for resid in (False, True):
        f32, b16 = Guarded((m, k)), Guarded((m, k), np.uint16)
        xa, xb, yd = dev(x), dev(x), dev(y)
        if resid:
            _C.cuda_raw.add_rms_norm(xa.ptr, yd.ptr, wd.ptr, 0, f32.ptr, m, k, 1e-5)
            _C.cuda_raw.rms_norm_bf16(xb.ptr, yd.ptr, wd.ptr, 0, b16.ptr, m, k, 1e-5)
            xa_h, xb_h = np.empty_like(x), np.empty_like(x)
            xa.download(xa_h)
            xb.download(xb_h)
            np.testing.assert_array_equal(xa_h, xb_h)      # the residual is updated alike
        else:
            _C.cuda_raw.rms_norm(xa.ptr, wd.ptr, 0, f32.ptr, m, k, 1e-5)
            _C.cuda_raw.rms_norm_bf16(xb.ptr, 0, wd.ptr, 0, b16.ptr, m, k, 1e-5)
        np.testing.assert_array_equal(b16.fetch(), bf16(f32.fetch()))
    g, u = dev(x), dev(y)
    f32, b16 = Guarded((m, k)), Guarded((m, k), np.uint16)
    _C.cuda_raw.swiglu(g.ptr, u.ptr, f32.ptr, m * k)
    _C.cuda_raw.swiglu(g.ptr, u.ptr, b16.ptr, m * k, bf16_out=True)
    np.testing.assert_array_equal(b16.fetch(), bf16(f32.fetch()))
    # the product: bf16 x against the fp32 x it was rounded from
    W = bf16(rng.standard_normal((n, k)) * 0.02)
    Wd = dev(W)
    a, b = Guarded((m, n)), Guarded((m, n))
    x32, x16, W16 = dev(x), dev(bf16(x)), dev(W.view(np.float16))
    _C.cuda_raw.matmul(x32.ptr, m, Wd.ptr, 2, n, k, a.ptr)
    _C.cuda_raw.matmul_bf16(x16.ptr, m, Wd.ptr, 2, n, k, b.ptr)
    np.testing.assert_array_equal(a.fetch(), b.fetch())
    with pytest.raises(ValueError, match="a bf16 x needs a bf16 weight"):
        _C.cuda_raw.matmul_bf16(x16.ptr, m, W16.ptr, 1, n, k, b.ptr)
    # attention, fp32 and bf16 caches, one and two key chunks
    for T, cache in ((300, 0), (300, 2), (2100, 2)):
        h, gq, d = 8, 2, 64
        nq = min(m, 8)
        q = rng.standard_normal((nq, h, d)).astype(np.float32)
        kv = rng.standard_normal((T, gq, d)).astype(np.float32)
        kvd = dev(kv if cache == 0 else bf16(kv))
        f32, b16 = Guarded((nq, h, d)), Guarded((nq, h, d), np.uint16)
        qd = dev(q)
        _C.cuda_raw.attention(qd.ptr, kvd.ptr, kvd.ptr, f32.ptr, nq, T, h, gq, d, True, 0.125, cache)
        _C.cuda_raw.attention(qd.ptr, kvd.ptr, kvd.ptr, b16.ptr, nq, T, h, gq, d, True, 0.125, cache, out_code=2)
        np.testing.assert_array_equal(b16.fetch(), bf16(f32.fetch()), err_msg=f"attention T={T} cache={cache}")

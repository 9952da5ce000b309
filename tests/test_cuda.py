"""The CUDA backend: every op against float64 and the CPU backend (the rule of tolerance.py, NaN/Inf, guard
bytes around every output), every kernel and path (the emulator's launch log), then whole models: logits
against a float64 forward, the golden cases of every mode with and without the LoRA drafter, sampling,
and self-speculation == AR at temperature 0.

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

from conftest import REQUIRE_CUDA, require_cuda_or_skip
from golden import GOLDEN_DIR, PROMPTS, cases, generate_kwargs
from reference_model import ReferenceModel
from tolerance import assert_within, naive32, norm_err, rope64, softmax_at64

GUARD = 256           # bytes of sentinel on each side of every output
SENTINEL = 0xA5
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc")

rng = np.random.default_rng(7)

with open(os.path.join(GOLDEN_DIR, "expected_lora.json"), encoding="utf-8") as _f:
    LORA_CASES = json.load(_f)["cases"]


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
                                   (257, 200, 1000)])
def test_matmul(wname, code, m, n, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w, wv = as_stored((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), wname)
    want = x.astype(np.float64) @ wv.astype(np.float64).T
    out = Guarded((m, n))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.matmul(xd.ptr, m, wd.ptr, code, n, k, out.ptr)
    if wname == "bfloat16" and m > 64:
        # The tensor-core path rounds x to bf16: its naive counterpart is an fp32 product of the bf16-rounded
        # inputs.
        base = naive32.matmul(bf16_values(bf16(x)), wv)
    else:
        base = naive32.matmul(x, wv)
    assert_within(out.fetch(), want, base, "cuda")
    assert_within(ops.matmul(x, w, weight_dtype=wname), want, naive32.matmul(x, wv), "cpu")


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


@pytest.mark.parametrize("n,heads,kv_heads,head_dim,row0", [(1, 4, 2, 16, 0), (7, 32, 8, 128, 100)])
def test_rope_kv_append(n, heads, kv_heads, head_dim, row0):
    freqs, af = inv_freq(YARN, head_dim)
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
    args = (pos, freqs, af, 0.1, 16384)
    assert_within(got_q, rope64(q, *args, True), naive32.rope(q, *args, True), "q")
    cache_k, cache_v = ck.fetch(), cv.fetch()
    assert_within(cache_k[:, row0:row0 + n].transpose(1, 0, 2), rope64(k, *args, False), naive32.rope(k, *args, False), "k")
    np.testing.assert_array_equal(cache_v[:, row0:row0 + n].transpose(1, 0, 2), v)


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
                                       (32, 1000, 8, 2, 128), (1, 8192, 32, 8, 128), (5, 600, 2, 1, 64)])
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
    cpu_i, _ = _C.head_select(x, w, 2, 100, temperature, 5, 3)
    idx, conf = Guarded((n,), np.int32), Guarded((n,))
    xd, wd = dev(x), dev(w)
    _C.cuda_raw.head_select(xd.ptr, n, wd.ptr, 2, vocab, hidden, 100, temperature, 5, 3, idx.ptr, conf.ptr)
    got_i = idx.fetch()
    np.testing.assert_array_equal(got_i, cpu_i)
    l64 = x.astype(np.float64) @ bf16_values(w).astype(np.float64).T
    assert_within(conf.fetch(), softmax_at64(l64, got_i), naive32.softmax_at(naive32.matmul(x, bf16_values(w)), got_i))


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
                   weight_dtype="bfloat16", device="cuda")   # tensor cores
        for T in (8, 600):                      # one key chunk, several
            q, kv = rng.standard_normal((1, 2, 16)).astype(np.float32), rng.standard_normal((T, 1, 16)).astype(np.float32)
            ops.attention(q, kv, kv, device="cuda")
        ops.rope(rng.standard_normal((2, 1, 16)).astype(np.float32), [0, 1], np.ones(8, np.float32), device="cuda")
        test_select_commits_and_accept_length(0)
        test_kv_write_and_embed(1, 2, 16, 0)
        model = tridecode.load(GOLDEN_DIR, device="cuda")          # with the LoRA drafter (axpy)
        model.generate(PROMPTS[1], mode="self_spec", max_new_tokens=4, block_length=4)
        model.generate(PROMPTS[1], mode="diffusion", max_new_tokens=4, block_length=4, temperature=0.5, seed=1)
        tridecode.random_model(json.load(open(f"{GOLDEN_DIR}/config.json")), device="cuda", max_context=16)
    finally:
        emu.configure(record_launches=0)
    log = emu.take_launches()
    launched = {k.split("<")[0] for k, *_ in log}
    missing = _kernels_in_source() - launched
    assert not missing, f"kernels never launched: {sorted(missing)}"
    skinny = {(k, args) for k, args, *_ in log if k.startswith("skinny_matmul_kernel")}
    assert len(skinny) == 6, f"skinny matmul variants: {sorted(skinny)}"   # 3 weight dtypes x vector/scalar
    splits = {grid[1] for k, _, grid, *_ in log if k == "attention_split_kernel"}
    assert 1 in splits and max(splits) > 1, splits


# ---- whole models ----

@pytest.fixture(scope="module")
def models():
    require_cuda_or_skip()
    return {"cpu": tridecode.load(GOLDEN_DIR, lora=None),
            "cuda": tridecode.load(GOLDEN_DIR, lora=None, device="cuda"),
            "cuda_lora": tridecode.load(GOLDEN_DIR, device="cuda")}


def test_cuda_model_reports_device_memory(models):
    assert models["cuda"].device == "cuda"
    assert models["cuda"].device_memory_bytes > models["cpu"].weight_bytes


def _chunks_against_reference(directory, cpu, gpu):
    """A 70-token causal prefill, a bidirectional block over it and a causal chunk after it. Both backends
    follow the rule; the baseline is a naive fp32 forward, with bf16 matmul inputs for the chunks the CUDA
    backend gives the tensor cores (bf16 weights, over 64 rows)."""
    truth = ReferenceModel(directory)
    naive = {"cpu": ReferenceModel(directory, naive=True), "cuda": ReferenceModel(directory, naive=True, bf16_inputs_over=64)}
    for m in (truth, cpu, gpu, *naive.values()):
        m.reset()
    for chunk, mode in ((PROMPTS[4], "causal"), ([17] + [100] * 7, "bidirectional"), (PROMPTS[1], "causal")):
        want = truth.forward(chunk, mode)
        assert_within(cpu.forward(chunk, mode=mode), want, naive["cpu"].forward(chunk, mode), f"cpu, {mode} chunk")
        assert_within(gpu.forward(chunk, mode=mode), want, naive["cuda"].forward(chunk, mode), f"cuda, {mode} chunk")
        assert gpu.cache_length == cpu.cache_length == truth.cache_length


def test_forward_logits_follow_the_rule(models):
    _chunks_against_reference(GOLDEN_DIR, models["cpu"], models["cuda"])


def _check_golden(res, case):
    n = case["args"]["max_new_tokens"]
    assert res.tokens == case["new_tokens"][:n]
    assert res.nfe == case["nfe"]
    assert res.stopped_on_eos == case["stopped_on_eos"]
    if case["mode"] == "generate":
        assert res.steps_per_block == [len(b["steps"]) for b in case["blocks"]]
    if case["mode"] == "linear_spec_generate":
        assert res.accepted_per_cycle == case["accepted_per_cycle"]
        assert res.drafts_per_cycle == [c["draft_forwards"] for c in case["cycles"]]


@pytest.mark.parametrize("case", cases("ar_generate") + cases("generate") + cases("linear_spec_generate"),
                         ids=lambda c: c["id"])
def test_golden_cases_on_cuda(models, case):
    _check_golden(models["cuda"].generate(PROMPTS[case["prompt_index"]], **generate_kwargs(case)), case)


@pytest.mark.parametrize("case", LORA_CASES, ids=lambda c: c["id"])
def test_golden_lora_cases_on_cuda(models, case):
    m = models["cuda_lora"]
    prompt, kw = PROMPTS[case["prompt_index"]], generate_kwargs(case)
    res = m.generate(prompt, **kw)
    assert res.tokens == case["new_tokens"][: kw["max_new_tokens"]]
    assert (res.nfe, res.accepted_per_cycle) == (case["nfe"], case["accepted_per_cycle"])
    without = m.generate(prompt, **kw, use_lora=False)
    assert (without.nfe, without.accepted_per_cycle) == (case["without_lora"]["nfe"],
                                                        case["without_lora"]["accepted_per_cycle"])
    assert without.tokens == res.tokens


@pytest.mark.parametrize("prompt", [0, 3])
def test_self_spec_equals_ar_on_cuda(models, prompt):
    ar = models["cuda"].generate(PROMPTS[prompt], mode="ar", max_new_tokens=24).tokens
    assert ar == models["cpu"].generate(PROMPTS[prompt], mode="ar", max_new_tokens=24).tokens
    for name in ("cuda", "cuda_lora"):
        for L in (3, 16):
            got = models[name].generate(PROMPTS[prompt], mode="self_spec", max_new_tokens=24, block_length=L).tokens
            assert got == ar, (name, L)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec"])
def test_sampling_on_cuda_equals_cpu(models, mode):
    kw = dict(mode=mode, max_new_tokens=12, temperature=0.8, seed=11)
    if mode != "ar":
        kw["block_length"] = 4
    got = models["cuda"].generate(PROMPTS[2], **kw)
    want = models["cpu"].generate(PROMPTS[2], **kw)
    assert got.tokens == want.tokens and got.nfe == want.nfe
    assert got.tokens != models["cpu"].generate(PROMPTS[2], **dict(kw, seed=12)).tokens   # the seed matters


def test_bf16_model_on_cuda(tmp_path):
    # A bf16 copy of the golden weights: CPU and CUDA compute from the same stored values.
    from checkpoints import write_checkpoint
    from safetensors.numpy import load_file
    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    d = write_checkpoint(tmp_path / "bf16", cfg, load_file(f"{GOLDEN_DIR}/model.safetensors"), dtype="BF16")
    cpu, gpu = tridecode.load(d), tridecode.load(d, device="cuda")
    _chunks_against_reference(d, cpu, gpu)
    assert gpu.generate(PROMPTS[3], max_new_tokens=16).tokens == cpu.generate(PROMPTS[3], max_new_tokens=16).tokens


def test_out_device_returns_a_cupy_array(models):
    gpu, cpu = models["cuda"], models["cpu"]
    if tridecode.cuda_emulated():
        # cupy arrays live in a real GPU's memory: the emulated build says so instead of failing later.
        with pytest.raises(ValueError, match="emulates CUDA"):
            gpu.forward(PROMPTS[2], out="device")
        return
    if not REQUIRE_CUDA:
        pytest.importorskip("cupy")
    truth = ReferenceModel(GOLDEN_DIR)
    gpu.reset()
    cpu.reset()
    dlog = gpu.forward(PROMPTS[2], out="device")
    assert type(dlog).__module__.startswith("cupy")
    assert_within(dlog.get(), truth.forward(PROMPTS[2]), cpu.forward(PROMPTS[2]))
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

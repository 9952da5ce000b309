"""The CUDA backend on whole models: logits against a float64 forward (the rule of tolerance.py), the golden
cases of every mode with and without the LoRA drafter (tokens and forward counts), seeded sampling equal to
the CPU backend's, and self-speculation == AR at temperature 0. On a GPU or the CUDA emulator (see
test_cuda.py); TRIDECODE_REQUIRE_CUDA=1 turns skips into failures."""

import json
import os

import numpy as np
import pytest

import tridecode
from tridecode import ops

from conftest import REQUIRE_CUDA, require_cuda_or_skip
from golden import GOLDEN_DIR, PROMPTS, cases, generate_kwargs
from reference_model import ReferenceModel
from tolerance import assert_within

with open(os.path.join(GOLDEN_DIR, "expected_lora.json"), encoding="utf-8") as _f:
    LORA_CASES = json.load(_f)["cases"]


@pytest.fixture(autouse=True)
def _gpu():
    require_cuda_or_skip()


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
    follow the rule; the baseline is a naive fp32 forward, with bf16 matmul inputs where a backend multiplies
    bf16 weights by bf16 activations (CUDA's tensor cores, the CPU's default compute) and bf16 K/V where the
    cache is bf16."""
    truth = ReferenceModel(directory)
    rounds = 0 if cpu.compute_dtype == "auto" else None   # the CPU rounds bf16 products' inputs too, by default
    naive = {"cpu": ReferenceModel(directory, naive=True, bf16_inputs_over=rounds),
             "cuda": ReferenceModel(directory, naive=True, bf16_inputs_over=0,
                                    bf16_cache=gpu.kv_cache_dtype == "bfloat16")}
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
    gpu32 = tridecode.load(d, device="cuda", kv_cache_dtype="float32")
    assert (cpu.kv_cache_dtype, gpu.kv_cache_dtype, gpu32.kv_cache_dtype) == ("float32", "bfloat16", "float32")
    assert gpu.device_memory_bytes < gpu32.device_memory_bytes          # the cache is half the size
    for g in (gpu, gpu32):
        _chunks_against_reference(d, cpu, g)
    ar = gpu.generate(PROMPTS[3], max_new_tokens=16).tokens
    assert ar == cpu.generate(PROMPTS[3], max_new_tokens=16).tokens
    for L in (3, 16):                            # bit-identical verify rows: self-spec == AR on a bf16 cache too
        assert gpu.generate(PROMPTS[3], mode="self_spec", max_new_tokens=16, block_length=L).tokens == ar


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


def test_two_models_on_the_device_from_two_threads(models):
    # The CUDA backend's scratch is shared by every model on it: concurrent forwards must not interleave.
    import threading
    a, b = models["cuda"], tridecode.load(GOLDEN_DIR, lora=None, device="cuda")
    want = {p: models["cpu"].generate(PROMPTS[p], max_new_tokens=12, mode="self_spec", block_length=4).tokens
            for p in (1, 2)}
    errors = []

    def work(m, p):
        try:
            for _ in range(3):
                assert m.generate(PROMPTS[p], max_new_tokens=12, mode="self_spec", block_length=4).tokens == want[p]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(a, 1)), threading.Thread(target=work, args=(b, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors[0]


def _bf16_config():
    return dict(json.load(open(f"{GOLDEN_DIR}/config.json")), torch_dtype="bfloat16")


def test_forwards_of_up_to_64_tokens_allocate_nothing(models):
    """Once a model is loaded, decode steps, verify and diffusion blocks and short prefills reuse reserved
    device memory (no cudaMalloc / cudaFree inside a forward); a longer chunk grows the buffers once."""
    from tridecode import _C
    bf16 = tridecode.random_model(_bf16_config(), device="cuda", dtype="bfloat16", max_context=3000)
    runs = [(models["cuda_lora"], "self_spec"), (models["cuda_lora"], "diffusion"), (models["cuda"], "ar"),
            (bf16, "self_spec"), (bf16, "ar")]
    before = _C.cuda_raw.allocation_counts()
    for m, mode in runs:
        m.generate(PROMPTS[3], mode=mode, max_new_tokens=12, **({} if mode == "ar" else {"block_length": 8}))
    bf16.reset()
    bf16.append_random_cache(2500, seed=1)       # attention over several key chunks: reserved for the capacity
    bf16.generate([5, 6, 7], mode="self_spec", max_new_tokens=8, block_length=4)
    assert _C.cuda_raw.allocation_counts() == before
    bf16.reset()
    bf16.forward(list(range(1, 101)))            # 100 tokens: past the reservation
    assert _C.cuda_raw.allocation_counts()[0] > before[0]


def test_launches_per_forward():
    """A decode step of a bf16 model: embed and norm, 9 launches per layer (stacked q/k/v, RoPE + cache
    append, attention, o, residual + norm, stacked gate/up, SwiGLU, down, residual + norm), and the fused
    LM head + sampler (product, two selection passes)."""
    if not tridecode.cuda_emulated():
        pytest.skip("the launch log belongs to the CUDA emulator")
    from tridecode import _C
    cfg = _bf16_config()
    m = tridecode.random_model(cfg, device="cuda", dtype="bfloat16", max_context=64)
    m.forward([1, 2, 3])
    emu = _C.cuda_emu
    emu.take_launches()
    emu.configure(record_launches=1)
    try:
        m.forward_select([4], "causal", write_cache=False, logits="last")
        decode = [k.split("<")[0] for k, *_ in emu.take_launches()]
        m.forward_select(list(range(5, 21)), "bidirectional", write_cache=False)
        block = [k.split("<")[0] for k, *_ in emu.take_launches()]
    finally:
        emu.configure(record_launches=0)
    layers = cfg["num_hidden_layers"]
    assert len(decode) == len(block) == 2 + 9 * layers + 3, decode
    assert decode.count("tc_skinny_kernel") == 4 * layers + 1    # every bf16 product on the tensor cores
    # The second run of a shape records its layer stack as a graph: from then on a forward is one graph
    # launch (embed, norm and the 9 per layer) plus the head's 3 kernels launched directly.
    for shape in (([4], "causal", "last"), (list(range(5, 21)), "bidirectional", "all")):
        ids, pattern, logits = shape
        m.forward_select(ids, pattern, write_cache=False, logits=logits)   # records, then replays
        before = emu.counters()
        m.forward_select(ids, pattern, write_cache=False, logits=logits)
        after = emu.counters()
        got = {k: after[k] - before[k] for k in after}
        assert got == {"graph_launches": 1, "graph_kernels": 2 + 9 * layers, "eager_kernels": 3}, (pattern, got)
    assert m.cuda_graph_count == 2


def _same_generations(a, b, prompt, **kw):
    for mode in ("ar", "diffusion", "self_spec"):
        extra = {} if mode == "ar" else {"block_length": 4}
        ra, rb = a.generate(prompt, mode=mode, **kw, **extra), b.generate(prompt, mode=mode, **kw, **extra)
        assert (ra.tokens, ra.nfe) == (rb.tokens, rb.nfe), mode


def _same_forwards(a, b, chunks):
    """Each chunk three times on both models (eager, then recorded and replayed on a graph model): the
    logits are the same bits."""
    for ids, mode in chunks:
        for _ in range(3):
            np.testing.assert_array_equal(a.forward(ids, mode=mode, write_cache=False),
                                          b.forward(ids, mode=mode, write_cache=False))


def test_cuda_graphs_give_the_eager_bits(models):
    """Replayed graphs compute what the ops launched one by one do, bit for bit: the golden checkpoint with
    and without its drafter (fp32, exact against the golden data through test_golden_cases_on_cuda, which
    runs with graphs on), and a bf16 model over one and several key chunks of its bf16 cache."""
    eager = tridecode.load(GOLDEN_DIR, device="cuda", cuda_graphs=False)
    graph = models["cuda_lora"]
    assert graph.cuda_graphs and not eager.cuda_graphs
    for m in (eager, graph):
        m.reset()
        m.forward(PROMPTS[4])
    _same_forwards(eager, graph, [([7], "causal"), ([7, 8, 9, 10], "causal"), ([17] + [100] * 7, "bidirectional")])
    _same_generations(eager, graph, PROMPTS[2], max_new_tokens=16)
    _same_generations(eager, graph, PROMPTS[2], max_new_tokens=12, temperature=0.8, seed=5)
    assert graph.cuda_graph_count > 0 and eager.cuda_graph_count == 0

    pair = [tridecode.random_model(_bf16_config(), device="cuda", dtype="bfloat16", max_context=3000, seed=3,
                                   cuda_graphs=on) for on in (False, True)]
    for ctx in (40, 2500):                       # one key chunk, then two (the graph covers the capacity)
        for m in pair:
            m.reset()
            m.append_random_cache(ctx, seed=1)
        _same_forwards(*pair, [([5], "causal"), ([5, 6, 7, 8], "causal"), ([9] * 8, "bidirectional")])
        _same_generations(*pair, [5, 6, 7], max_new_tokens=10)
    assert pair[1].cuda_graph_count > 0


def test_cuda_graphs_are_recorded_again_when_what_they_name_changes(models):
    """A graph names device buffers: after any backend memory was freed (another model dropped, a buffer
    grown) or the adapter changed, a model records its graphs again instead of replaying stale pointers (the
    emulator faults on a freed buffer), and the results stay those of the eager forwards."""
    import gc
    eager = models["cuda_lora"]
    m = tridecode.load(GOLDEN_DIR, device="cuda")
    kw = dict(mode="self_spec", max_new_tokens=16, block_length=4)
    want = eager.generate(PROMPTS[1], **kw).tokens
    assert m.generate(PROMPTS[1], **kw).tokens == want
    assert m.cuda_graph_count > 0
    other = tridecode.load(GOLDEN_DIR, device="cuda", max_context=4096)
    other.generate(PROMPTS[2], max_new_tokens=4)
    del other
    gc.collect()
    assert m.cuda_graph_count == 0               # freed memory: nothing recorded is trusted
    assert m.generate(PROMPTS[1], **kw).tokens == want
    assert m.cuda_graph_count > 0
    m.forward(list(range(1, 101)))               # past the reservation: the activations grow
    m.reset()
    assert m.generate(PROMPTS[1], **kw).tokens == want
    lora = m.lora.path
    m.detach_lora()
    assert m.cuda_graph_count == 0
    m.attach_lora(lora)
    assert m.generate(PROMPTS[1], **kw).tokens == want
    m.cuda_graphs = False
    assert m.cuda_graph_count == 0
    assert m.generate(PROMPTS[1], **kw).tokens == want


def test_cuda_graphs_keep_the_shapes_in_use():
    """A model keeps at most 8 graphs: a new shape replaces the one used least recently, and every replay
    still gives the eager bits."""
    pair = [tridecode.random_model(_bf16_config(), device="cuda", dtype="bfloat16", max_context=256, seed=4,
                                   cuda_graphs=on) for on in (False, True)]
    eager, graph = pair
    for n in range(1, 11):                       # ten chunk lengths, each twice: recorded on the second
        ids = list(range(1, n + 1))
        for _ in range(2):
            np.testing.assert_array_equal(eager.forward(ids, write_cache=False), graph.forward(ids, write_cache=False))
    assert graph.cuda_graph_count == 8
    _same_forwards(eager, graph, [([1], "causal"), ([3, 4, 5, 6], "bidirectional")])   # evicted ones come back
    assert graph.cuda_graph_count == 8


def test_bf16_activations_change_no_bit(models):
    """A bf16 model's forwards exchange bf16 activations where the next product rounds its input anyway:
    logits, generations and graph replays are the bits of the same model with fp32 activations throughout."""
    pair = [tridecode.random_model(_bf16_config(), device="cuda", dtype="bfloat16", max_context=3000, seed=6)
            for _ in range(2)]
    pair[1]._native.bf16_activations = False
    assert pair[0]._native.bf16_activations
    for ctx in (30, 2200):
        for m in pair:
            m.reset()
            m.append_random_cache(ctx, seed=2)
        _same_forwards(*pair, [([5], "causal"), ([5, 6, 7, 8], "causal"), ([9] * 16, "bidirectional"),
                               (list(range(1, 70)), "causal")])   # 69 rows: past the skinny path, fp32 again
        _same_generations(*pair, [5, 6, 7], max_new_tokens=8)
    lora = [tridecode.load(GOLDEN_DIR, device="cuda") for _ in range(2)]   # fp32 weights: nothing changes
    lora[1]._native.bf16_activations = False
    _same_generations(*lora, PROMPTS[1], max_new_tokens=8)


def test_cuda_refuses_int8_weights_and_fp32_compute():
    from tridecode import _C
    from tridecode.config import load_config
    from tridecode.loader import load_weights, native_config
    with pytest.raises(ValueError, match="dtype='int8' needs device='cpu'"):
        tridecode.load(GOLDEN_DIR, device="cuda", dtype="int8")
    with pytest.raises(ValueError, match="compute_dtype='float32' needs device='cpu'"):
        tridecode.load(GOLDEN_DIR, device="cuda", compute_dtype="float32")
    cfg = load_config(GOLDEN_DIR)
    weights, _, _ = load_weights(GOLDEN_DIR, cfg, "int8")
    with pytest.raises(tridecode.NativeError, match="no int8 kernels"):   # the native model refuses too
        _C.Model(native_config(cfg), weights, 64, "cuda")

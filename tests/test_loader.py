"""tridecode.load: checkpoint formats, dtypes, sharding, memory mapping, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy

import tridecode
from tridecode import CheckpointError, loader
from tridecode.errors import ArgumentTypeError

import checkpoints as ck

GOLDEN = ck.GOLDEN_DIR
NORM = "encoder.norm.weight"          # a small (hidden,) tensor of the small nld checkpoint
DOWN1 = "encoder.layers.1.mlp.down_proj.weight"
Q0 = "encoder.layers.0.self_attn.q_proj.weight"


# ---------------------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------------------

def expect_error(fn, *fragments, error=ValueError, **kwargs):
    """Calls fn(**kwargs); it must raise `error` whose message contains every fragment (plain substrings)."""
    with pytest.raises(error, match=re.escape(fragments[0])) as info:
        fn(**kwargs)
    msg = str(info.value)
    for frag in fragments[1:]:
        assert frag in msg, f"{frag!r} not in error message {msg!r}"
    return info.value


def expect_load_error(directory, *fragments, **load_kwargs):
    """tridecode.load must raise a CheckpointError naming every fragment."""
    load_kwargs.setdefault("max_context", 32)
    err = expect_error(tridecode.load, *fragments, path=directory, **load_kwargs)
    assert isinstance(err, CheckpointError), f"{type(err).__name__} is not a CheckpointError: {err}"
    return err


def find_memmap(arr):
    """The numpy.memmap an array is a view of (walking .base), or None."""
    a = arr
    while a is not None:
        if isinstance(a, np.memmap) and getattr(a, "_mmap", None) is not None:
            return a
        a = a.base if isinstance(a, np.ndarray) else None
    return None


def prompts():
    return json.loads(open(os.path.join(GOLDEN, "expected.json")).read())["prompts"]


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(GOLDEN, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def golden():
    return tridecode.load(GOLDEN)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The golden weights re-saved as F16, BF16, and as three F32 shards."""
    root = tmp_path_factory.mktemp("golden-variants")
    return {
        "F16": ck.copy_golden(root / "f16", dtype="F16"),
        "BF16": ck.copy_golden(root / "bf16", dtype="BF16"),
        "sharded": ck.copy_golden(root / "sharded", shards=3),
    }


@pytest.fixture
def small(tmp_path):
    """A valid small nld checkpoint in a fresh directory (one F32 file)."""
    return ck.write_random_checkpoint(tmp_path / "ckpt", ck.nld_config(), seed=1)


@pytest.fixture
def small_sharded(tmp_path):
    return ck.write_random_checkpoint(tmp_path / "ckpt", ck.nld_config(), seed=1, shards=3)


def logits_of(model, prompt):
    model.reset()
    out = model.forward(prompt)
    model.reset()
    return out


# ---------------------------------------------------------------------------------------------------------
# loading: the golden checkpoint and its re-saved variants
# ---------------------------------------------------------------------------------------------------------

def test_golden_config_and_weights(golden):
    c = golden.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers) == ("nemotron_labs_diffusion", 64, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert (c.intermediate_size, c.vocab_size, c.mask_token_id) == (128, 256, 100)
    assert c.eos_token_ids == (11,) and c.bos_token_id == 1
    assert c.rope.rope_type == "yarn" and c.rope.factor == 16.0
    assert golden.tied_embeddings is False
    assert golden.max_context == 4096
    assert len(golden._weights) == 9 * 2 + 3
    ref = ck.golden_tensors()
    pairs = {"embed": "encoder.embed_tokens.weight", "head": "diffusion_head.weight", "final_norm": NORM,
             "layers.1.down": DOWN1, "layers.0.k": "encoder.layers.0.self_attn.k_proj.weight"}
    for native, hf in pairs.items():
        arr, code = golden._weights[native]
        assert code == 0 and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, ref[hf])
    assert golden.weight_bytes == sum(a.nbytes for a in ref.values())


def test_kv_cache_dtype_argument(golden):
    assert golden.kv_cache_dtype == "float32"
    assert tridecode.load(GOLDEN, lora=None, kv_cache_dtype="float32").kv_cache_dtype == "float32"
    with pytest.raises(ValueError, match="kv_cache_dtype='bfloat16' needs device='cuda'"):
        tridecode.load(GOLDEN, kv_cache_dtype="bfloat16")
    for bad in ("fp8", "float16", None, 2):
        with pytest.raises(ValueError, match="load: kv_cache_dtype must be"):
            tridecode.load(GOLDEN, kv_cache_dtype=bad)
    cfg = json.load(open(os.path.join(GOLDEN, "config.json")))
    m = tridecode.random_model(cfg, max_context=8)
    assert m.kv_cache_dtype == "float32"
    with pytest.raises(ValueError, match="random_model: kv_cache_dtype='bfloat16' needs"):
        tridecode.random_model(cfg, max_context=8, kv_cache_dtype="bfloat16")


def test_cuda_graphs_argument(golden):
    assert golden.cuda_graphs and golden.cuda_graph_count == 0       # a setting; the CPU records nothing
    m = tridecode.load(GOLDEN, lora=None, cuda_graphs=False)
    assert not m.cuda_graphs
    m.cuda_graphs = True
    m.generate([1, 2, 3], max_new_tokens=4)
    assert m.cuda_graphs and m.cuda_graph_count == 0
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="load: cuda_graphs must be True or False"):
            tridecode.load(GOLDEN, cuda_graphs=bad)
        with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
            m.cuda_graphs = bad
    cfg = json.load(open(os.path.join(GOLDEN, "config.json")))
    with pytest.raises(TypeError, match="random_model: cuda_graphs must be"):
        tridecode.random_model(cfg, max_context=8, cuda_graphs="no")


def test_golden_logits_match_reference(golden, expected):
    ref = safetensors.numpy.load_file(os.path.join(GOLDEN, "numerics.safetensors"))["causal_prefill.logits"]
    out = logits_of(golden, expected["numerics"]["prompt"])
    assert out.shape == ref.shape == (13, 256)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-4)


def test_golden_ar_greedy_matches_reference(golden, expected):
    cases = [c for c in expected["cases"] if c["mode"] == "ar_generate"]
    assert len(cases) >= 10
    for case in cases:
        res = golden.generate(expected["prompts"][case["prompt_index"]], mode="ar",
                              max_new_tokens=case["args"]["max_new_tokens"],
                              eos_token_id=case["args"]["eos_token_id"])
        assert res.tokens == case["new_tokens"], case["id"]


@pytest.mark.parametrize("dtype, code, storage, rel_tol", [("F16", 1, np.float16, 3e-3),
                                                           ("BF16", 2, np.uint16, 2e-2)])
def test_reduced_precision_copies_are_close(golden, variants, dtype, code, storage, rel_tol):
    model = tridecode.load(variants[dtype])
    arr, c = model._weights["layers.0.q"]
    assert c == code and arr.dtype == storage
    # the stored bits are exactly the rounded golden weights (round to nearest even)
    want = ck.round_to(ck.golden_tensors()[Q0], dtype)
    got = ck.bf16_bits_to_f32(arr) if dtype == "BF16" else arr.astype(np.float32)
    np.testing.assert_array_equal(got, want)
    for p in prompts()[1:4]:
        ref, out = logits_of(golden, p), logits_of(model, p)
        err = np.abs(out - ref).max()
        assert err <= rel_tol * np.abs(ref).max(), f"{dtype}: max |diff| {err} vs max |logit| {np.abs(ref).max()}"
        assert err > 0, f"{dtype}: logits identical to float32, the weights were not rounded"


def test_bf16_converted_to_float32_at_load_is_exact(variants):
    as_stored = tridecode.load(variants["BF16"], compute_dtype="float32")   # fp32 products, as for fp32 weights
    widened = tridecode.load(variants["BF16"], dtype="float32")
    arr, code = widened._weights["layers.1.gate"]
    assert code == 0 and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, ck.bf16_bits_to_f32(as_stored._weights["layers.1.gate"][0]))
    for p in prompts():
        np.testing.assert_array_equal(logits_of(widened, p), logits_of(as_stored, p))


@pytest.mark.parametrize("alias, dtype", [("bfloat16", "BF16"), ("bf16", "BF16"), ("float16", "F16"),
                                          ("half", "F16")])
def test_narrowing_at_load_matches_saved_file(variants, alias, dtype):
    """Converting float32 weights at load rounds exactly as saving them in that dtype does."""
    converted = tridecode.load(GOLDEN, dtype=alias)
    saved = tridecode.load(variants[dtype])
    for name, (arr, code) in saved._weights.items():
        carr, ccode = converted._weights[name]
        assert ccode == code, name
        np.testing.assert_array_equal(carr.view(arr.dtype), arr, err_msg=name)
    for p in prompts()[:3]:
        np.testing.assert_array_equal(logits_of(converted, p), logits_of(saved, p))


def test_sharded_matches_single_file(golden, variants, expected):
    directory = variants["sharded"]
    shards = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    assert shards == ck.shard_names(3)
    assert not os.path.exists(os.path.join(directory, "model.safetensors"))
    model = tridecode.load(directory)
    used = {os.path.basename(find_memmap(a).filename) for a, _ in model._weights.values()}
    assert used == set(shards)
    for p in expected["prompts"]:
        np.testing.assert_array_equal(logits_of(model, p), logits_of(golden, p))
    for case in expected["cases"]:
        if case["mode"] != "ar_generate" or case["args"]["max_new_tokens"] != 24:
            continue
        prompt = expected["prompts"][case["prompt_index"]]
        kw = dict(mode="ar", max_new_tokens=24, eos_token_id=case["args"]["eos_token_id"])
        a, b = model.generate(prompt, **kw), golden.generate(prompt, **kw)
        assert a.tokens == b.tokens == case["new_tokens"], case["id"]


def test_tied_llama_without_lm_head(tmp_path):
    cfg = ck.llama_config(tie_word_embeddings=True)
    tensors = ck.random_tensors(cfg, seed=3)
    assert "lm_head.weight" not in tensors
    tied = tridecode.load(ck.write_checkpoint(tmp_path / "tied", cfg, tensors), max_context=64)
    assert tied.tied_embeddings is True
    embed, head = tied._weights["embed"][0], tied._weights["head"][0]
    assert np.shares_memory(embed, head)
    # the same model with an explicit lm_head equal to the embeddings gives the same logits
    untied_cfg = ck.llama_config(tie_word_embeddings=False)
    explicit = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})
    untied = tridecode.load(ck.write_checkpoint(tmp_path / "untied", untied_cfg, explicit), max_context=64)
    assert untied.tied_embeddings is False
    p = [1, 5, 9, 33, 60, 2]
    out = logits_of(tied, p)
    assert out.shape == (6, 64) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, logits_of(untied, p))
    # and differs from a model whose head is not the embedding matrix
    other = dict(explicit, **{"lm_head.weight": ck.random_tensors(untied_cfg, seed=4)["lm_head.weight"]})
    different = tridecode.load(ck.write_checkpoint(tmp_path / "other", untied_cfg, other), max_context=64)
    assert not np.array_equal(logits_of(different, p), out)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "ministral3"])
def test_llama_family_untied(tmp_path, model_type):
    cfg = ck.llama_config(model_type)
    model = tridecode.load(ck.write_random_checkpoint(tmp_path / model_type, cfg), max_context=64)
    assert model.config.model_type == model_type and model.tied_embeddings is False
    assert model.config.mask_token_id is None
    out = logits_of(model, [1, 2, 3])
    assert out.shape == (3, 64) and np.isfinite(out).all()
    assert len(model.generate([1, 2, 3], max_new_tokens=4, eos_token_id=[]).tokens) == 4


def test_rotary_inv_freq_tensors_are_ignored(tmp_path):
    cfg = ck.llama_config()
    tensors = ck.random_tensors(cfg, seed=2)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    base = tridecode.load(ck.write_random_checkpoint(tmp_path / "a", cfg, seed=2), max_context=16)
    extra = tridecode.load(ck.write_checkpoint(tmp_path / "b", cfg, tensors), max_context=16)
    np.testing.assert_array_equal(logits_of(extra, [3, 4]), logits_of(base, [3, 4]))


def test_unaligned_data_section_is_loaded_or_refused_clearly(tmp_path, small):
    """A header whose length is not a multiple of the element size leaves every tensor unaligned. The
    loader may copy, or refuse with a message naming the file and a tensor; either way nothing crashes."""
    path = os.path.join(small, "model.safetensors")
    header, data = ck.read_raw(path)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((-len(text) % 8) + 2)            # length = 2 (mod 8)
    ck.write_raw(path, text.encode(), data)
    ref = tridecode.load(ck.write_random_checkpoint(tmp_path / "ref", ck.nld_config(), seed=1), max_context=16)
    try:
        model = tridecode.load(small, max_context=16)
    except ValueError as e:
        assert "model.safetensors" in str(e) and re.search(r"tensor \S+", str(e)), str(e)
        assert "align" in str(e), str(e)
    else:
        np.testing.assert_array_equal(logits_of(model, [1, 2, 3]), logits_of(ref, [1, 2, 3]))


# ---------------------------------------------------------------------------------------------------------
# memory mapping
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["golden", "F16", "BF16", "sharded"])
def test_weights_are_views_of_memory_maps(variants, variant):
    directory = GOLDEN if variant == "golden" else variants[variant]
    model = tridecode.load(directory)
    files = {os.path.realpath(os.path.join(directory, f)) for f in os.listdir(directory)
             if f.endswith(".safetensors")}
    assert len(model._weights) == 21
    for name, (arr, _) in model._weights.items():
        mm = find_memmap(arr)
        assert mm is not None, f"{name} is not a view of a numpy.memmap"
        assert os.path.realpath(mm.filename) in files, name
        assert not arr.flags.owndata and not arr.flags.writeable, name
        assert arr.flags.c_contiguous, name


def test_conversion_at_load_copies(variants):
    model = tridecode.load(variants["BF16"], dtype="float32")
    for name, (arr, code) in model._weights.items():
        assert code == 0 and find_memmap(arr) is None, name


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A ~17 MB float32 checkpoint (4 layers, hidden 256, vocab 4096)."""
    cfg = ck.nld_config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64, intermediate_size=512, vocab_size=4096, mask_token_id=4095)
    d = ck.write_random_checkpoint(tmp_path_factory.mktemp("big") / "ckpt", cfg, seed=5)
    size = ck.checkpoint_bytes(d)
    assert 15e6 < size < 20e6
    return d, size


def peak_during(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_load_does_not_copy_weights(big_checkpoint):
    directory, size = big_checkpoint
    model, peak = peak_during(lambda: tridecode.load(directory, max_context=64, hugepages=False))
    assert peak < 0.25 * size, f"peak Python allocation {peak} bytes during load of a {size}-byte checkpoint"
    assert model.weight_bytes > 0.99 * size - 100_000
    assert np.isfinite(logits_of(model, [1, 2, 3])).all()
    # control: a load that does copy (narrowing to float16) is visible to the same measurement
    _, copying_peak = peak_during(lambda: tridecode.load(directory, dtype="float16", max_context=64))
    assert copying_peak > 0.4 * size, copying_peak


# ---------------------------------------------------------------------------------------------------------
# huge pages
# ---------------------------------------------------------------------------------------------------------

needs_thp = pytest.mark.skipif(not loader.hugepages_available(),
                               reason=f"no transparent huge pages ({loader.THP_SETTING}: {loader.thp_mode()})")


def mapping_of(arr) -> dict:
    """The /proc/self/smaps entry (header fields and key: value lines) of the mapping holding arr's data."""
    addr = arr.ctypes.data
    entry = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                if entry is not None:
                    return entry
                lo, hi = int(head.group(1), 16), int(head.group(2), 16)
                entry = {"range": (lo, hi)} if lo <= addr < hi else None
            elif entry is not None and ":" in line:
                key, value = line.split(":", 1)
                entry[key] = value.strip()
    assert entry is not None, f"no mapping holds address {addr:#x}"
    return entry


@needs_thp
def test_hugepages_copy_streamed_weights_and_keep_logits(big_checkpoint):
    directory, _ = big_checkpoint
    mapped = tridecode.load(directory, max_context=64, hugepages=False)
    huge = tridecode.load(directory, max_context=64, hugepages=True)
    assert set(huge._weights) == set(mapped._weights)
    arenas = set()
    for name, (arr, code) in huge._weights.items():
        m_arr, m_code = mapped._weights[name]
        assert code == m_code and arr.dtype == m_arr.dtype and arr.shape == m_arr.shape, name
        np.testing.assert_array_equal(arr, m_arr, err_msg=name)
        assert find_memmap(m_arr) is not None, name
        if name == "embed":                 # read a row at a time: stays mapped from the file
            assert find_memmap(arr) is not None
            continue
        assert find_memmap(arr) is None, f"{name} is still a view of the checkpoint file"
        assert not arr.flags.writeable and arr.flags.c_contiguous, name
        assert arr.ctypes.data % 64 == 0, name
        entry = mapping_of(arr)
        assert "hg" in entry["VmFlags"].split(), f"{name}: mapping not advised MADV_HUGEPAGE: {entry['VmFlags']}"
        arenas.add(entry["range"])
    assert len(arenas) == 1, f"streamed weights in {len(arenas)} mappings, expected one"
    lo, hi = arenas.pop()
    assert hi - lo >= huge.weight_bytes - mapped._weights["embed"][0].nbytes
    for p in prompts()[:3] + [[1, 2, 3, 4, 5]]:
        np.testing.assert_array_equal(logits_of(huge, p), logits_of(mapped, p))
    for mode in ("ar", "diffusion", "self_spec"):
        kw = dict(mode=mode, max_new_tokens=12, eos_token_id=None)
        assert huge.generate([5, 6, 7], **kw).tokens == mapped.generate([5, 6, 7], **kw).tokens, mode


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_thp
def test_hugepages_are_released_with_the_model(big_checkpoint):
    import gc

    directory, _ = big_checkpoint
    copy = None
    for i in range(12):
        m = tridecode.load(directory, max_context=64, hugepages=True)
        logits_of(m, [1, 2, 3])
        copy = copy or sum(a.nbytes for name, (a, _) in m._weights.items() if name != "embed")
        del m
        gc.collect()
        if i == 1:
            before = rss_bytes()
    grown = rss_bytes() - before
    assert grown < 2 * copy, f"RSS grew {grown / 2**20:.1f} MiB over 10 loads of {copy / 2**20:.1f} MiB copies"


@needs_thp
def test_hugepages_keep_int8_and_converted_weights(big_checkpoint):
    directory, _ = big_checkpoint
    for dtype in ("int8", "bfloat16"):
        a = tridecode.load(directory, max_context=64, dtype=dtype, hugepages=False)
        b = tridecode.load(directory, max_context=64, dtype=dtype, hugepages=True)
        for name, t in a._weights.items():
            for x, y in zip(t, b._weights[name]):
                if isinstance(x, np.ndarray):
                    np.testing.assert_array_equal(x, y, err_msg=f"{dtype} {name}")
                else:
                    assert x == y, name
        np.testing.assert_array_equal(logits_of(a, [3, 1, 4, 1, 5]), logits_of(b, [3, 1, 4, 1, 5]))


@needs_thp
def test_hugepages_by_default_past_the_threshold(big_checkpoint, monkeypatch):
    directory, _ = big_checkpoint
    streamed = sum(a.nbytes for name, (a, _) in tridecode.load(directory, max_context=64)._weights.items()
                   if name != "embed")
    monkeypatch.setattr(loader, "HUGEPAGES_MIN_BYTES", streamed)
    at = tridecode.load(directory, max_context=64)
    assert find_memmap(at._weights["layers.1.down"][0]) is None
    monkeypatch.setattr(loader, "HUGEPAGES_MIN_BYTES", streamed + 1)
    below = tridecode.load(directory, max_context=64)
    assert find_memmap(below._weights["layers.1.down"][0]) is not None
    # the golden checkpoints (kilobytes) stay mapped: test_weights_are_views_of_memory_maps


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]\n", "never"), ("garbage", None)])
def test_thp_mode_reads_the_bracketed_setting(tmp_path, text, mode):
    f = tmp_path / "enabled"
    f.write_text(text)
    assert loader.thp_mode(str(f)) == mode
    assert loader.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("text", ["always madvise [never]\n", None])
def test_hugepages_without_kernel_support(big_checkpoint, tmp_path, monkeypatch, text):
    directory, _ = big_checkpoint
    setting = tmp_path / "enabled"
    if text is not None:
        setting.write_text(text)
    monkeypatch.setattr(loader, "THP_SETTING", str(setting))
    monkeypatch.setattr(loader, "HUGEPAGES_MIN_BYTES", 1)
    expect_error(tridecode.load, "hugepages=True needs transparent huge pages", str(setting),
                 "[never]" if text else "is not there", path=directory, max_context=64, hugepages=True)
    model = tridecode.load(directory, max_context=64)     # the default falls back to the file mapping
    assert find_memmap(model._weights["layers.1.down"][0]) is not None


@needs_thp
def test_hugepages_only_where_memory_allows(big_checkpoint, monkeypatch):
    directory, _ = big_checkpoint
    monkeypatch.setattr(loader, "HUGEPAGES_MIN_BYTES", 1)
    monkeypatch.setattr(loader, "available_memory", lambda: 8 << 20)     # less than 4/3 of the ~13 MB copy
    expect_error(tridecode.load, "hugepages=True copies 0.01 GiB of weights", "0.01 GiB of memory is available",
                 "hugepages=False", error=MemoryError, path=directory, max_context=64, hugepages=True)
    assert find_memmap(tridecode.load(directory, max_context=64)._weights["layers.1.down"][0]) is not None
    monkeypatch.setattr(loader, "available_memory", lambda: None)        # unknown: no limit
    assert find_memmap(tridecode.load(directory, max_context=64)._weights["layers.1.down"][0]) is None


def test_available_memory_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    assert loader.available_memory(str(f)) == 2048 * 1024
    f.write_text("MemTotal:       24000000 kB\n")
    assert loader.available_memory(str(f)) is None
    assert loader.available_memory(str(tmp_path / "missing")) is None
    assert loader.available_memory() > 0


@pytest.mark.parametrize("bad", ["on", 1, "auto", [True]])
def test_hugepages_must_be_a_flag(bad):
    expect_error(tridecode.load, "load: hugepages must be True or False", error=ArgumentTypeError,
                 path=GOLDEN, hugepages=bad)


def test_hugepages_are_a_cpu_option():
    expect_error(tridecode.load, "hugepages=True is a CPU option", path=GOLDEN, device="cuda", hugepages=True)


# ---------------------------------------------------------------------------------------------------------
# errors: tensors
# ---------------------------------------------------------------------------------------------------------

def test_missing_tensor(small):
    path = os.path.join(small, "model.safetensors")
    tensors = ck.read_tensors(path)
    del tensors[DOWN1]
    safetensors.numpy.save_file(tensors, path)
    expect_load_error(small, DOWN1, "missing", small)


def test_missing_head_of_tri_mode_model_even_if_tied(tmp_path):
    cfg = ck.nld_config(tie_word_embeddings=True)
    tensors = ck.random_tensors(cfg)
    del tensors["diffusion_head.weight"]
    d = ck.write_checkpoint(tmp_path / "c", cfg, tensors)
    expect_load_error(d, "diffusion_head.weight", "missing")


def test_missing_lm_head_untied_llama(tmp_path):
    cfg = ck.llama_config()
    d = ck.write_checkpoint(tmp_path / "c", cfg, ck.random_tensors(cfg, include_head=False))
    expect_load_error(d, "lm_head.weight", "missing")


def test_missing_tensor_in_shards(small_sharded):
    idx_path = os.path.join(small_sharded, ck.INDEX_NAME)
    index = json.load(open(idx_path))
    fname = index["weight_map"].pop(Q0)
    path = os.path.join(small_sharded, fname)
    tensors = ck.read_tensors(path)
    del tensors[Q0]
    safetensors.numpy.save_file(tensors, path)
    ck.write_index(small_sharded, index["weight_map"])
    expect_load_error(small_sharded, Q0, "missing")


def test_unexpected_tensor(small):
    path = os.path.join(small, "model.safetensors")
    tensors = ck.read_tensors(path)
    tensors["encoder.layers.2.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    safetensors.numpy.save_file(tensors, path)
    expect_load_error(small, "model.safetensors", "encoder.layers.2.mlp.up_proj.weight", "unexpected")


def test_unexpected_tensor_names_its_shard(small_sharded):
    fname = ck.shard_names(3)[1]
    path = os.path.join(small_sharded, fname)
    tensors = ck.read_tensors(path)
    tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(tensors, path)
    index = json.load(open(os.path.join(small_sharded, ck.INDEX_NAME)))["weight_map"]
    index["encoder.extra.weight"] = fname
    ck.write_index(small_sharded, index)
    expect_load_error(small_sharded, fname, "encoder.extra.weight", "unexpected")


@pytest.mark.parametrize("tensor, bad_shape, good_shape", [
    (Q0, (32, 16), (32, 32)),
    (NORM, (33,), (32,)),
    ("encoder.embed_tokens.weight", (64, 32, 1), (64, 32)),
    ("encoder.layers.1.self_attn.k_proj.weight", (32, 32), (16, 32)),
    ("diffusion_head.weight", (32, 64), (64, 32)),
])
def test_wrong_shape(small, tensor, bad_shape, good_shape):
    path = os.path.join(small, "model.safetensors")
    tensors = ck.read_tensors(path)
    tensors[tensor] = np.zeros(bad_shape, np.float32)
    safetensors.numpy.save_file(tensors, path)
    err = expect_load_error(small, "model.safetensors", tensor)
    msg = str(err).replace(" ", "")
    assert str(list(bad_shape)).replace(" ", "") in msg, str(err)
    assert str(list(good_shape)).replace(" ", "") in msg, str(err)


def test_wrong_shape_names_its_shard(small_sharded):
    index = json.load(open(os.path.join(small_sharded, ck.INDEX_NAME)))["weight_map"]
    fname = index[DOWN1]
    path = os.path.join(small_sharded, fname)
    tensors = ck.read_tensors(path)
    tensors[DOWN1] = np.zeros((32, 47), np.float32)
    safetensors.numpy.save_file(tensors, path)
    expect_load_error(small_sharded, fname, DOWN1, "[32, 47]", "[32, 48]")


@pytest.mark.parametrize("dtype", ["I64", "F64", "I32", "U8", "BOOL"])
def test_unsupported_dtype(small, dtype):
    path = os.path.join(small, "model.safetensors")
    tensors = ck.read_tensors(path)
    ck.write_tensors_raw(path, tensors, {k: (dtype if k == NORM else "F32") for k in tensors})
    expect_load_error(small, "model.safetensors", NORM, dtype)


def test_unknown_dtype_string(small):
    path = os.path.join(small, "model.safetensors")
    ck.rewrite_header(path, lambda h: h[NORM].update(dtype="Q4_K"))
    expect_load_error(small, "model.safetensors", NORM, "Q4_K")


def test_unsupported_dtype_in_bf16_checkpoint(tmp_path):
    cfg = ck.nld_config()
    tensors = ck.random_tensors(cfg)
    dtypes = {k: "BF16" for k in tensors}
    dtypes[DOWN1] = "F64"
    d = tmp_path / "c"
    os.makedirs(d)
    ck.write_config(d, cfg)
    ck.write_tensors_raw(d / "model.safetensors", tensors, dtypes)
    expect_load_error(str(d), "model.safetensors", DOWN1, "F64")


def test_mixed_dtypes_load(tmp_path, small):
    """Supported dtypes may be mixed within a file (each tensor keeps its own)."""
    tensors = ck.read_tensors(os.path.join(small, "model.safetensors"))
    dtypes = {k: ("F16" if "mlp" in k else "BF16" if "attn" in k else "F32") for k in tensors}
    d = tmp_path / "mixed"
    os.makedirs(d)
    ck.write_config(d, ck.nld_config())
    ck.write_tensors_raw(d / "model.safetensors", tensors, dtypes)
    model = tridecode.load(str(d), max_context=16)
    assert model._weights["layers.0.gate"][1] == 1 and model._weights["layers.0.q"][1] == 2
    assert model._weights["final_norm"][1] == 0
    assert np.isfinite(logits_of(model, [1, 2, 3])).all()


# ---------------------------------------------------------------------------------------------------------
# errors: corrupt safetensors files
# ---------------------------------------------------------------------------------------------------------

def _last_tensor(path):
    header, _ = ck.read_raw(path)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    return max(entries, key=lambda k: entries[k]["data_offsets"][1]), entries


@pytest.mark.parametrize("where", ["empty", "prefix", "prefix-only", "header", "data", "last-byte"])
def test_truncated_file(small, where):
    path = os.path.join(small, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    last, entries = _last_tensor(path)
    begin, end = entries[last]["data_offsets"]
    cut = {"empty": 0, "prefix": 5, "prefix-only": 8, "header": 8 + hlen // 2,
           "data": 8 + hlen + (begin + end) // 2, "last-byte": len(blob) - 1}[where]
    with open(path, "wb") as f:
        f.write(blob[:cut])
    err = expect_load_error(small, "model.safetensors", "truncated")
    if where in ("data", "last-byte"):
        assert last in str(err)


@pytest.mark.parametrize("header, fragment", [
    (b"{not json at all}      ", "JSON"),
    (b'{"a": {"dtype": "F32", ', "JSON"),
    (b"[1, 2, 3]", "object"),
    (b'"a string"', "object"),
    (b"null", "object"),
    (b"\xff\xfe\x00\x01 binary", "header"),
    (b"", "header"),
])
def test_malformed_header(small, header, fragment):
    path = os.path.join(small, "model.safetensors")
    _, data = ck.read_raw(path)
    ck.write_raw(path, header, data)
    expect_load_error(small, "model.safetensors", "malformed", fragment)


@pytest.mark.parametrize("key", ["data_offsets", "dtype", "shape"])
def test_header_entry_missing_key(small, key):
    ck.rewrite_header(os.path.join(small, "model.safetensors"), lambda h: h[NORM].pop(key))
    expect_load_error(small, "model.safetensors", NORM, key)


@pytest.mark.parametrize("entry", [None, [1, 2], "F32", 7])
def test_header_entry_not_an_object(small, entry):
    ck.rewrite_header(os.path.join(small, "model.safetensors"), lambda h: h.__setitem__(NORM, entry))
    expect_load_error(small, "model.safetensors", NORM, "malformed")


@pytest.mark.parametrize("key, value", [
    ("shape", [32.0]), ("shape", [-32]), ("shape", "32"), ("shape", [True]),
    ("data_offsets", [0]), ("data_offsets", [0, 128, 256]), ("data_offsets", [0.0, 128.0]),
    ("data_offsets", "0-128"), ("data_offsets", [None, 128]),
])
def test_header_entry_bad_values(small, key, value):
    ck.rewrite_header(os.path.join(small, "model.safetensors"), lambda h: h[NORM].__setitem__(key, value))
    expect_load_error(small, "model.safetensors", NORM, key.split("_")[-1])


@pytest.mark.parametrize("dtype", [["F32"], {"name": "F32"}, 32])
def test_header_dtype_not_a_string(small, dtype):
    ck.rewrite_header(os.path.join(small, "model.safetensors"), lambda h: h[NORM].__setitem__("dtype", dtype))
    expect_load_error(small, "model.safetensors", NORM, "dtype")


def test_header_shape_dimension_too_large(small):
    ck.rewrite_header(os.path.join(small, "model.safetensors"), lambda h: h[NORM].__setitem__("shape", [2 ** 70]))
    expect_load_error(small, "model.safetensors", NORM, "shape")


def test_oversized_header_length(small):
    path = os.path.join(small, "model.safetensors")
    header, data = ck.read_raw(path)
    ck.write_raw(path, header, data, header_len=100 * 1024 * 1024 + 8)
    assert os.path.getsize(path) < 1_000_000
    expect_load_error(small, "model.safetensors", "header", str(100 * 1024 * 1024 + 8))


@pytest.mark.parametrize("extra", [1, 1000, 50_000_000])
def test_header_length_beyond_file(small, extra):
    path = os.path.join(small, "model.safetensors")
    header, data = ck.read_raw(path)
    size = os.path.getsize(path)
    ck.write_raw(path, header, data, header_len=size - 8 + extra)
    err = expect_load_error(small, "model.safetensors", "header length")
    assert "file size" in str(err) or "truncated" in str(err), str(err)


def _norm_entry(path):
    header, data = ck.read_raw(path)
    return header[NORM]["data_offsets"], len(data)


def test_offsets_out_of_range(small):
    path = os.path.join(small, "model.safetensors")
    (_, _), size = _norm_entry(path)
    ck.rewrite_header(path, lambda h: h[NORM].__setitem__("data_offsets", [size - 64, size + 64]))
    expect_load_error(small, "model.safetensors", NORM, "data_offsets", "range")


def test_offsets_far_out_of_range(small):
    path = os.path.join(small, "model.safetensors")
    ck.rewrite_header(path, lambda h: h[NORM].__setitem__("data_offsets", [2 ** 62, 2 ** 62 + 128]))
    expect_load_error(small, "model.safetensors", NORM, "data_offsets")


@pytest.mark.parametrize("span", [4092, 4100, 8192, 0])
def test_offsets_span_does_not_match_shape(small, span):
    path = os.path.join(small, "model.safetensors")
    header, data = ck.read_raw(path)
    begin = header[Q0]["data_offsets"][0]
    assert begin + span <= len(data)
    ck.rewrite_header(path, lambda h: h[Q0].__setitem__("data_offsets", [begin, begin + span]))
    expect_load_error(small, "model.safetensors", Q0, f"{span} bytes", "4096")


def test_offsets_reversed(small):
    path = os.path.join(small, "model.safetensors")
    (begin, end), _ = _norm_entry(path)
    ck.rewrite_header(path, lambda h: h[NORM].__setitem__("data_offsets", [end, begin]))
    expect_load_error(small, "model.safetensors", NORM, "data_offsets")


def test_negative_offsets(small):
    path = os.path.join(small, "model.safetensors")
    ck.rewrite_header(path, lambda h: h[NORM].__setitem__("data_offsets", [-128, 0]))
    expect_load_error(small, "model.safetensors", NORM, "data_offsets")


def test_corrupt_shard_names_the_shard(small_sharded):
    fname = ck.shard_names(3)[2]
    path = os.path.join(small_sharded, fname)
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[:len(blob) - 10])
    expect_load_error(small_sharded, fname, "truncated")


# ---------------------------------------------------------------------------------------------------------
# errors: sharded index, files and directories
# ---------------------------------------------------------------------------------------------------------

def test_index_points_to_missing_shard(small_sharded):
    fname = ck.shard_names(3)[1]
    os.remove(os.path.join(small_sharded, fname))
    expect_load_error(small_sharded, fname, ck.INDEX_NAME)


def test_index_shard_lacks_tensor(small_sharded):
    index = json.load(open(os.path.join(small_sharded, ck.INDEX_NAME)))["weight_map"]
    actual = index[DOWN1]
    wrong = next(f for f in ck.shard_names(3) if f != actual)
    index[DOWN1] = wrong
    ck.write_index(small_sharded, index)
    expect_load_error(small_sharded, DOWN1, wrong)


def test_shard_holds_tensor_not_in_index(small_sharded):
    index = json.load(open(os.path.join(small_sharded, ck.INDEX_NAME)))["weight_map"]
    fname = index.pop(NORM)
    ck.write_index(small_sharded, index)
    expect_load_error(small_sharded, fname, NORM, ck.INDEX_NAME)


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "JSON"),
    ("[]", "weight_map"),
    ('{"metadata": {}}', "weight_map"),
    ('{"weight_map": {}}', "weight_map"),
    ('{"weight_map": [1, 2]}', "weight_map"),
])
def test_malformed_index(small_sharded, content, fragment):
    with open(os.path.join(small_sharded, ck.INDEX_NAME), "w") as f:
        f.write(content)
    expect_load_error(small_sharded, ck.INDEX_NAME, fragment)


def test_index_not_utf8(small_sharded):
    with open(os.path.join(small_sharded, ck.INDEX_NAME), "wb") as f:
        f.write(b'{"weight_map": {"\xff": 1}}')
    expect_load_error(small_sharded, ck.INDEX_NAME)


@pytest.mark.parametrize("target", ["../model.safetensors", "/etc/passwd", 3, None, "sub/x.safetensors"])
def test_index_bad_file_names(small_sharded, target):
    index = json.load(open(os.path.join(small_sharded, ck.INDEX_NAME)))["weight_map"]
    index[NORM] = target
    ck.write_index(small_sharded, index)
    expect_load_error(small_sharded, ck.INDEX_NAME, NORM)


def test_no_safetensors_file(tmp_path):
    d = tmp_path / "c"
    os.makedirs(d)
    ck.write_config(d, ck.nld_config())
    with open(d / "pytorch_model.bin", "wb") as f:
        f.write(b"\0" * 16)
    expect_load_error(str(d), str(d), "model.safetensors")


def test_missing_config(small):
    os.remove(os.path.join(small, "config.json"))
    expect_load_error(small, "config.json", small)


def test_path_is_not_a_directory(small, tmp_path):
    expect_load_error(os.path.join(small, "model.safetensors"), "model.safetensors", "directory")
    expect_load_error(str(tmp_path / "does-not-exist"), "does-not-exist")


@pytest.mark.parametrize("content", ["{", "not json", '{"hidden_size": 32,}', ""])
def test_config_not_json(small, content):
    ck.write_config(small, content)
    expect_load_error(small, "config.json", "JSON")


@pytest.mark.parametrize("content", ["[]", "3", '"nld"', "null"])
def test_config_not_an_object(small, content):
    ck.write_config(small, content)
    expect_load_error(small, "config.json", "object")


def test_config_not_utf8(small):
    with open(os.path.join(small, "config.json"), "wb") as f:
        f.write(b'{"model_type": "nemotron_labs_diffusion", "name": "\xff\xfe"}')
    expect_load_error(small, "config.json")


# ---------------------------------------------------------------------------------------------------------
# errors: config.json keys
# ---------------------------------------------------------------------------------------------------------

DROP = object()
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128}

CONFIG_CASES = [
    # missing keys
    ("missing-hidden", {"hidden_size": DROP}, ["hidden_size"]),
    ("missing-layers", {"num_hidden_layers": DROP}, ["num_hidden_layers"]),
    ("missing-vocab", {"vocab_size": DROP}, ["vocab_size"]),
    ("missing-intermediate", {"intermediate_size": DROP}, ["intermediate_size"]),
    ("missing-heads", {"num_attention_heads": DROP}, ["num_attention_heads"]),
    ("missing-mask", {"mask_token_id": DROP}, ["mask_token_id"]),
    ("null-mask", {"mask_token_id": None}, ["mask_token_id"]),
    ("null-hidden", {"hidden_size": None}, ["hidden_size"]),
    ("missing-rope-theta", {"rope_theta": DROP}, ["rope_theta"]),
    ("missing-model-type", {"model_type": DROP}, ["model_type"]),
    # inconsistent heads / head_dim
    ("heads-not-divisible", {"num_key_value_heads": 3}, ["num_attention_heads", "num_key_value_heads"]),
    ("kv-more-than-heads", {"num_key_value_heads": 8}, ["num_key_value_heads"]),
    ("odd-head-dim", {"head_dim": 7}, ["head_dim"]),
    ("odd-derived-head-dim", {"head_dim": DROP, "hidden_size": 36}, ["head_dim"]),
    ("hidden-not-divisible", {"head_dim": DROP, "hidden_size": 30}, ["hidden_size", "num_attention_heads"]),
    # sizes: negative, zero, non-integer
    ("negative-hidden", {"hidden_size": -32}, ["hidden_size", "-32"]),
    ("zero-layers", {"num_hidden_layers": 0}, ["num_hidden_layers"]),
    ("zero-vocab", {"vocab_size": 0}, ["vocab_size"]),
    ("zero-kv-heads", {"num_key_value_heads": 0}, ["num_key_value_heads"]),
    ("negative-intermediate", {"intermediate_size": -1}, ["intermediate_size"]),
    ("zero-head-dim", {"head_dim": 0}, ["head_dim"]),
    ("float-hidden", {"hidden_size": 32.0}, ["hidden_size", "32.0"]),
    ("string-layers", {"num_hidden_layers": "2"}, ["num_hidden_layers"]),
    ("bool-heads", {"num_attention_heads": True}, ["num_attention_heads"]),
    ("float-vocab", {"vocab_size": 64.5}, ["vocab_size"]),
    ("list-intermediate", {"intermediate_size": [48]}, ["intermediate_size"]),
    ("zero-max-pos", {"max_position_embeddings": 0}, ["max_position_embeddings"]),
    ("negative-eps", {"rms_norm_eps": -1e-5}, ["rms_norm_eps"]),
    ("nan-eps", {"rms_norm_eps": float("nan")}, ["rms_norm_eps"]),
    ("zero-theta", {"rope_theta": 0}, ["rope_theta"]),
    # unsupported architecture / features
    ("model-type-gpt2", {"model_type": "gpt2"}, ["model_type", "gpt2"]),
    ("model-type-case", {"model_type": "Llama"}, ["model_type", "Llama"]),
    ("model-type-list", {"model_type": ["llama"]}, ["model_type"]),
    ("rope-linear", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
     ["rope", "linear"]),
    ("rope-longrope", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, ["rope", "longrope"]),
    ("rope-scaling-dynamic", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, ["rope", "dynamic"]),
    ("rope-parameters-list", {"rope_parameters": [1, 2]}, ["rope_parameters"]),
    ("rope-scaling-list", {"rope_scaling": [1, 2]}, ["rope_scaling"]),
    ("rope-scaling-string", {"rope_scaling": "yarn"}, ["rope_scaling"]),
    ("act-gelu", {"hidden_act": "gelu"}, ["hidden_act", "gelu"]),
    ("attention-bias", {"attention_bias": True}, ["attention_bias"]),
    ("mlp-bias", {"mlp_bias": True}, ["mlp_bias"]),
    # token ids outside the vocabulary
    ("eos-at-vocab", {"eos_token_id": 64}, ["eos_token_id", "64"]),
    ("eos-negative", {"eos_token_id": -1}, ["eos_token_id"]),
    ("eos-list", {"eos_token_id": [2, 999]}, ["eos_token_id", "999"]),
    ("eos-float", {"eos_token_id": 2.0}, ["eos_token_id"]),
    ("bos-outside", {"bos_token_id": 64}, ["bos_token_id"]),
    ("mask-outside", {"mask_token_id": 64}, ["mask_token_id"]),
    # yarn parameters
    ("yarn-factor-zero", {"rope_parameters": dict(YARN, factor=0.0)}, ["factor"]),
    ("yarn-factor-string", {"rope_parameters": dict(YARN, factor="4")}, ["factor"]),
    ("yarn-orig-zero-no-factor",
     {"rope_parameters": {k: v for k, v in dict(YARN, original_max_position_embeddings=0).items() if k != "factor"}},
     ["original_max_position_embeddings"]),
    ("yarn-orig-negative", {"rope_parameters": dict(YARN, original_max_position_embeddings=-5)},
     ["original_max_position_embeddings"]),
    ("yarn-orig-string-no-factor",
     {"rope_parameters": {k: v for k, v in dict(YARN, original_max_position_embeddings="x").items()
                          if k != "factor"}},
     ["original_max_position_embeddings"]),
    ("yarn-mscale-string", {"rope_parameters": dict(YARN, mscale="a", mscale_all_dim=1.0)}, ["mscale"]),
    ("yarn-beta-fast-string", {"rope_parameters": dict(YARN, beta_fast="x")}, ["beta_fast"]),
    ("yarn-theta-one", {"rope_parameters": dict(YARN, rope_theta=1.0)}, ["rope_theta"]),
    ("llama4-beta-string", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                "llama_4_scaling_beta": "x"}}, ["llama_4_scaling_beta"]),
]


@pytest.mark.parametrize("overrides, fragments", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(small, overrides, fragments):
    cfg = ck.nld_config()
    for k, v in overrides.items():
        if v is DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    if "rope_parameters" in overrides:
        cfg.pop("rope_theta", None)
    ck.write_config(small, cfg)
    expect_load_error(small, "config.json", *fragments)


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": DROP}, {"eos_token_id": [2, 3]}, {"eos_token_id": None}, {"bos_token_id": None},
    {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}},
    {"rope_parameters": YARN, "rope_theta": DROP}, {"head_dim": DROP}, {"rms_norm_eps": DROP},
    {"max_position_embeddings": DROP}, {"hidden_act": DROP},
])
def test_config_variants_that_load(tmp_path, overrides):
    """Valid spellings the config parser accepts."""
    cfg = ck.nld_config()
    for k, v in overrides.items():
        if v is DROP:
            cfg.pop(k)
        else:
            cfg[k] = v
    model = tridecode.load(ck.write_random_checkpoint(tmp_path / "c", cfg), max_context=16)
    assert np.isfinite(logits_of(model, [1, 2])).all()


# ---------------------------------------------------------------------------------------------------------
# errors: arguments of tridecode.load
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int4", "float64", "fp8", "", 16, np.float32, ["float32"]])
def test_bad_dtype_argument(small, dtype):
    expect_error(tridecode.load, "dtype", path=small, dtype=dtype, max_context=16)


@pytest.mark.parametrize("dtype", [None, "auto", "float32", "FP32", "bf16", "BFloat16", "f16", "half"])
def test_dtype_aliases(small, dtype):
    model = tridecode.load(small, dtype=dtype, max_context=16)
    want = {None: 0, "auto": 0, "float32": 0, "FP32": 0, "bf16": 2, "BFloat16": 2, "f16": 1, "half": 1}[dtype]
    assert {code for _, code in model._weights.values()} == {want}


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu", "CPU", "", None, 0])
def test_bad_device_argument(small, device):
    if device == "cuda" and tridecode.cuda_available():
        pytest.skip("'cuda' is a valid device here (a GPU or the CUDA emulator)")
    expect_error(tridecode.load, "device", path=small, device=device)


@pytest.mark.parametrize("max_context", [0, -1, 1.5, 16.0, "64", True, [16], 2 ** 31, 2 ** 64])
def test_bad_max_context_argument(small, max_context):
    err = expect_error(tridecode.load, "max_context", path=small, max_context=max_context)
    assert len(str(err)) < 500, f"message of {len(str(err))} characters"


def test_argument_errors_do_not_hide_checkpoint_errors(tmp_path):
    """A bad directory is reported as such, whatever the other arguments."""
    expect_load_error(str(tmp_path / "nope"), "nope", dtype="float32")


# ---------------------------------------------------------------------------------------------------------
# KV-cache capacity
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def capped(small):
    return tridecode.load(small, max_context=16)


def test_capacity_default_and_explicit(small, capped):
    assert capped.max_context == 16
    assert tridecode.load(small).max_context == min(512, 4096)
    assert tridecode.load(GOLDEN, max_context=100).max_context == 100


def test_forward_beyond_capacity(capped):
    expect_error(capped.forward, "capacity", "16", token_ids=list(range(1, 18)))
    assert capped.cache_length == 0
    out = capped.forward(list(range(1, 17)))
    assert out.shape == (16, 64) and capped.cache_length == 16
    expect_error(capped.forward, "capacity", token_ids=[5])
    assert capped.cache_length == 16


def test_forward_in_chunks_beyond_capacity(capped):
    capped.forward(list(range(1, 11)))
    expect_error(capped.forward, "capacity", "16", token_ids=list(range(1, 8)))
    assert capped.cache_length == 10
    capped.forward(list(range(1, 7)))
    assert capped.cache_length == 16
    capped.crop(12)
    capped.forward([1, 2, 3, 4])
    capped.reset()
    assert capped.forward(list(range(1, 17))).shape == (16, 64)


def test_generate_beyond_capacity(capped):
    prompt = list(range(1, 11))
    expect_error(capped.generate, "capacity", "16", prompt=prompt, max_new_tokens=8, eos_token_id=[])
    res = capped.generate(prompt, max_new_tokens=7, eos_token_id=[])   # 10 + 7 - 1 = 16 cached tokens
    assert len(res.tokens) == 7
    expect_error(capped.generate, "capacity", prompt=list(range(1, 18)), max_new_tokens=1)


def test_capacity_one(small):
    model = tridecode.load(small, max_context=1)
    assert model.forward([1]).shape == (1, 64)
    expect_error(model.forward, "capacity", token_ids=[2])
    assert len(model.generate([1], max_new_tokens=1).tokens) == 1
    expect_error(model.generate, "capacity", prompt=[1], max_new_tokens=2, eos_token_id=[])

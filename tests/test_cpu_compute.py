"""Whole models on the CPU's compute paths: bf16 weights times bf16-rounded activations (the default) or fp32
activations (compute_dtype="float32"), each against a float64 forward by the rule of tolerance.py; every
kernel set on the golden cases and on self-spec == AR; and int8 weights (load(..., dtype="int8")): what is
quantized, the bytes, top-1 agreement with the unquantized model over held-out text, self-spec == AR."""

import glob
import json
import os

import numpy as np
import pytest

import tridecode
from tridecode import _C

from checkpoints import write_checkpoint
from golden import GOLDEN_DIR, PROMPTS, cases, generate_kwargs
from reference_model import ReferenceModel
from tolerance import assert_within

SHIPPED = tridecode.default_model_path()
GENERATE_DIR = os.path.join(os.path.dirname(tridecode.__file__), "generate")


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    from safetensors.numpy import load_file
    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    return write_checkpoint(tmp_path_factory.mktemp("bf16"), cfg, load_file(f"{GOLDEN_DIR}/model.safetensors"),
                            dtype="BF16")


@pytest.fixture
def each_set(request):
    before = _C.cpu_paths()["kernels"]
    yield _C.cpu_kernel_sets()
    _C.use_cpu_kernels(before)


@pytest.mark.parametrize("compute", ["auto", "float32"])
def test_bf16_model_follows_the_rule(bf16_dir, compute):
    model = tridecode.load(bf16_dir, compute_dtype=compute)
    assert model.compute_dtype == compute
    truth = ReferenceModel(bf16_dir)
    naive = ReferenceModel(bf16_dir, naive=True, bf16_inputs_over=0 if compute == "auto" else None)
    for chunk, mode in ((PROMPTS[4], "causal"), ([17] + [100] * 7, "bidirectional"), (PROMPTS[1], "causal")):
        assert_within(model.forward(chunk, mode=mode), truth.forward(chunk, mode), naive.forward(chunk, mode),
                      f"{compute}, {mode}")


def test_compute_dtype_changes_the_products(bf16_dir):
    a = tridecode.load(bf16_dir).forward(PROMPTS[4])
    b = tridecode.load(bf16_dir, compute_dtype="float32").forward(PROMPTS[4])
    assert not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    # fp32 weights: the option changes nothing
    g = tridecode.load(GOLDEN_DIR, lora=None).forward(PROMPTS[4])
    np.testing.assert_array_equal(g, tridecode.load(GOLDEN_DIR, lora=None, compute_dtype="float32").forward(PROMPTS[4]))
    with pytest.raises(ValueError, match="compute_dtype must be 'auto' or 'float32'"):
        tridecode.load(bf16_dir, compute_dtype="bfloat16")


def test_every_kernel_set_runs_the_golden_cases(each_set):
    model = tridecode.load(GOLDEN_DIR)
    picked = [cases("ar_generate")[0], cases("generate")[0], cases("linear_spec_generate")[0]]
    for name in each_set:
        _C.use_cpu_kernels(name)
        for case in picked:
            res = model.generate(PROMPTS[case["prompt_index"]], **generate_kwargs(case))
            assert res.tokens == case["new_tokens"][:case["args"]["max_new_tokens"]], (name, case["id"])


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_self_spec_equals_ar_on_every_kernel_set(bf16_dir, each_set, dtype):
    model = tridecode.load(bf16_dir, dtype="int8" if dtype == "int8" else None, lora=None)
    for name in each_set:
        _C.use_cpu_kernels(name)
        ar = model.generate(PROMPTS[3], max_new_tokens=24).tokens
        for L in (3, 16):
            assert model.generate(PROMPTS[3], mode="self_spec", max_new_tokens=24, block_length=L).tokens == ar, (
                name, L)


def test_int8_load_quantizes_the_products():
    fp = tridecode.load(SHIPPED, lora=None)
    q = tridecode.load(SHIPPED, dtype="int8", lora=None)
    kinds = q.weight_dtypes
    assert kinds["head"] == kinds["layers.0.q"] == kinds["layers.3.down"] == "int8"
    assert kinds["embed"] == kinds["final_norm"] == kinds["layers.0.in_norm"] == "float32"
    c = fp.config
    products = c.vocab_size * c.hidden_size + c.num_hidden_layers * sum(
        int(np.prod(fp._weights[f"layers.0.{n}"][0].shape)) for n in ("q", "k", "v", "o", "gate", "up", "down"))
    # the products go from 4 bytes a weight to 1 + 2 / 32 (a bf16 scale per 32); the rest stays fp32
    assert c.hidden_size % 32 == 0 and c.intermediate_size % 32 == 0
    assert q.weight_bytes == fp.weight_bytes - 4 * products + products + products // 16
    with pytest.raises(ValueError, match="int8 weights are made by quantizing a checkpoint"):
        tridecode.random_model(json.load(open(f"{SHIPPED}/config.json")), dtype="int8")


def test_int8_top1_agrees_with_the_unquantized_model():
    fp = tridecode.load(SHIPPED, lora=None)
    q = tridecode.load(SHIPPED, dtype="int8", lora=None)
    # the held-out text, then Python source of this package (the model writes Python)
    texts = [os.path.join(SHIPPED, "heldout.txt"), *sorted(glob.glob(os.path.join(GENERATE_DIR, "*.py")))]
    ids = [t for path in texts for t in fp.encode(open(path, encoding="utf-8").read())][:4096]
    agree = total = 0
    for start in range(0, len(ids) - 512 + 1, 512):      # 8 windows of 512 positions
        chunk = ids[start:start + 512]
        fp.reset()
        q.reset()
        a, b = fp.forward(chunk).argmax(-1), q.forward(chunk).argmax(-1)
        agree += int((a == b).sum())
        total += a.size
    assert total == 4096
    assert agree / total >= 0.99, f"top-1 agreement {agree / total:.4f}"


def test_cli_int8_and_compute_dtype_match_the_api(bf16_dir):
    import subprocess
    import sys
    for flags, kw, path in ((["--dtype", "int8"], dict(dtype="int8"), GOLDEN_DIR),
                            (["--compute-dtype", "float32"], dict(compute_dtype="float32"), bf16_dir)):
        out = subprocess.run([sys.executable, "-m", "tridecode", "generate", str(path), "--ids",
                              ",".join(map(str, PROMPTS[2])), "--max-new-tokens", "12", *flags],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        want = tridecode.load(path, **kw).generate(PROMPTS[2], max_new_tokens=12).tokens
        assert out.stdout.strip().splitlines()[-1] == ",".join(map(str, want))


def test_version_names_the_cpu_paths():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "tridecode", "--version"], capture_output=True, text=True, timeout=60)
    p = _C.cpu_paths()
    assert out.returncode == 0
    assert (f"cpu kernels: {p['kernels']} (bf16 products: {p['bf16']}, int8 products: {p['int8']}, "
            f"amx: {p['amx']})") in out.stdout

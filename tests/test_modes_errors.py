"""Diffusion / self-speculation: parameter validation, the LoRA drafter (loading, errors, effect) and the
Gumbel-max token selector they sample with."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import safetensors.numpy

import tridecode
import tridecode.reference as ref
from tridecode import _C, ops

from checkpoints import GOLDEN_DIR, copy_golden, llama_config, write_random_checkpoint

ADAPTER_DIR = os.path.join(GOLDEN_DIR, "linear_spec_lora")
MASK = 100
VOCAB = 256
LAYERS = 2
HIDDEN = 64
RANK = 4

with open(os.path.join(GOLDEN_DIR, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)
with open(os.path.join(GOLDEN_DIR, "expected_lora.json"), encoding="utf-8") as _f:
    EXPECTED_LORA = json.load(_f)

PROMPTS = EXPECTED["prompts"]
PROMPT = PROMPTS[1]            # 5 tokens


def lora_name(layer, part, module="o_proj"):
    return f"base_model.model.encoder.layers.{layer}.self_attn.{module}.{part}.weight"


@pytest.fixture(scope="module")
def model():
    """The golden model with its LoRA drafter attached (lora="auto")."""
    return tridecode.load(GOLDEN_DIR)


@pytest.fixture(scope="module")
def model_nolora():
    return tridecode.load(GOLDEN_DIR, lora=None)


class ForwardCounter:
    """Wraps a model's forward entry points (instance attributes) and counts the calls."""

    def __init__(self, m, monkeypatch):
        self.calls = 0
        for name in ("forward", "forward_select"):
            inner = getattr(m, name)

            def wrapped(*args, _inner=inner, **kwargs):
                self.calls += 1
                return _inner(*args, **kwargs)

            monkeypatch.setattr(m, name, wrapped)


# ---------------------------------------------------------------------------------------------------------
# 1. generate() parameters of diffusion / self_spec
# ---------------------------------------------------------------------------------------------------------

NAN = float("nan")

COMMON_BAD = [
    (dict(block_length=0), r"\bblock_length\b"),
    (dict(block_length=1), r"\bblock_length\b"),
    (dict(block_length=-4), r"\bblock_length\b"),
    (dict(block_length=2.5), r"\bblock_length\b"),
    (dict(block_length=True), r"\bblock_length\b"),
    (dict(block_length="8"), r"\bblock_length\b"),
    (dict(temperature=-0.1), r"\btemperature\b"),
    (dict(temperature=NAN), r"\btemperature\b"),
    (dict(temperature=float("inf")), r"\btemperature\b"),
    (dict(temperature="1"), r"\btemperature\b"),
    (dict(max_new_tokens=0), r"\bmax_new_tokens\b"),
    (dict(max_new_tokens=-2), r"\bmax_new_tokens\b"),
    (dict(max_new_tokens=3.0), r"\bmax_new_tokens\b"),
    (dict(top_k=5, temperature=1.0), r"\btop_k\b"),
    (dict(top_p=0.9, temperature=1.0), r"\btop_p\b"),
    (dict(top_k=1), r"\btop_k\b"),
    (dict(eos_token_id=256), r"\beos_token_id\b"),
    (dict(eos_token_id=[11, -1]), r"\beos_token_id\b"),
    (dict(seed="7", temperature=1.0), r"\bseed\b"),
    (dict(prompt=[1, 256]), r"prompt\[1\] = 256 is outside the vocabulary"),
    (dict(prompt=[1, 2, -1]), r"prompt\[2\] = -1 is outside the vocabulary"),
    (dict(prompt=[1, MASK, 3]), r"prompt\[1\] is the mask token id 100"),
    (dict(prompt=[MASK]), r"mask token id 100"),
    (dict(prompt=[]), r"prompt is empty"),
    (dict(prompt=[[1, 2]]), r"prompt must be 1-D"),
    (dict(prompt=[1.0, 2.0]), r"prompt must hold integers"),
]

DIFFUSION_BAD = [
    (dict(threshold=0), r"\bthreshold\b"),
    (dict(threshold=0.0), r"\bthreshold\b"),
    (dict(threshold=-0.1), r"\bthreshold\b"),
    (dict(threshold=1.5), r"\bthreshold\b"),
    (dict(threshold=1.0000001), r"\bthreshold\b"),
    (dict(threshold="0.9"), r"\bthreshold\b"),
    (dict(threshold=True), r"\bthreshold\b"),
    (dict(threshold=NAN), r"\bthreshold\b"),
    (dict(threshold=None, steps=0), r"\bsteps\b"),
    (dict(threshold=None, steps=-1), r"\bsteps\b"),
    (dict(threshold=None, steps=8), r"\bsteps\b"),            # L - 1 = 7 is the most
    (dict(threshold=None, steps=2.0), r"\bsteps\b"),
    (dict(threshold=None, steps=True), r"\bsteps\b"),
    (dict(threshold=None, block_length=4, steps=4), r"\bsteps\b"),
    (dict(threshold=0.5, steps=3), r"\bsteps\b"),            # steps belongs to the fixed schedule
    (dict(steps=3), r"\bsteps\b"),                           # ... and the default threshold is numeric
    (dict(draft_threshold=0.5), r"\bdraft_threshold\b"),
    (dict(use_lora=True), r"\buse_lora\b"),
    (dict(use_lora=False), r"\buse_lora\b"),
]

SELF_SPEC_BAD = [
    (dict(draft_threshold=-0.1), r"\bdraft_threshold\b"),
    (dict(draft_threshold=1.5), r"\bdraft_threshold\b"),
    (dict(draft_threshold=NAN), r"\bdraft_threshold\b"),
    (dict(draft_threshold="0.5"), r"\bdraft_threshold\b"),
    (dict(draft_threshold=True), r"\bdraft_threshold\b"),
    (dict(draft_threshold=None), r"\bdraft_threshold\b"),
    (dict(threshold=0.9), r"\bthreshold\b"),
    (dict(threshold=None), r"\bthreshold\b"),
    (dict(steps=3), r"\bsteps\b"),
]

AR_BAD = [
    (dict(block_length=8), r"\bblock_length\b"),
    (dict(threshold=0.9), r"\bthreshold\b"),
    (dict(threshold=None), r"\bthreshold\b"),
    (dict(steps=3), r"\bsteps\b"),
    (dict(draft_threshold=0.5), r"\bdraft_threshold\b"),
    (dict(use_lora=True), r"\buse_lora\b"),
]

MODE_CASES = ([("diffusion", kw, m) for kw, m in COMMON_BAD + DIFFUSION_BAD]
              + [("self_spec", kw, m) for kw, m in COMMON_BAD + SELF_SPEC_BAD]
              + [("ar", kw, m) for kw, m in AR_BAD])


def _case_id(case):
    mode, kw, _ = case
    return mode + "-" + ",".join(f"{k}={v!r}" for k, v in kw.items())


def _call(m, mode, kwargs):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT)
    args = {"mode": mode, "max_new_tokens": 8, **({"block_length": 8} if mode != "ar" else {}), **kwargs}
    return m.generate(prompt, **args)


@pytest.mark.parametrize("case", MODE_CASES, ids=[_case_id(c) for c in MODE_CASES])
def test_invalid_generate_parameter_is_a_named_value_error(model, monkeypatch, case):
    mode, kwargs, match = case
    counter = ForwardCounter(model, monkeypatch)
    with pytest.raises(ValueError, match=match):
        _call(model, mode, kwargs)
    assert counter.calls == 0, "the parameters must be checked before any forward runs"


@pytest.mark.parametrize("mode", ["diffusion", "self_spec"])
def test_the_same_requests_with_valid_values_run(model, mode):
    # The negative cases above differ from these only in the one bad value.
    res = _call(model, mode, dict(temperature=1.0, seed=7))
    assert 1 <= len(res.tokens) <= 8
    if mode == "diffusion":
        for kw in (dict(threshold=1.0), dict(threshold=1), dict(threshold=None, steps=7),
                   dict(threshold=None, steps=1), dict(block_length=2)):
            assert 1 <= len(_call(model, mode, kw).tokens) <= 8
    else:
        for kw in (dict(draft_threshold=0), dict(draft_threshold=1.0), dict(draft_threshold=0.5),
                   dict(use_lora=False), dict(block_length=2)):
            assert 1 <= len(_call(model, mode, kw).tokens) <= 8


@pytest.mark.parametrize("mode", ["self_spec", "self-spec"])
def test_use_lora_without_an_adapter(model_nolora, monkeypatch, mode):
    counter = ForwardCounter(model_nolora, monkeypatch)
    with pytest.raises(ValueError, match=r"use_lora=True but no LoRA adapter is attached"):
        model_nolora.generate(PROMPT, mode=mode, max_new_tokens=8, block_length=8, use_lora=True)
    assert counter.calls == 0
    # Without use_lora, or with use_lora=False, self-spec runs without a drafter adapter.
    for kw in (dict(), dict(use_lora=False)):
        assert len(model_nolora.generate(PROMPT, mode=mode, max_new_tokens=8, block_length=8, **kw).tokens) == 8


def test_forward_use_lora_without_an_adapter(model_nolora):
    with pytest.raises(ValueError, match="use_lora"):
        model_nolora.forward([1, MASK, MASK], mode="bidirectional", use_lora=True)
    with pytest.raises(ValueError, match="use_lora"):
        model_nolora.forward_select([1, MASK, MASK], mode="bidirectional", use_lora=True)


@pytest.mark.parametrize("mode", ["beam", "Diffusion", "self spec", "", None, 3])
def test_unknown_mode(model, mode):
    with pytest.raises(ValueError, match=r"unknown mode .*available: ar, diffusion, self_spec"):
        model.generate(PROMPT, mode=mode, max_new_tokens=4)


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    write_random_checkpoint(d, llama_config(), seed=3)
    return tridecode.load(d)


@pytest.mark.parametrize("mode", ["diffusion", "self_spec", "self-spec"])
def test_modes_that_need_a_mask_token_on_a_plain_llama(llama_model, monkeypatch, mode):
    assert llama_model.config.mask_token_id is None
    counter = ForwardCounter(llama_model, monkeypatch)
    with pytest.raises(ValueError, match=r"mode '(diffusion|self_spec)' needs a mask_token_id"):
        llama_model.generate([1, 5, 9], mode=mode, max_new_tokens=4)
    assert counter.calls == 0
    # AR is fine on the same checkpoint.
    assert len(llama_model.generate([1, 5, 9], max_new_tokens=4, eos_token_id=[]).tokens) == 4


# ---- KV-cache capacity ----

@pytest.fixture
def small_ctx():
    return tridecode.load(GOLDEN_DIR, max_context=21)


@pytest.mark.parametrize("mode,fits,too_many", [
    # diffusion needs prompt + ceil(N / L) * L: 5 + 16 = 21 fits; 17 new tokens need a third block.
    ("diffusion", 16, 17),
    # self-spec: 9 new tokens fit in 5 + 9 - 1 + 8 = 21. With 11, when every cycle accepts one token the
    # last verify starts at 5 + 11 - 2 = 14 and writes 8 rows: 22 > 21.
    ("self_spec", 9, 11),
    # AR needs prompt + N - 1.
    ("ar", 17, 18),
])
def test_kv_capacity_is_checked_before_generating(small_ctx, monkeypatch, mode, fits, too_many):
    extra = {} if mode == "ar" else {"block_length": 8}
    streamed = []
    counter = ForwardCounter(small_ctx, monkeypatch)
    with pytest.raises(ValueError, match=r"capacity is 21") as info:
        small_ctx.generate(PROMPT, mode=mode, max_new_tokens=too_many, eos_token_id=[], on_tokens=streamed.append,
                           **extra)
    assert "max_context" in str(info.value)
    assert counter.calls == 0 and streamed == []
    res = small_ctx.generate(PROMPT, mode=mode, max_new_tokens=fits, eos_token_id=[], **extra)
    assert len(res.tokens) == fits
    assert counter.calls > 0                   # the counter does see the forwards of a run
    assert small_ctx.cache_length <= small_ctx.max_context


def test_kv_capacity_error_for_a_long_prompt(small_ctx, monkeypatch):
    counter = ForwardCounter(small_ctx, monkeypatch)
    long_prompt = [1] + [5] * 19
    for mode in ("diffusion", "self_spec"):
        with pytest.raises(ValueError, match=r"needs \d+ tokens of KV cache, but the capacity is 21"):
            small_ctx.generate(long_prompt, mode=mode, max_new_tokens=2, block_length=4)
    assert counter.calls == 0


# ---------------------------------------------------------------------------------------------------------
# 2. LoRA adapter loading
# ---------------------------------------------------------------------------------------------------------

def _read_config(d):
    with open(os.path.join(d, "adapter_config.json"), encoding="utf-8") as f:
        return json.load(f)


def _write_config(d, cfg):
    with open(os.path.join(d, "adapter_config.json"), "w", encoding="utf-8") as f:
        if isinstance(cfg, str):
            f.write(cfg)
        else:
            json.dump(cfg, f, indent=1)


def _edit_config(**changes):
    """changes: key -> new value, or key -> DELETE."""
    def edit(d):
        cfg = _read_config(d)
        for k, v in changes.items():
            if v is DELETE:
                cfg.pop(k)
            else:
                cfg[k] = v
        _write_config(d, cfg)
    return edit


def _edit_tensors(fn):
    def edit(d):
        path = os.path.join(d, "adapter_model.safetensors")
        t = safetensors.numpy.load_file(path)
        fn(t)
        safetensors.numpy.save_file(t, path)
    return edit


def _remove(name):
    return lambda d: os.remove(os.path.join(d, name))


DELETE = object()
CFG = "adapter_config.json"
ST = "adapter_model.safetensors"

ADAPTER_CASES = {
    "no_config": (_remove(CFG), CFG, r"not a LoRA adapter directory"),
    "config_not_json": (lambda d: _write_config(d, '{"r": 4, "lora_alpha": '), CFG, r"malformed JSON"),
    "config_not_utf8": (lambda d: open(os.path.join(d, CFG), "wb").write(b'{"r": "\xff\xfe"}'), CFG,
                        r"malformed JSON"),
    "config_a_list": (lambda d: _write_config(d, "[1, 2]"), CFG, r"expected a JSON object"),
    "target_q_proj": (_edit_config(target_modules=["o_proj", "q_proj"]), CFG, r"q_proj.*o_proj only"),
    "target_v_proj": (_edit_config(target_modules=["v_proj"]), CFG, r"v_proj.*o_proj only"),
    "target_q_v": (_edit_config(target_modules=["q_proj", "v_proj"]), CFG, r"q_proj.*v_proj"),
    "target_str_q": (_edit_config(target_modules="q_proj"), CFG, r"q_proj"),
    "target_all_linear": (_edit_config(target_modules="all-linear"), CFG, r"all-linear"),
    "target_missing": (_edit_config(target_modules=DELETE), CFG, r"target_modules"),
    "target_null": (_edit_config(target_modules=None), CFG, r"target_modules"),
    "target_empty": (_edit_config(target_modules=[]), CFG, r"target_modules"),
    "r_missing": (_edit_config(r=DELETE), CFG, r"'r' must be a positive integer, got None"),
    "r_zero": (_edit_config(r=0), CFG, r"'r' must be a positive integer, got 0"),
    "r_negative": (_edit_config(r=-4), CFG, r"'r' must be a positive integer"),
    "r_float": (_edit_config(r=4.0), CFG, r"'r' must be a positive integer, got 4.0"),
    "r_string": (_edit_config(r="4"), CFG, r"'r' must be a positive integer"),
    "r_bool": (_edit_config(r=True), CFG, r"'r' must be a positive integer"),
    "alpha_missing": (_edit_config(lora_alpha=DELETE), CFG, r"'lora_alpha' must be a positive number, got None"),
    "alpha_string": (_edit_config(lora_alpha="16"), CFG, r"'lora_alpha' must be a positive number"),
    "alpha_null": (_edit_config(lora_alpha=None), CFG, r"'lora_alpha' must be a positive number"),
    "alpha_nan": (_edit_config(lora_alpha=NAN), CFG, r"'lora_alpha' must be a positive number"),
    "alpha_bool": (_edit_config(lora_alpha=True), CFG, r"'lora_alpha' must be a positive number"),
    "peft_ia3": (_edit_config(peft_type="IA3"), CFG, r"peft_type 'IA3' is not supported"),
    "peft_loha": (_edit_config(peft_type="LOHA"), CFG, r"peft_type 'LOHA'"),
    "fan_in_fan_out": (_edit_config(fan_in_fan_out=True), CFG, r"fan_in_fan_out"),
    "bias_all": (_edit_config(bias="all"), CFG, r"bias 'all' is not supported"),
    "bias_lora_only": (_edit_config(bias="lora_only"), CFG, r"bias 'lora_only'"),
    "use_dora": (_edit_config(use_dora=True), CFG, r"DoRA"),
    "no_weights": (_remove(ST), ST, r"not found"),
    "missing_lora_B": (_edit_tensors(lambda t: t.pop(lora_name(1, "lora_B"))), ST,
                       r"missing tensor " + lora_name(1, "lora_B").replace(".", r"\.")),
    "missing_lora_A": (_edit_tensors(lambda t: t.pop(lora_name(0, "lora_A"))), ST,
                       r"missing tensor .*layers\.0\.self_attn\.o_proj\.lora_A"),
    "lora_A_wrong_rank": (_edit_tensors(lambda t: t.update({lora_name(0, "lora_A"): np.zeros((5, 64), np.float32)})),
                          ST, r"shape \[5, 64\], expected \[4, 64\] \(rank 4"),
    "lora_A_wrong_width": (_edit_tensors(lambda t: t.update({lora_name(1, "lora_A"): np.zeros((4, 32), np.float32)})),
                           ST, r"lora_A.* shape \[4, 32\], expected \[4, 64\]"),
    "lora_B_wrong_hidden": (_edit_tensors(lambda t: t.update({lora_name(1, "lora_B"): np.zeros((48, 4), np.float32)})),
                            ST, r"lora_B.* shape \[48, 4\], expected \[64, 4\]"),
    "lora_B_wrong_rank": (_edit_tensors(lambda t: t.update({lora_name(0, "lora_B"): np.zeros((64, 3), np.float32)})),
                          ST, r"shape \[64, 3\], expected \[64, 4\] \(rank 4"),
    "rank_in_config_differs": (_edit_config(r=8), ST, r"shape \[4, 64\], expected \[8, 64\] \(rank 8"),
    "extra_q_proj": (_edit_tensors(lambda t: t.update({lora_name(0, "lora_A", "q_proj"): np.zeros((4, 64), np.float32)})),
                     ST, r"unexpected tensor .*q_proj"),
    "extra_layer": (_edit_tensors(lambda t: t.update({lora_name(2, "lora_A"): np.zeros((4, 64), np.float32)})),
                    ST, r"unexpected tensor .*layers\.2\."),
    "alpha_zero": (_edit_config(lora_alpha=0), CFG, r"'lora_alpha' must be a positive number, got 0"),
    "alpha_negative": (_edit_config(lora_alpha=-16), CFG, r"'lora_alpha' must be a positive number"),
    "alpha_pattern": (_edit_config(alpha_pattern={"o_proj": 32}), CFG, r"'alpha_pattern' is not supported"),
    "rank_pattern": (_edit_config(rank_pattern={"o_proj": 8}), CFG, r"'rank_pattern' is not supported"),
    "layers_to_transform": (_edit_config(layers_to_transform=[0]), CFG, r"'layers_to_transform' is not supported"),
    "modules_to_save": (_edit_config(modules_to_save=["lm_head"]), CFG, r"'modules_to_save' is not supported"),
    "rslora_string": (_edit_config(use_rslora="false"), CFG, r"'use_rslora' must be true or false"),
    "config_is_a_directory": (lambda d: (os.remove(os.path.join(d, CFG)), os.mkdir(os.path.join(d, CFG))), CFG,
                              r"is a directory, not a regular file"),
    "nan_weights": (_edit_tensors(lambda t: t[lora_name(0, "lora_B")].__setitem__((3, 1), np.nan)), ST,
                    r"NaN or infinite"),
}


@pytest.fixture
def adapter_copy(tmp_path):
    d = tmp_path / "adapter"
    shutil.copytree(ADAPTER_DIR, d)
    return str(d)


@pytest.mark.parametrize("how", ["load", "attach"])
@pytest.mark.parametrize("case", sorted(ADAPTER_CASES))
def test_bad_adapter_is_a_named_checkpoint_error(adapter_copy, model_nolora, case, how):
    edit, fname, problem = ADAPTER_CASES[case]
    edit(adapter_copy)
    with pytest.raises(tridecode.CheckpointError) as info:
        if how == "load":
            tridecode.load(GOLDEN_DIR, lora=adapter_copy)
        else:
            model_nolora.attach_lora(adapter_copy)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert fname in msg, msg
    if fname == CFG or case == "no_weights":
        assert adapter_copy in msg, msg        # the directory too, not only the file name
    assert re.search(problem, msg), msg
    assert model_nolora.lora is None


def test_the_unedited_copy_loads(adapter_copy):
    # The cases above fail because of their one edit.
    m = tridecode.load(GOLDEN_DIR, lora=adapter_copy)
    assert m.lora is not None and m.lora.rank == RANK and m.lora.scale == 4.0


def test_adapter_path_that_is_not_a_directory(tmp_path, model_nolora):
    for p in (tmp_path / "nowhere", os.path.join(ADAPTER_DIR, CFG)):
        with pytest.raises(tridecode.CheckpointError, match="not a LoRA adapter directory"):
            model_nolora.attach_lora(p)


def test_a_failed_attach_keeps_the_attached_adapter(adapter_copy):
    m = tridecode.load(GOLDEN_DIR)
    m.forward(PROMPTS[2])
    block = [173] + [MASK] * 7
    before = m.forward(block, mode="bidirectional", use_lora=True)
    _edit_config(use_dora=True)(adapter_copy)
    with pytest.raises(tridecode.CheckpointError):
        m.attach_lora(adapter_copy)
    assert m.lora is not None and m.lora.path == ADAPTER_DIR
    np.testing.assert_array_equal(m.forward(block, mode="bidirectional", use_lora=True), before)


def test_lora_auto_none_and_path():
    m = tridecode.load(GOLDEN_DIR, lora="auto")
    assert m.lora is not None
    assert m.lora.scale == 4.0 and m.lora.rank == RANK and m.lora.alpha == 16.0
    assert os.path.samefile(m.lora.path, ADAPTER_DIR)
    assert len(m.lora.a) == len(m.lora.b) == LAYERS
    assert tridecode.load(GOLDEN_DIR).lora is not None           # "auto" is the default
    assert tridecode.load(GOLDEN_DIR, lora=None).lora is None
    p = tridecode.load(GOLDEN_DIR, lora=None)
    p.attach_lora(ADAPTER_DIR)
    assert p.lora.scale == 4.0


def test_lora_auto_without_an_adapter_directory(tmp_path):
    d = copy_golden(tmp_path / "plain")
    assert tridecode.load(d, lora="auto").lora is None


def test_rslora_scale(adapter_copy, tmp_path):
    _edit_config(use_rslora=True)(adapter_copy)
    m = tridecode.load(GOLDEN_DIR, lora=adapter_copy)
    assert m.lora.scale == 16 / math.sqrt(4) == 8.0
    # The scale reaches the kernels: alpha / sqrt(r) with B equals alpha / r with 2 * B.
    doubled = tmp_path / "doubled"
    shutil.copytree(ADAPTER_DIR, doubled)
    _edit_tensors(lambda t: t.update({k: v * 2 for k, v in t.items() if "lora_B" in k}))(doubled)
    m2 = tridecode.load(GOLDEN_DIR, lora=doubled)
    assert m2.lora.scale == 4.0
    block = [173] + [MASK] * 7
    outs = []
    for mm in (m, m2):
        mm.forward(PROMPTS[2])
        outs.append(mm.forward(block, mode="bidirectional", use_lora=True))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)
    base = tridecode.load(GOLDEN_DIR)
    base.forward(PROMPTS[2])
    assert np.abs(outs[0] - base.forward(block, mode="bidirectional", use_lora=True)).max() > 1e-2


def test_detach_lora(monkeypatch):
    m = tridecode.load(GOLDEN_DIR)
    m.forward(PROMPTS[2])
    block = [173] + [MASK] * 7
    off = m.forward(block, mode="bidirectional")
    m.detach_lora()
    assert m.lora is None
    np.testing.assert_array_equal(m.forward(block, mode="bidirectional"), off)
    with pytest.raises(ValueError, match="use_lora"):
        m.forward(block, mode="bidirectional", use_lora=True)
    counter = ForwardCounter(m, monkeypatch)
    with pytest.raises(ValueError, match=r"use_lora=True but no LoRA adapter is attached"):
        m.generate(PROMPT, mode="self_spec", max_new_tokens=8, block_length=8, use_lora=True)
    assert counter.calls == 0
    monkeypatch.undo()
    # Self-spec still runs (no drafter), and the adapter can be attached again.
    assert len(m.generate(PROMPT, mode="self_spec", max_new_tokens=8, block_length=8).tokens) == 8
    m.attach_lora(ADAPTER_DIR)
    m.forward(PROMPTS[2])
    assert np.abs(m.forward(block, mode="bidirectional", use_lora=True) - off).max() > 1e-2


# ---------------------------------------------------------------------------------------------------------
# 3. The LoRA changes the drafts only
# ---------------------------------------------------------------------------------------------------------

def test_lora_does_not_change_ar_or_diffusion():
    with_lora = tridecode.load(GOLDEN_DIR)          # fresh: AR runs first, right after the attach
    plain = tridecode.load(GOLDEN_DIR, lora=None)
    assert with_lora.lora is not None
    for p in PROMPTS[:4]:
        a = with_lora.generate(p, max_new_tokens=16, eos_token_id=[])
        b = plain.generate(p, max_new_tokens=16, eos_token_id=[])
        assert a.tokens == b.tokens
        for kw in (dict(), dict(threshold=None, steps=3), dict(block_length=4, threshold=0.5)):
            a = with_lora.generate(p, mode="diffusion", max_new_tokens=16, eos_token_id=[], **{"block_length": 8, **kw})
            b = plain.generate(p, mode="diffusion", max_new_tokens=16, eos_token_id=[], **{"block_length": 8, **kw})
            assert a.tokens == b.tokens and a.steps_per_block == b.steps_per_block and a.nfe == b.nfe
    # Causal and bidirectional forwards without use_lora are bit-identical.
    with_lora.reset()
    plain.reset()
    np.testing.assert_array_equal(with_lora.forward(PROMPTS[2]), plain.forward(PROMPTS[2]))
    block = [173] + [MASK] * 7
    np.testing.assert_array_equal(with_lora.forward(block, mode="bidirectional"),
                                  plain.forward(block, mode="bidirectional"))


def test_lora_bidirectional_logits_match_the_golden_numerics(model):
    num = EXPECTED_LORA["numerics"]
    spec = num["bidir_block_lora"]
    block = spec["input_ids"]
    assert block == [num["seed_token"]] + [MASK] * 7
    golden = safetensors.numpy.load_file(os.path.join(GOLDEN_DIR, num["tensors_file"]))["bidir_block_lora.logits"]
    model.reset()
    model.forward(num["prompt"], mode="causal")                 # prefill, LoRA off
    assert model.cache_length == spec["cache_len"] == 13
    on = model.forward(block, mode="bidirectional", use_lora=True)
    off = model.forward(block, mode="bidirectional", use_lora=False)
    assert model.cache_length == 13                             # bidirectional forwards do not write
    assert on.shape == golden.shape == (8, VOCAB)
    np.testing.assert_allclose(on, golden, rtol=0, atol=1e-4)
    assert np.abs(on - off).max() > 1e-2
    np.testing.assert_allclose(np.abs(on - off).max(), spec_diff(), rtol=0, atol=1e-3)
    assert np.argmax(on, axis=1).tolist() == spec["argmax"]
    # The fused sampler head sees the same logits.
    ids, conf = model.forward_select(block, mode="bidirectional", use_lora=True)
    assert ids.tolist() == spec["argmax"]
    np.testing.assert_allclose(conf, spec["maxprob"], rtol=0, atol=1e-5)


def spec_diff():
    return EXPECTED_LORA["numerics"]["max_abs_logit_diff_vs_bidir_block_without_lora"]


def _lora_cases():
    return [c for c in EXPECTED_LORA["cases"] if c["args"]["temperature"] == 0.0]


@pytest.mark.parametrize("case", _lora_cases(), ids=lambda c: c["id"])
def test_self_spec_drafts_with_the_lora_and_verifies_without(model, model_nolora, case):
    args = case["args"]
    prompt = EXPECTED_LORA["prompts"][case["prompt_index"]]
    n = args["max_new_tokens"]
    kw = dict(mode="self_spec", max_new_tokens=n, block_length=args["block_length"],
              eos_token_id=args["eos_token_id"])
    res = model.generate(prompt, **kw)
    # The verifier runs without the adapter: the output is the golden one (truncated to max_new_tokens),
    # which is also the AR greedy output.
    assert res.tokens == case["new_tokens"][:n]
    assert res.tokens == model_nolora.generate(prompt, max_new_tokens=n, eos_token_id=args["eos_token_id"]).tokens
    assert res.stopped_on_eos == case["stopped_on_eos"]
    # The drafts use it: the acceptance per cycle is the golden one of the LoRA drafter.
    golden_acc = [c["accepted"] for c in case["cycles"]]
    assert res.accepted_per_cycle == golden_acc[:len(res.accepted_per_cycle)]
    # use_lora=False on the same model drafts like the model without an adapter.
    a = model.generate(prompt, use_lora=False, **kw)
    b = model_nolora.generate(prompt, **kw)
    assert a.tokens == b.tokens == res.tokens
    assert a.accepted_per_cycle == b.accepted_per_cycle


def test_the_lora_changes_some_drafts(model):
    changed = sum(cy["draft_slots_changed_by_lora"] for c in _lora_cases() for cy in c["cycles"])
    assert changed > 0            # the golden data exercises the drafter
    diffs = 0
    for c in _lora_cases():
        prompt = EXPECTED_LORA["prompts"][c["prompt_index"]]
        kw = dict(mode="self_spec", max_new_tokens=24, block_length=8)
        diffs += model.generate(prompt, **kw).accepted_per_cycle != model.generate(
            prompt, use_lora=False, **kw).accepted_per_cycle
    assert diffs > 0


# ---------------------------------------------------------------------------------------------------------
# 4. The Gumbel-max selector
# ---------------------------------------------------------------------------------------------------------

ROW = np.array([2.0, 0.3, -1.0, 1.2, 4.0, 0.0, -0.6, 1.7, 0.9, -0.2], np.float32)
EXCLUDE = 4                        # the largest logit: excluded, so the rest is renormalised
N_DRAWS = 20000
P_FALSE_FAIL = 1e-4


def chi2_bound(dof):
    try:
        from scipy.stats import chi2
        return float(chi2.ppf(1 - P_FALSE_FAIL, dof))
    except ImportError:
        # 0.9999 quantiles of the chi-square distribution (scipy.stats.chi2.ppf(0.9999, dof)).
        return {8: 31.8276, 9: 33.7199}[dof]


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("temperature,seed", [(0.75, 1), (1.0, 2), (1.4, 3)])
def test_select_frequencies_match_the_tempered_softmax(temperature, seed):
    rows = np.tile(ROW, (N_DRAWS, 1))
    ids, conf = _C.select(rows, EXCLUDE, temperature, seed, 0)
    assert ids.shape == conf.shape == (N_DRAWS,)
    assert ids.dtype == np.int32 and conf.dtype == np.float32
    assert not (ids == EXCLUDE).any()
    counts = np.bincount(ids, minlength=ROW.size)
    z = ROW.astype(np.float64) / temperature
    z[EXCLUDE] = -np.inf
    p = _softmax(z)
    keep = np.arange(ROW.size) != EXCLUDE
    expected = N_DRAWS * p[keep]
    assert expected.min() > 50
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    assert stat < chi2_bound(keep.sum() - 1), (stat, counts, expected)
    # The confidence is the probability under the unscaled softmax of the full row.
    np.testing.assert_allclose(conf, _softmax(ROW)[ids], rtol=1e-5, atol=0)


def test_select_streams_are_independent_draws():
    # One row per call, N_DRAWS different streams: the same distribution.
    T = 1.2
    draws = np.array([_C.select(ROW[None, :], EXCLUDE, T, 99, s)[0][0] for s in range(N_DRAWS)])
    counts = np.bincount(draws, minlength=ROW.size)
    assert counts[EXCLUDE] == 0
    z = ROW.astype(np.float64) / T
    z[EXCLUDE] = -np.inf
    keep = np.arange(ROW.size) != EXCLUDE
    expected = N_DRAWS * _softmax(z)[keep]
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    assert stat < chi2_bound(keep.sum() - 1), (stat, counts, expected)


def test_select_is_a_function_of_seed_and_stream():
    rows = np.tile(ROW, (2000, 1))
    a = _C.select(rows, EXCLUDE, 1.0, 5, 3)
    b = _C.select(rows, EXCLUDE, 1.0, 5, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    other_seed = _C.select(rows, EXCLUDE, 1.0, 6, 3)[0]
    other_stream = _C.select(rows, EXCLUDE, 1.0, 5, 4)[0]
    for other in (other_seed, other_stream):
        assert not np.array_equal(a[0], other)
        # Independent draws agree about as often as sum(p^2) predicts, far from always.
        assert (a[0] == other).mean() < 0.6
    # Rows of one call draw independent noise: identical rows do not all give the same id.
    assert len(set(a[0].tolist())) > 3
    # Temperature 0 is the argmax (the exclusion respected), whatever the seed.
    for s in (0, 1, 2**63 + 5):
        ids, conf = _C.select(rows[:4], EXCLUDE, 0.0, s, 9)
        assert ids.tolist() == [0] * 4
        np.testing.assert_allclose(conf, _softmax(ROW)[0], rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("exclude", [MASK, -1])
def test_select_matches_the_numpy_reference(temperature, exclude):
    rng = np.random.default_rng(int(temperature * 10) + 7)
    logits = (rng.standard_normal((64, VOCAB)) * 3).astype(np.float32)
    logits[:, MASK] += 10.0 * (exclude >= 0)         # the excluded id would otherwise often win
    for seed, stream in ((0, 0), (12345, 7), (2**64 - 1, 2**31 - 1)):
        ids, conf = _C.select(logits, exclude, temperature, seed, stream)
        rids, rconf = ref.select(logits, exclude, temperature, seed, stream)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(conf, rconf, rtol=1e-6, atol=0)
        if exclude >= 0:
            assert not (ids == exclude).any()


@pytest.mark.parametrize("temperature", [0.0, 0.8, 3.0])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_head_select_equals_matmul_then_select(temperature, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, HIDDEN)).astype(np.float32)
    W = (rng.standard_normal((VOCAB, HIDDEN)) / 4).astype(np.float32)
    for seed, stream in ((1, 0), (77, 12)):
        ids, conf = _C.head_select(x, W, 0, MASK, temperature, seed, stream)
        logits = ops.matmul(x, W)
        rids, rconf = _C.select(logits, MASK, temperature, seed, stream)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_array_equal(conf, rconf)


# ---------------------------------------------------------------------------------------------------------
# 5. Sampling in diffusion / self-spec
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,extra", [
    ("diffusion", dict()),
    ("diffusion", dict(threshold=None, steps=2)),
    ("self_spec", dict()),
    ("self_spec", dict(draft_threshold=0.5)),
    ("self_spec", dict(use_lora=False)),
])
def test_sampling_is_reproducible_with_a_seed(model, mode, extra):
    kw = dict(mode=mode, max_new_tokens=24, block_length=8, temperature=1.0, eos_token_id=[], **extra)
    a = model.generate(PROMPTS[2], seed=11, **kw)
    b = model.generate(PROMPTS[2], seed=11, **kw)
    fresh = tridecode.load(GOLDEN_DIR).generate(PROMPTS[2], seed=11, **kw)
    assert a.tokens == b.tokens == fresh.tokens
    assert len(a.tokens) == 24
    others = [model.generate(PROMPTS[2], seed=s, **kw).tokens for s in (12, 13, 2**40)]
    assert all(o != a.tokens for o in others)
    greedy = model.generate(PROMPTS[2], **{**kw, "temperature": 0.0}).tokens
    assert a.tokens != greedy


@pytest.fixture(scope="module")
def mask_loving_model(tmp_path_factory):
    """A copy of the golden model whose head makes [MASK] by far the likeliest token of every row."""
    d = tmp_path_factory.mktemp("mask_head")
    shutil.copy(os.path.join(GOLDEN_DIR, "config.json"), d / "config.json")
    t = safetensors.numpy.load_file(os.path.join(GOLDEN_DIR, "model.safetensors"))
    t["diffusion_head.weight"][MASK] *= 1000.0
    safetensors.numpy.save_file(t, str(d / "model.safetensors"))
    shutil.copytree(ADAPTER_DIR, d / "linear_spec_lora")
    return tridecode.load(d)


@pytest.mark.parametrize("mode,extra", [
    ("diffusion", dict()),
    ("diffusion", dict(threshold=None, steps=3)),
    ("self_spec", dict()),
    ("self_spec", dict(draft_threshold=0.3)),
])
@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_the_mask_id_is_never_emitted(mask_loving_model, mode, extra, temperature):
    m = mask_loving_model
    m.reset()
    rows = m.forward(PROMPTS[2])
    assert (np.argmax(rows, axis=-1) == MASK).mean() > 0.5
    for seed in (0, 1):
        res = m.generate(PROMPTS[2], mode=mode, max_new_tokens=24, block_length=8, temperature=temperature,
                         seed=seed, eos_token_id=[], **extra)
        assert len(res.tokens) == 24
        assert MASK not in res.tokens
        assert all(0 <= t < VOCAB for t in res.tokens)


def test_golden_model_sampling_never_emits_the_mask(model):
    for mode in ("diffusion", "self_spec"):
        for seed in range(4):
            res = model.generate(PROMPTS[3], mode=mode, max_new_tokens=32, block_length=8, temperature=2.0,
                                 seed=seed, eos_token_id=[])
            assert len(res.tokens) == 32 and MASK not in res.tokens


# ---- argument types: numpy scalars are numbers, other types are clear errors ----

def test_numpy_scalars_are_accepted(model):
    a = model.generate(PROMPTS[1], mode="diffusion", max_new_tokens=8, block_length=4, threshold=np.float32(0.7),
                       temperature=np.float32(0.5), seed=np.int64(3))
    b = model.generate(PROMPTS[1], mode="diffusion", max_new_tokens=8, block_length=4, threshold=0.7,
                       temperature=0.5, seed=3)
    assert a.tokens == b.tokens
    c = model.generate(PROMPTS[1], mode="self_spec", max_new_tokens=8, block_length=4,
                       draft_threshold=np.float64(0.5))
    assert c.tokens == model.generate(PROMPTS[1], mode="ar", max_new_tokens=8).tokens


@pytest.mark.parametrize("call,match", [
    (lambda m: m.generate([1, 2], mode=["ar"], max_new_tokens=2), "mode"),
    (lambda m: m.generate([1, 2], mode="self_spec", max_new_tokens=2, use_lora="no"), "use_lora"),
    (lambda m: m.attach_lora(None), "attach_lora"),
    (lambda m: m.attach_lora(123), "path"),
    (lambda m: m.attach_lora(""), "non-empty path"),
])
def test_bad_argument_types(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


@pytest.mark.parametrize("lora", [123, True, ""])
def test_bad_lora_argument_to_load(lora):
    with pytest.raises(ValueError, match="path"):
        tridecode.load(GOLDEN_DIR, lora=lora)

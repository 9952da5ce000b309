"""AR mode and single forwards against the outputs of the reference implementation (float32, CPU)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import tridecode

from golden import EXPECTED, GOLDEN_DIR, PROMPTS, cases

NUMERICS = EXPECTED["numerics"]


@pytest.fixture(scope="module")
def model():
    return tridecode.load(GOLDEN_DIR)


@pytest.fixture(scope="module")
def tensors():
    return load_file(f"{GOLDEN_DIR}/numerics.safetensors")


@pytest.mark.parametrize("case", cases("ar_generate"), ids=lambda c: c["id"])
def test_ar_tokens_and_nfe_match_reference(model, case):
    args = case["args"]
    res = model.generate(PROMPTS[case["prompt_index"]], mode="ar", max_new_tokens=args["max_new_tokens"],
                         eos_token_id=args["eos_token_id"])
    assert res.tokens == case["new_tokens"]
    assert res.nfe == case["nfe"]
    assert res.stopped_on_eos == case["stopped_on_eos"]
    assert res.forwards == len(res.tokens)           # one prefill + one forward per further token
    assert res.tokens_per_forward == pytest.approx(1.0)


def test_every_golden_prompt_is_covered():
    assert {c["prompt_index"] for c in cases("ar_generate")} == set(range(len(PROMPTS)))


def _check_forward(logits, name, tensors):
    rec = NUMERICS[name]
    want = tensors[f"{name}.logits"]
    assert logits.shape == tuple(rec["shape"]) == want.shape
    # Float32 tolerance: the reference's logits reach ~28; an independent fp64 implementation agrees to 2.2e-5.
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits[0, :16], rec["first_row_first16"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits[-1, :16], rec["last_row_first16"], rtol=0, atol=1e-4)
    idx, conf = tridecode.ops.argmax_confidence(logits)
    assert idx.tolist() == rec["argmax"]
    np.testing.assert_allclose(conf, rec["maxprob"], rtol=1e-4)


def test_prefill_bidirectional_and_commit_forwards_match_reference(model, tensors):
    model.reset()
    pre = NUMERICS["causal_prefill"]
    logits = model.forward(pre["input_ids"], mode="causal")
    _check_forward(logits, "causal_prefill", tensors)
    assert model.cache_length == len(pre["input_ids"])

    bid = NUMERICS["bidir_block"]
    assert bid["cache_len"] == model.cache_length
    logits = model.forward(bid["input_ids"], mode="bidirectional")
    _check_forward(logits, "bidir_block", tensors)
    assert model.cache_length == len(pre["input_ids"])   # a bidirectional pass never writes the cache

    blk = NUMERICS["causal_block"]
    logits = model.forward(blk["input_ids"], mode="causal")
    _check_forward(logits, "causal_block", tensors)
    assert model.cache_length == len(pre["input_ids"]) + len(blk["input_ids"])


def test_last_row_logits_equal_full_logits(model):
    model.reset()
    full = model.forward(PROMPTS[3], mode="causal", write_cache=False)
    last = model.forward(PROMPTS[3], mode="causal", write_cache=False, logits="last")
    assert last.shape == (1, full.shape[1])
    np.testing.assert_array_equal(last[0], full[-1])

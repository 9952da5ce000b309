"""Block diffusion and self-speculation against the reference implementation's recorded runs.

Every recorded case is compared token for token (the reference's output truncated to max_new_tokens: the
reference self-spec can overshoot by up to L-1 tokens, tridecode never does), plus nfe and the per-block /
per-cycle structure. nfe is comparable in every recorded case: diffusion cases all use a max_new_tokens that
is a multiple of the block length, and the self-spec loop stops after the same cycle as the reference.
"""

import json
import os

import numpy as np
import pytest

import tridecode

from golden import GOLDEN_DIR, PROMPTS, cases, generate_kwargs

with open(os.path.join(GOLDEN_DIR, "expected_lora.json"), encoding="utf-8") as _f:
    EXPECTED_LORA = json.load(_f)


@pytest.fixture(scope="module")
def plain():
    return tridecode.load(GOLDEN_DIR, lora=None)


@pytest.fixture(scope="module")
def drafter():
    m = tridecode.load(GOLDEN_DIR)          # lora="auto" finds linear_spec_lora/
    assert m.lora is not None and m.lora.scale == 4.0 and m.lora.rank == 4
    return m


def _diffusion(model, case):
    return model.generate(PROMPTS[case["prompt_index"]], **generate_kwargs(case))


def _self_spec(model, case, **kw):
    return model.generate(PROMPTS[case["prompt_index"]], **generate_kwargs(case), **kw)


@pytest.mark.parametrize("case", cases("generate"), ids=lambda c: c["id"])
def test_diffusion_matches_reference(plain, case):
    res = _diffusion(plain, case)
    assert res.tokens == case["new_tokens"][: case["args"]["max_new_tokens"]]
    assert res.nfe == case["nfe"] == case["denoise_forwards"] + case["commit_forwards"]
    assert res.forwards == res.nfe + 1                       # + the prefill
    assert res.steps_per_block == [len(b["steps"]) for b in case["blocks"]]
    assert res.stopped_on_eos == case["stopped_on_eos"]


@pytest.mark.parametrize("case", cases("generate"), ids=lambda c: c["id"])
def test_diffusion_commit_trace_matches_reference(plain, case):
    """Replays the recorded blocks step by step: which slots each step committed, with which tokens."""
    a = case["args"]
    L, mask = a["block_length"], plain.config.mask_token_id
    plain.reset()
    ids, _ = plain.forward_select(PROMPTS[case["prompt_index"]], "causal", logits="last")
    seed = int(ids[0])
    for block in case["blocks"]:
        assert seed == block["seed"]
        x = np.array([seed] + [mask] * (L - 1), np.int32)
        masked = np.array([0] + [1] * (L - 1), np.uint8)
        for step in block["steps"]:
            assert int(masked.sum()) == step["masked_before"]
            idx, conf = plain.forward_select(x, "bidirectional")
            k = -1 if a["threshold"] is not None else 1
            commit = tridecode._C.select_commits(conf, masked, a["threshold"] or 0.0, k).astype(bool)
            got = [[int(i), int(idx[i])] for i in np.flatnonzero(commit)]
            assert got == sorted([s, t] for s, t, _ in step["committed"])
            np.testing.assert_allclose([conf[s] for s, _, _ in step["committed"]],
                                       [c for _, _, c in step["committed"]], rtol=1e-4)
            x[commit] = idx[commit]
            masked[commit] = 0
        assert x.tolist() == block["final_block"]
        ids, _ = plain.forward_select(x, "causal", logits="last")
        seed = int(ids[0])


@pytest.mark.parametrize("case", cases("linear_spec_generate"), ids=lambda c: c["id"])
def test_self_spec_matches_reference(plain, case):
    res = _self_spec(plain, case, use_lora=False)
    n = case["args"]["max_new_tokens"]
    assert res.tokens == case["new_tokens"][:n]
    assert len(res.tokens) <= n
    assert res.nfe == case["nfe"]
    assert res.accepted_per_cycle == case["accepted_per_cycle"]
    assert res.drafts_per_cycle == [c["draft_forwards"] for c in case["cycles"]]
    assert res.stopped_on_eos == case["stopped_on_eos"]


@pytest.mark.parametrize("case", EXPECTED_LORA["cases"], ids=lambda c: c["id"])
def test_self_spec_with_lora_drafter_matches_reference(drafter, plain, case):
    # Drafts never change the output at temperature 0, so the structure is what proves the adapter is used.
    res = _self_spec(drafter, case)
    assert res.tokens == case["new_tokens"][: case["args"]["max_new_tokens"]]
    assert res.nfe == case["nfe"]
    assert res.accepted_per_cycle == case["accepted_per_cycle"]
    without = _self_spec(drafter, case, use_lora=False)
    assert without.nfe == case["without_lora"]["nfe"]
    assert without.accepted_per_cycle == case["without_lora"]["accepted_per_cycle"]
    assert without.tokens == res.tokens


def test_lora_cases_differ_from_plain_ones(drafter):
    """Guards the test above: an adapter that is ignored would give the no-LoRA cycles, which differ."""
    differing = [c for c in EXPECTED_LORA["cases"]
                 if c["accepted_per_cycle"] != c["without_lora"]["accepted_per_cycle"]]
    assert len(differing) >= 3


def test_lora_drafted_blocks_match_reference(drafter):
    case = EXPECTED_LORA["cases"][1]
    a = case["args"]
    L, mask = a["block_length"], drafter.config.mask_token_id
    drafter.reset()
    ids, _ = drafter.forward_select(PROMPTS[case["prompt_index"]], "causal", logits="last")
    pending = int(ids[0])
    for cycle in case["cycles"]:
        assert drafter.cache_length == cycle["start_position"]
        block = np.array([pending] + [mask] * (L - 1), np.int32)
        idx, _ = drafter.forward_select(block, "bidirectional", use_lora=True)
        block[1:] = idx[1:]
        assert block.tolist() == cycle["drafted_block"]
        plain_idx, _ = drafter.forward_select(np.array([pending] + [mask] * (L - 1)), "bidirectional")
        assert ([pending] + plain_idx[1:].tolist()) == cycle["drafted_block_without_lora"]
        target, _ = drafter.forward_select(block, "causal")
        assert target.tolist() == cycle["verify_argmax"]
        c = tridecode._C.accept_length(block, target)
        assert c + 1 == cycle["accepted"]
        drafter.crop(cycle["start_position"] + c + 1)
        pending = int(target[c])


def test_self_spec_equals_ar_on_every_golden_prompt(plain, drafter):
    for prompt in PROMPTS:
        ar = plain.generate(prompt, mode="ar", max_new_tokens=40).tokens
        for model in (plain, drafter):
            for L in (2, 8, 32):
                assert model.generate(prompt, mode="self_spec", max_new_tokens=40, block_length=L).tokens == ar

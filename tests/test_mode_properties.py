"""Properties of block diffusion and self-speculation on tiny random tri-mode checkpoints.

- greedy self-speculation reproduces greedy AR over many shapes, block lengths, prompt lengths, draft
  thresholds and with / without a LoRA drafter, and keeps its per-cycle bookkeeping consistent;
- diffusion step counts follow from the commit rule (threshold 1.0: one token per step; a model whose every
  prediction is certain: one step per block; fixed schedule: the spread of L-1 commits over `steps`);
- diffusion and self-speculation outputs equal a step-by-step replay of the decoding loops written here on
  top of Model.forward_select / Model.crop and the numpy references of the commit and acceptance rules.

Generation never stops on EOS here (eos_token_id=[]), so every run produces exactly max_new_tokens.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

import tridecode
from tridecode import reference

from checkpoints import (golden_recipe_tensors, nld_config, random_lora_tensors, random_tensors,
                         successor_tensors, write_checkpoint, write_lora_adapter)

NO_EOS = []
MAX_CONTEXT = 256
ADAPTER_DIR = "linear_spec_lora"


@dataclass(frozen=True)
class Spec:
    config: dict
    weights: str                 # "plain" (random_tensors), "golden" (golden_recipe_tensors) or "successor"
    seed: int
    lora_r: int = 0              # 0: no adapter
    lora_alpha: float = 16.0
    lora_b_std: float = 0.3


def _cfg(hidden, heads, kv, head_dim, vocab, mask, **kw):
    return nld_config(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                      intermediate_size=2 * hidden, vocab_size=vocab, mask_token_id=mask, eos_token_id=2, **kw)


SPECS = {
    # GQA ratio 1, head_dim 16, plain N(0, 1/fan_in) weights (confidences low and flat)
    "gqa1-hd16-plain": Spec(_cfg(64, 4, 4, 16, vocab=224, mask=5), "plain", seed=3, lora_r=4),
    # GQA ratio 2, head_dim 32, q_dim 128 > hidden 96
    "gqa2-hd32-golden": Spec(_cfg(96, 4, 2, 32, vocab=256, mask=255), "golden", seed=7, lora_r=8),
    # GQA ratio 4, head_dim 64, q_dim 256 > hidden 128, larger rope_theta
    "gqa4-hd64-golden": Spec(_cfg(128, 4, 1, 64, vocab=300, mask=150, rope_theta=1e6), "golden", seed=5,
                             lora_r=6),
    # the golden checkpoint's shape, drawn with its recipe (a predictable model: drafts often agree)
    "gqa2-hd16-golden": Spec(_cfg(64, 4, 2, 16, vocab=256, mask=100), "golden", seed=0, lora_r=4),
    # every prediction certain (confidence 1.0)
    "certain": Spec(_cfg(64, 4, 2, 16, vocab=200, mask=199), "successor", seed=1),
}

PROPERTY_MODELS = ["gqa1-hd16-plain", "gqa2-hd32-golden", "gqa4-hd64-golden", "gqa2-hd16-golden"]
BLOCK_LENGTHS = (2, 4, 8, 32)
DRAFT_THRESHOLDS = (0.0, 0.7)
# prompt length -> max_new_tokens: 37 and 23 are multiples of no block length, 20 of 2 and 4, 32 of all
PROMPT_CASES = [(1, 20), (5, 37), (33, 32), (70, 23)]


class ModelBank:
    """Builds each checkpoint directory once (with its adapter in linear_spec_lora/) and loads it lazily."""

    def __init__(self, root):
        self.root = root
        self.loaded = {}
        self.succ = {}

    def directory(self, name) -> str:
        spec = SPECS[name]
        d = os.path.join(self.root, name)
        if os.path.isdir(d):
            return d
        cfg = spec.config
        if spec.weights == "plain":
            tensors = random_tensors(cfg, spec.seed)
        elif spec.weights == "golden":
            tensors = golden_recipe_tensors(cfg, spec.seed)
        else:
            tensors, self.succ[name] = successor_tensors(cfg, spec.seed)
        write_checkpoint(d, cfg, tensors)
        if spec.lora_r:
            write_lora_adapter(os.path.join(d, ADAPTER_DIR),
                               random_lora_tensors(cfg, spec.lora_r, seed=spec.seed + 100, b_std=spec.lora_b_std),
                               r=spec.lora_r, lora_alpha=spec.lora_alpha)
        return d

    def __call__(self, name):
        if name not in self.loaded:
            m = tridecode.load(self.directory(name), max_context=MAX_CONTEXT)   # lora="auto"
            assert (m.lora is not None) == bool(SPECS[name].lora_r)
            self.loaded[name] = m
        return self.loaded[name]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny and the tests run thousands of forwards: one CPU thread is fastest, and keeps
    the run time steady when other processes compete for the cores."""
    before = tridecode.num_threads()
    tridecode.set_num_threads(1)
    yield
    tridecode.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ModelBank(str(tmp_path_factory.mktemp("mode_properties")))


def make_prompt(cfg, n, seed):
    """n random token ids, none of them the mask id."""
    rng = np.random.default_rng(1000 + seed)
    ids = rng.integers(0, cfg.vocab_size, n)
    ids[ids == cfg.mask_token_id] = (cfg.mask_token_id + 1) % cfg.vocab_size
    return ids.tolist()


def ar_tokens(m, prompt, max_new):
    r = m.generate(prompt, "ar", max_new_tokens=max_new, eos_token_id=NO_EOS)
    assert len(r.tokens) == max_new and not r.stopped_on_eos
    return r.tokens


def self_spec(m, prompt, max_new, L, dt, lora):
    return m.generate(prompt, "self_spec", max_new_tokens=max_new, temperature=0.0, eos_token_id=NO_EOS,
                      block_length=L, draft_threshold=dt, use_lora=lora)


def check_self_spec_bookkeeping(r, max_new, L, dt, mask_id):
    """Output-length contract and per-cycle structure of one self-spec result (no EOS in play)."""
    where = f"(max_new_tokens={max_new}, L={L}, draft_threshold={dt})"
    assert len(r.tokens) == max_new, where
    assert not r.stopped_on_eos, where
    assert mask_id not in r.tokens, where
    acc, drafts = r.accepted_per_cycle, r.drafts_per_cycle
    assert len(acc) == len(drafts), where
    assert all(1 <= a <= L for a in acc), (acc, where)
    if dt == 0:
        assert drafts == [1] * len(acc), (drafts, where)
    else:
        assert all(1 <= d <= L - 1 for d in drafts), (drafts, where)
    # the prefill emits one token, cycle i emits acc[i]; the last cycle is the first to reach max_new_tokens
    if max_new == 1:
        assert acc == [], where
    else:
        assert acc, where
        assert 1 + sum(acc[:-1]) < max_new <= 1 + sum(acc), (acc, where)
    # prefill + (drafts + one verify) per cycle
    assert r.forwards == 1 + sum(d + 1 for d in drafts), where
    assert r.nfe == r.forwards, where


# ---------------------------------------------------------------------------------------------------------
# 1. greedy self-speculation == greedy AR
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_len,max_new", PROMPT_CASES)
@pytest.mark.parametrize("name", PROPERTY_MODELS)
def test_self_spec_equals_ar_at_temperature_zero(models, name, prompt_len, max_new):
    m = models(name)
    prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
    ar = ar_tokens(m, prompt, max_new)
    mismatches = []
    for L in BLOCK_LENGTHS:
        for dt in DRAFT_THRESHOLDS:
            for lora in (True, False):
                r = self_spec(m, prompt, max_new, L, dt, lora)
                check_self_spec_bookkeeping(r, max_new, L, dt, m.config.mask_token_id)
                if r.tokens != ar:
                    first = next(i for i, (a, b) in enumerate(zip(r.tokens, ar)) if a != b)
                    mismatches.append(f"L={L} draft_threshold={dt} use_lora={lora}: first difference at {first}")
    assert not mismatches, "self_spec != ar:\n" + "\n".join(mismatches)


def test_ar_outputs_are_prefixes_of_longer_runs(models):
    m = models("gqa2-hd16-golden")
    prompt = make_prompt(m.config, 5, seed=5)
    long = ar_tokens(m, prompt, 40)
    for n in (1, 20, 23, 37):
        assert ar_tokens(m, prompt, n) == long[:n]


@pytest.mark.parametrize("L", (2, 8, 32))
def test_self_spec_single_token_is_the_prefill_argmax(models, L):
    m = models("gqa2-hd16-golden")
    prompt = make_prompt(m.config, 33, seed=33)
    for dt in DRAFT_THRESHOLDS:
        r = self_spec(m, prompt, 1, L, dt, True)
        check_self_spec_bookkeeping(r, 1, L, dt, m.config.mask_token_id)
        assert r.tokens == ar_tokens(m, prompt, 1)
        assert r.nfe == 1


def test_self_spec_accepts_multi_token_runs(models):
    """On models whose drafts often agree with the verifier, cycles accept several tokens, and the output is
    still the AR output."""
    best, full_blocks = {}, 0
    for name in ("gqa2-hd16-golden", "gqa2-hd32-golden", "gqa4-hd64-golden"):
        m = models(name)
        for prompt_len, max_new in PROMPT_CASES:
            prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
            ar = ar_tokens(m, prompt, max_new)
            for L in (4, 8, 32):
                r = self_spec(m, prompt, max_new, L, 0.0, True)
                assert r.tokens == ar, (name, prompt_len, L)
                check_self_spec_bookkeeping(r, max_new, L, 0.0, m.config.mask_token_id)
                best[(name, prompt_len, L)] = max(r.accepted_per_cycle)
                full_blocks += sum(a == L for a in r.accepted_per_cycle)
    assert max(best.values()) >= 3, best
    assert full_blocks > 0, "no cycle accepted a whole block"
    assert sum(v > 1 for v in best.values()) >= len(best) // 3, best


def test_lora_adapter_changes_drafts_but_not_output(models):
    changed_cycles = 0
    changed_logits = 0.0
    for name in PROPERTY_MODELS:
        m = models(name)
        assert m.lora is not None and m.lora.rank == SPECS[name].lora_r
        assert m.lora.scale == pytest.approx(SPECS[name].lora_alpha / SPECS[name].lora_r)
        mask = m.config.mask_token_id
        for prompt_len, max_new in PROMPT_CASES:
            prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
            for L, dt in ((8, 0.0), (8, 0.7), (32, 0.0)):
                on = self_spec(m, prompt, max_new, L, dt, True)
                off = self_spec(m, prompt, max_new, L, dt, False)
                assert on.tokens == off.tokens
                if (on.accepted_per_cycle, on.drafts_per_cycle) != (off.accepted_per_cycle, off.drafts_per_cycle):
                    changed_cycles += 1
            # the draft forward itself: same cache, same block, adapter on vs off
            m.reset()
            seed = int(m.forward_select(prompt, "causal", logits="last")[0][0])
            block = np.full(8, mask, np.int32)
            block[0] = seed
            with_lora = m.forward(block, "bidirectional", use_lora=True)
            without = m.forward(block, "bidirectional", use_lora=False)
            changed_logits = max(changed_logits, float(np.abs(with_lora - without).max()))
            assert m.cache_length == len(prompt)
    assert changed_logits > 0.5, changed_logits
    assert changed_cycles > 0, "use_lora=True and use_lora=False gave the same cycles everywhere"


def test_adapter_defaults(models):
    """An attached adapter is used by default; a model loaded without one behaves as use_lora=False."""
    name = "gqa2-hd16-golden"
    m = models(name)
    bare = tridecode.load(models.directory(name), lora=None, max_context=MAX_CONTEXT)
    assert bare.lora is None
    prompt = make_prompt(m.config, 33, seed=33)
    default = m.generate(prompt, "self_spec", max_new_tokens=32, eos_token_id=NO_EOS, block_length=8)
    on = self_spec(m, prompt, 32, 8, 0.0, True)
    off = self_spec(m, prompt, 32, 8, 0.0, False)
    plain = bare.generate(prompt, "self_spec", max_new_tokens=32, eos_token_id=NO_EOS, block_length=8)
    assert (default.tokens, default.accepted_per_cycle) == (on.tokens, on.accepted_per_cycle)
    assert (plain.tokens, plain.accepted_per_cycle) == (off.tokens, off.accepted_per_cycle)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        bare.generate(prompt, "self_spec", max_new_tokens=4, eos_token_id=NO_EOS, use_lora=True)


# ---------------------------------------------------------------------------------------------------------
# 2. threshold 1.0 commits one token per denoising step
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", (2, 4, 8))
def test_diffusion_threshold_one_commits_one_token_per_step(models, L):
    m = models("gqa1-hd16-plain")
    for prompt_len in (1, 5, 33):
        prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
        blocks = 3
        r = m.generate(prompt, "diffusion", max_new_tokens=blocks * L, eos_token_id=NO_EOS, block_length=L,
                       threshold=1.0)
        assert len(r.tokens) == blocks * L and not r.stopped_on_eos
        assert m.config.mask_token_id not in r.tokens
        assert r.steps_per_block == [L - 1] * blocks
        assert r.nfe == blocks * ((L - 1) + 1)
        assert r.forwards == r.nfe + 1
        # one commit per step is also what the fixed schedule with L-1 steps does
        fixed = m.generate(prompt, "diffusion", max_new_tokens=blocks * L, eos_token_id=NO_EOS,
                           block_length=L, threshold=None, steps=L - 1)
        assert (fixed.tokens, fixed.steps_per_block, fixed.nfe) == (r.tokens, r.steps_per_block, r.nfe)
        # a last, partial block: denoising stops once the returned slots are filled
        need = {2: 1, 4: 3, 8: 5}[L]
        part = m.generate(prompt, "diffusion", max_new_tokens=2 * L + need, eos_token_id=NO_EOS,
                          block_length=L, threshold=1.0)
        assert len(part.tokens) == 2 * L + need
        assert part.tokens[:2 * L] == r.tokens[:2 * L]
        assert part.steps_per_block[:2] == [L - 1] * 2
        assert max(1, need - 1) <= part.steps_per_block[2] <= L - 1
        assert part.nfe == sum(part.steps_per_block) + 3


# ---------------------------------------------------------------------------------------------------------
# 3. a model whose every prediction is certain needs one denoising step per block
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", (2, 4, 8, 32))
def test_certain_model_denoises_each_block_in_one_step(models, L):
    name = "certain"
    m = models(name)
    succ = models.succ[name]
    mask = m.config.mask_token_id
    for prompt_len in (1, 33):
        prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
        # the premise: every slot of a bidirectional block is predicted with confidence ~1
        m.reset()
        seed_ids, seed_conf = m.forward_select(prompt, "causal", logits="last")
        assert seed_ids[0] == succ[prompt[-1]] and seed_conf[0] > 0.999
        block = np.full(L, mask, np.int32)
        block[0] = seed_ids[0]
        ids, conf = m.forward_select(block, "bidirectional")
        assert conf.min() >= 0.999, conf
        assert ids[0] == succ[block[0]] and (ids[1:] == succ[mask]).all()
        logits = m.forward(block, "bidirectional")
        top2 = np.sort(logits, axis=1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 50

        for max_new in (3 * L, 2 * L + 1):
            blocks = math.ceil(max_new / L)
            r = m.generate(prompt, "diffusion", max_new_tokens=max_new, eos_token_id=NO_EOS, block_length=L,
                           threshold=0.9)
            assert len(r.tokens) == max_new
            assert r.steps_per_block == [1] * blocks
            assert r.nfe == 2 * blocks
            # each block: its seed (the successor of the previous block's last token), then succ[mask]
            expect, last = [], prompt[-1]
            for _ in range(blocks):
                b = [int(succ[last])] + [int(succ[mask])] * (L - 1)
                expect += b
                last = b[-1]
            assert r.tokens == expect[:max_new]

    if L > 2:   # (with L = 2 a block has a single mask, so one step is all any model needs)
        # the same threshold on a model with flat confidences needs more than one step somewhere
        flat = models("gqa1-hd16-plain")
        r = flat.generate(make_prompt(flat.config, 5, seed=5), "diffusion", max_new_tokens=3 * L,
                          eos_token_id=NO_EOS, block_length=L, threshold=0.9)
        assert max(r.steps_per_block) > 1


# ---------------------------------------------------------------------------------------------------------
# 4. diffusion against an independent replay of the decoding loop
# ---------------------------------------------------------------------------------------------------------

def replay_diffusion(m, prompt, L, blocks, *, threshold=None, steps=None):
    """Block diffusion written out step by step: causal prefill -> seed; per block, bidirectional forwards
    of [seed, MASK...] committing slots by reference.select_commits until no mask is left, then a causal
    forward of the block that writes its K/V and whose last row gives the next seed.
    Returns (tokens, denoising steps per block, commits per step per block)."""
    mask = m.config.mask_token_id
    schedule = None if threshold is not None else reference.fixed_schedule(L - 1, steps)
    m.reset()
    seed = int(m.forward_select(prompt, "causal", logits="last")[0][0])
    tokens, steps_per_block, commits = [], [], []
    for _ in range(blocks):
        x = np.full(L, mask, np.int64)
        x[0] = seed
        masked = np.arange(L) > 0
        counts = []
        while masked.any():
            assert len(counts) < L - 1
            cache = m.cache_length
            idx, conf = m.forward_select(x, "bidirectional")
            assert m.cache_length == cache            # a bidirectional forward never writes the cache
            if schedule is None:
                commit = reference.select_commits(conf, masked, threshold=threshold)
            else:
                commit = reference.select_commits(conf, masked, k=schedule[len(counts)])
            assert commit.any() and not (commit & ~masked).any()
            x[commit] = idx[commit]
            masked &= ~commit
            counts.append(int(commit.sum()))
        cache = m.cache_length
        seed = int(m.forward_select(x, "causal", logits="last")[0][0])
        assert m.cache_length == cache + L
        tokens += x.tolist()
        steps_per_block.append(len(counts))
        commits.append(counts)
    return tokens, steps_per_block, commits


def test_fixed_schedule_spreads_commits_evenly():
    for masks in (1, 3, 7, 31):
        for s in range(1, masks + 1):
            sched = reference.fixed_schedule(masks, s)
            assert len(sched) == s and sum(sched) == masks
            assert sched == sorted(sched, reverse=True) and sched[0] - sched[-1] <= 1
            assert sched[0] == math.ceil(masks / s) and sched[-1] == masks // s


@pytest.mark.parametrize("steps", (1, 2, 3, 7))
def test_fixed_schedule_matches_replay(models, steps):
    L = 8
    m = models("gqa2-hd16-golden")
    for prompt_len in (1, 33, 70):
        prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
        tokens, steps_per_block, commits = replay_diffusion(m, prompt, L, 2, steps=steps)
        assert commits == [reference.fixed_schedule(L - 1, steps)] * 2
        for blocks in (1, 2):
            r = m.generate(prompt, "diffusion", max_new_tokens=blocks * L, eos_token_id=NO_EOS, block_length=L,
                           threshold=None, steps=steps)
            assert r.tokens == tokens[:blocks * L], (prompt_len, blocks)
            assert r.steps_per_block == steps_per_block[:blocks] == [steps] * blocks
            assert r.nfe == blocks * (steps + 1)
        # a partial last block may stop early, never late
        r = m.generate(prompt, "diffusion", max_new_tokens=L + 3, eos_token_id=NO_EOS, block_length=L,
                       threshold=None, steps=steps)
        assert r.tokens == tokens[:L + 3]
        assert r.steps_per_block[0] == steps and 1 <= r.steps_per_block[1] <= steps


@pytest.mark.parametrize("L", (4, 8))
def test_threshold_mode_matches_replay(models, L):
    threshold = 0.6
    per_step = []
    for name in ("gqa2-hd16-golden", "gqa4-hd64-golden"):
        m = models(name)
        for prompt_len in (1, 5, 33, 70):
            prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
            tokens, steps_per_block, commits = replay_diffusion(m, prompt, L, 2, threshold=threshold)
            r = m.generate(prompt, "diffusion", max_new_tokens=2 * L, eos_token_id=NO_EOS, block_length=L,
                           threshold=threshold)
            assert r.tokens == tokens, (name, prompt_len)
            assert r.steps_per_block == steps_per_block, (name, prompt_len)
            assert r.nfe == sum(steps_per_block) + 2
            per_step += [c for block in commits for c in block]
    # both halves of the rule were used: steps that committed only the top slot, and steps that took more
    assert 1 in per_step and max(per_step) > 1, per_step


# ---------------------------------------------------------------------------------------------------------
# 5. self-speculation against an independent replay
# ---------------------------------------------------------------------------------------------------------

def replay_self_spec(m, prompt, L, max_new, draft_threshold, use_lora):
    """Self-speculation written out: causal prefill -> pending token; per cycle, bidirectional drafts of
    [pending, MASK...] (adapter on when asked), a causal verify of the block that writes its L K/V, accept
    the matched prefix plus the verifier's next token, crop the cache to the accepted length.
    Returns (tokens, accepted per cycle, drafts per cycle, forwards, final cache length, draft slots the
    adapter changed)."""
    mask = m.config.mask_token_id
    m.reset()
    pending = int(m.forward_select(prompt, "causal", logits="last")[0][0])
    forwards = 1
    out = [pending]
    accepted, drafts = [], []
    lora_changed = 0
    while len(out) < max_new:
        base = m.cache_length
        block = np.full(L, mask, np.int64)
        block[0] = pending
        masked = np.arange(L) > 0
        n = 0
        while masked.any():
            idx, conf = m.forward_select(block, "bidirectional", use_lora=use_lora)
            if n == 0 and m.lora is not None:
                other, _ = m.forward_select(block, "bidirectional", use_lora=not use_lora)
                lora_changed += int((other[1:] != idx[1:]).sum())
            n += 1
            forwards += 1
            if draft_threshold == 0:
                commit = masked.copy()
            else:
                commit = reference.select_commits(conf, masked, threshold=draft_threshold)
            block[commit] = idx[commit]
            masked &= ~commit
        assert m.cache_length == base
        target, _ = m.forward_select(block, "causal")
        forwards += 1
        assert m.cache_length == base + L
        c = reference.accept_length(block, target)
        assert all(target[j] == block[j + 1] for j in range(c))
        assert c == L - 1 or target[c] != block[c + 1]
        m.crop(base + c + 1)
        assert m.cache_length == base + c + 1
        pending = int(target[c])
        out += [int(t) for t in target[:c + 1]]
        accepted.append(c + 1)
        drafts.append(n)
    return out[:max_new], accepted, drafts, forwards, m.cache_length, lora_changed


@pytest.mark.parametrize("L,draft_threshold", [(4, 0.0), (8, 0.0), (8, 0.7), (32, 0.0), (32, 0.7)])
def test_self_spec_matches_replay(models, L, draft_threshold):
    changed = 0
    for name in ("gqa2-hd16-golden", "gqa2-hd32-golden"):
        m = models(name)
        for prompt_len, max_new in ((1, 20), (5, 37), (70, 23)):
            prompt = make_prompt(m.config, prompt_len, seed=prompt_len)
            for use_lora in (True, False):
                r = self_spec(m, prompt, max_new, L, draft_threshold, use_lora)
                lib_cache = m.cache_length
                tokens, accepted, drafts, forwards, cache, lora_changed = replay_self_spec(
                    m, prompt, L, max_new, draft_threshold, use_lora)
                where = (name, prompt_len, use_lora)
                assert r.tokens == tokens, where
                assert r.accepted_per_cycle == accepted, where
                assert r.drafts_per_cycle == drafts, where
                assert r.nfe == r.forwards == forwards, where
                assert lib_cache == cache, where
                assert tokens == ar_tokens(m, prompt, max_new), where
                changed += lora_changed
    assert changed > 0, "the adapter changed no draft slot"

"""The training recipe: the doubled-sequence mask against a brute-force construction, a few-step run on
a toy corpus whose loss goes down, and the written checkpoint loaded by tridecode giving the training
model's own logits in both attention patterns."""

import json
import os

import numpy as np
import pytest
import torch

import tridecode
from tridecode.train.__main__ import main as train_main
from tridecode.train.masks import doubled_mask, doubled_positions
from tridecode.train.objective import maskable


def brute_force_mask(n, block, offset=0):
    """Straight from the recipe: entry [q, k] of the [x_t | x_0] sequence (q, k in 0..2n-1), blocks of the
    noisy copy starting at `offset` (the prefix before it is block -1)."""
    def blk(i):
        return (i - offset) // block            # Python floors: -1 for the prefix

    m = np.zeros((2 * n, 2 * n), bool)
    for q in range(2 * n):
        for k in range(2 * n):
            q_noisy, k_noisy = q < n, k < n
            qi, ki = q % n, k % n
            if q_noisy and k_noisy:
                m[q, k] = blk(qi) == blk(ki)                  # own block, both directions
            elif q_noisy and not k_noisy:
                m[q, k] = ki < offset + blk(qi) * block       # clean tokens before the block starts
            elif not q_noisy and not k_noisy:
                m[q, k] = ki <= qi                            # clean stream: causal
            else:
                m[q, k] = False                               # clean never sees noisy
    return m


@pytest.mark.parametrize("n,block", [(8, 4), (12, 4), (16, 8), (10, 5), (6, 1), (8, 8)])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_doubled_mask_matches_brute_force(n, block, offset):
    assert (doubled_mask(n, block, offset).numpy() == brute_force_mask(n, block, offset)).all()
    assert doubled_positions(n).tolist() == list(range(n)) * 2


def test_block_seeds_and_the_prefix_are_never_masked():
    keep = maskable(12, 4, torch.tensor([0, 3]), torch.tensor([[True] * 12, [True] * 10 + [False] * 2]))
    assert keep[0].tolist() == [False, True, True, True] * 3
    F, T = False, True
    assert keep[1].tolist() == [F, F, F, F, T, T, T, F, T, T, F, F]   # prefix, seed, slots, seed, slots, invalid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    corpus = root / "corpus"
    corpus.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(12):
        lines = [" ".join(words[(i + j + k) % 8] for k in range(6)) + "." for j in range(80)]
        (corpus / f"doc{i:02d}.txt").write_text("\n".join(lines))
    out = root / "model"
    torch.set_num_threads(2)
    rc = train_main(["--out", str(out), "--corpus", str(corpus), "--vocab-size", "300", "--hidden", "64",
                     "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--intermediate",
                     "128", "--seq-len", "32", "--block-size", "8", "--batch", "8", "--ar-steps", "40",
                     "--joint-steps", "60", "--lr", "3e-3", "--log-every", "1000"])
    assert rc == 0
    return out


def test_loss_goes_down(trained):
    curve = json.load(open(trained / "loss_curve.json"))
    ar = [c["ar"] for c in curve if c["stage"] == "ar"]
    joint = [c for c in curve if c["stage"] == "joint"]
    assert np.mean(ar[-5:]) < np.mean(ar[:5]) - 1.0
    assert np.mean([c["diff"] for c in joint[-10:]]) < np.mean([c["diff"] for c in joint[:10]])
    assert np.mean([c["ar"] for c in joint[-10:]]) < np.mean(ar[:5])


def test_checkpoint_is_loadable_and_matches_the_training_model(trained):
    from safetensors.torch import load_file
    from tridecode.train.model import Shape, TriModeLM

    m = tridecode.load(trained)
    cfg = m.config
    assert cfg.model_type == "nemotron_labs_diffusion" and cfg.mask_token_id == 3 and cfg.raw["block_size"] == 8
    assert m.tokenizer is not None and os.path.exists(trained / "heldout.txt")
    shape = Shape(vocab_size=cfg.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128)
    tm = TriModeLM(shape)
    tm.load_state_dict(load_file(str(trained / "model.safetensors")))
    tm.eval()

    ids = m.encode("alpha beta gamma delta epsilon zeta eta theta " * 3)[:16]
    assert len(ids) == 16
    B = 8
    with torch.no_grad():
        # causal: the clean stream
        n = len(ids)
        ref = tm(torch.tensor([ids]), torch.arange(n), torch.tril(torch.ones(n, n, dtype=torch.bool)))[0].numpy()
        m.reset()
        got = m.forward(ids, mode="causal")
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        # bidirectional block after a block-aligned prompt == the noisy stream of the doubled sequence
        block = [ids[-1]] + [3] * (B - 1)
        x0 = ids + [5] * B                     # the clean twin of the last block is never visible to it
        xt = [7] * n + block                   # earlier noisy blocks are never visible to it either
        N = n + B
        full = tm(torch.tensor([xt + x0]), doubled_positions(N), doubled_mask(N, B))[0].numpy()
        want = full[n:N]
    got = m.forward(block, mode="bidirectional")
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_trained_model_generates_in_every_mode(trained):
    m = tridecode.load(trained)
    prompt = m.encode("alpha beta gamma delta")
    ar = m.generate(prompt, mode="ar", max_new_tokens=24, eos_token_id=[]).tokens
    assert m.generate(prompt, mode="self_spec", max_new_tokens=24, block_length=8, eos_token_id=[]).tokens == ar
    d = m.generate(prompt, mode="diffusion", max_new_tokens=24, block_length=8, eos_token_id=[])
    assert len(d.tokens) == 24 and 3 not in d.tokens


def test_bad_arguments():
    assert train_main(["--out", "/tmp/x", "--seq-len", "30", "--block-size", "8"]) == 2


def test_cut_loop():
    from tridecode.train.distill import cut_loop
    assert cut_loop([1, 2, 3, 4, 5, 1, 2, 3, 4, 9], 4) == [1, 2, 3, 4, 5]
    assert cut_loop([1, 2, 3, 4], 4) == [1, 2, 3, 4]
    assert cut_loop([7, 7, 7, 7, 7], 2) == [7]
    assert cut_loop([1, 1, 1], 0) == [1, 1, 1]


@pytest.fixture(scope="module")
def distilled(trained, tmp_path_factory):
    corpus = trained.parent / "corpus"
    out = tmp_path_factory.mktemp("distill") / "model"
    common = ["--corpus", str(corpus), "--continuations", "60", "--prefix-min", "4", "--prefix-max", "12",
              "--cont-len", "24", "--loop-ngram", "0", "--batch", "8", "--log-every", "1000"]
    assert train_main(["distill", "--init", str(trained), "--out", str(out), "--steps", "40", "--ar-batch", "8",
                       "--seq-len", "32", *common]) == 0
    assert train_main(["lora", "--init", str(out), "--steps", "40", "--rank", "4", "--lora-alpha", "8",
                       "--lr", "3e-3", *common]) == 0
    return out


def test_distill_and_lora_stages_write_a_loadable_model(distilled):
    m = tridecode.load(distilled)
    assert m.lora is not None and m.lora.rank == 4 and m.lora.scale == 2.0
    cfg = json.load(open(distilled / "config.json"))
    t = cfg["training"]
    assert t["command"].startswith("python -m tridecode.train distill") and t["base"]["command"]
    assert 0 < t["teacher"]["distinct_ratio"] <= 1 and "heldout_ar_loss" in t and "heldout_ar_loss_before" in t
    assert os.path.exists(distilled / "heldout.txt") and os.path.exists(distilled / "loss_curve.json")
    prompt = m.encode("alpha beta gamma delta")
    ar = m.generate(prompt, mode="ar", max_new_tokens=24, eos_token_id=[]).tokens
    for use_lora in (True, False):
        assert m.generate(prompt, mode="self_spec", max_new_tokens=24, use_lora=use_lora, eos_token_id=[]).tokens == ar


def test_the_lora_adapter_is_the_one_trained(distilled):
    """tridecode's draft pass with the adapter equals the training model's noisy rows with the adapter."""
    from safetensors.torch import load_file
    from tridecode.train import checkpoint

    m = tridecode.load(distilled)
    tm, tok, cfg = checkpoint.load(str(distilled))
    ad = json.load(open(distilled / "linear_spec_lora" / "adapter_config.json"))
    tm.add_lora(ad["r"], ad["lora_alpha"])
    w = load_file(str(distilled / "linear_spec_lora" / "adapter_model.safetensors"))
    for i, layer in enumerate(tm.encoder.layers):
        base = f"base_model.model.encoder.layers.{i}.self_attn.o_proj"
        layer.self_attn.lora_A.weight.data.copy_(w[f"{base}.lora_A.weight"])
        layer.self_attn.lora_B.weight.data.copy_(w[f"{base}.lora_B.weight"])
    assert float(w["base_model.model.encoder.layers.0.self_attn.o_proj.lora_B.weight"].abs().max()) > 0   # trained
    tm.eval()
    ids = m.encode("alpha beta gamma delta epsilon zeta eta")[:10]
    B = cfg["block_size"]
    block = [ids[-1]] + [3] * (B - 1)
    n = len(ids)
    N = n + B
    with torch.no_grad():
        full = tm(torch.tensor([[7] * n + block + ids + [5] * B]), doubled_positions(N), doubled_mask(N, B, n),
                  lora_rows=N)[0].numpy()
    m.reset()
    m.forward(ids, mode="causal")
    got = m.forward(block, mode="bidirectional", use_lora=True)
    want = full[n:N]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    plain = m.forward(block, mode="bidirectional", use_lora=False)
    assert np.abs(plain - want).max() > 1e-3 * np.abs(want).max()     # the adapter does change drafts


def test_a_resumed_run_continues_the_same_schedule(tmp_path, trained):
    corpus = trained.parent / "corpus"
    common = ["--corpus", str(corpus), "--vocab-size", "300", "--hidden", "32", "--layers", "1", "--heads", "2",
              "--kv-heads", "1", "--head-dim", "16", "--intermediate", "64", "--seq-len", "16", "--block-size", "4",
              "--batch", "4", "--ar-steps", "6", "--joint-steps", "6", "--lr", "3e-3", "--log-every", "1000"]
    assert train_main(["--out", str(tmp_path / "whole"), *common]) == 0
    assert train_main(["--out", str(tmp_path / "half"), "--stop-after", "7", "--save-state", *common]) == 0
    assert train_main(["--out", str(tmp_path / "rest"), "--resume", str(tmp_path / "half"), *common]) == 0
    whole = json.load(open(tmp_path / "whole" / "loss_curve.json"))
    rest = json.load(open(tmp_path / "rest" / "loss_curve.json"))
    np.testing.assert_allclose([c["loss"] for c in rest], [c["loss"] for c in whole], rtol=1e-5)


def test_the_block_length_follows_the_checkpoint(trained):
    m = tridecode.load(trained)
    assert m.config.block_size == 8 and m.default_block_length == 8
    res = m.generate(m.encode("alpha beta"), mode="diffusion", max_new_tokens=24, eos_token_id=[])
    assert len(res.steps_per_block) == 3          # 24 tokens in blocks of 8



def test_the_distill_stage_is_deterministic(trained, tmp_path):
    corpus = trained.parent / "corpus"
    args = ["distill", "--init", str(trained), "--corpus", str(corpus), "--continuations", "20", "--prefix-min", "4",
            "--prefix-max", "12", "--cont-len", "16", "--loop-ngram", "0", "--batch", "4", "--ar-batch", "4",
            "--seq-len", "32", "--steps", "5", "--log-every", "1000"]
    curves = []
    for run in ("a", "b"):
        assert train_main(args + ["--out", str(tmp_path / run)]) == 0
        curves.append(json.load(open(tmp_path / run / "loss_curve.json")))
    assert [c["loss"] for c in curves[0]] == [c["loss"] for c in curves[1]]
    a, b = (json.load(open(tmp_path / r / "config.json"))["training"]["teacher"] for r in "ab")
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_distill_can_continue_the_base_schedule(trained, tmp_path):
    """A base stopped before the end of its cosine (saving its state) hands its optimizer and learning rate
    to the distill stage, which runs the rest of the schedule instead of warming up again."""
    corpus = trained.parent / "corpus"
    base = ["--corpus", str(corpus), "--vocab-size", "300", "--hidden", "32", "--layers", "1", "--heads", "2",
            "--kv-heads", "1", "--head-dim", "16", "--intermediate", "64", "--seq-len", "32", "--block-size", "8",
            "--batch", "4", "--ar-steps", "6", "--joint-steps", "14", "--lr", "3e-3", "--log-every", "1000"]
    assert train_main(["--out", str(tmp_path / "base"), "--stop-after", "12", "--save-state", *base]) == 0
    state = torch.load(tmp_path / "base" / "train_state.pt", weights_only=False)
    assert state["step"] == 12 and state["total"] == 20
    assert train_main(["distill", "--init", str(tmp_path / "base"), "--out", str(tmp_path / "d"), "--corpus",
                       str(corpus), "--continuations", "20", "--prefix-min", "4", "--prefix-max", "12", "--cont-len",
                       "16", "--loop-ngram", "0", "--batch", "4", "--ar-batch", "4", "--seq-len", "32",
                       "--continue-schedule", "--log-every", "1000"]) == 0
    curve = json.load(open(tmp_path / "d" / "loss_curve.json"))
    assert len(curve) == 8          # the 8 steps left of the base's 20


def test_eval_reports_the_held_out_loss_the_stage_recorded(trained, distilled, capsys):
    corpus = trained.parent / "corpus"
    recorded = json.load(open(distilled / "config.json"))["training"]["heldout_ar_loss"]
    capsys.readouterr()
    assert train_main(["eval", "--init", str(distilled), "--corpus", str(corpus)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    got = float(line.split("held-out AR loss ")[1].split()[0])
    assert got == pytest.approx(recorded, abs=2e-4), line
    assert train_main(["eval", "--init", str(distilled), "--corpus", str(distilled)]) == 1   # another corpus

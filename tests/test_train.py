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


def brute_force_mask(n, block):
    """Straight from the recipe: entry [q, k] of the [x_t | x_0] sequence (q, k in 0..2n-1)."""
    m = np.zeros((2 * n, 2 * n), bool)
    for q in range(2 * n):
        for k in range(2 * n):
            q_noisy, k_noisy = q < n, k < n
            qi, ki = q % n, k % n
            if q_noisy and k_noisy:
                m[q, k] = qi // block == ki // block          # own block, both directions
            elif q_noisy and not k_noisy:
                m[q, k] = ki // block < qi // block           # earlier clean blocks only
            elif not q_noisy and not k_noisy:
                m[q, k] = ki <= qi                            # clean stream: causal
            else:
                m[q, k] = False                               # clean never sees noisy
    return m


@pytest.mark.parametrize("n,block", [(8, 4), (12, 4), (16, 8), (10, 5), (6, 1), (8, 8)])
def test_doubled_mask_matches_brute_force(n, block):
    assert (doubled_mask(n, block).numpy() == brute_force_mask(n, block)).all()
    assert doubled_positions(n).tolist() == list(range(n)) * 2


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

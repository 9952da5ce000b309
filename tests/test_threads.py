"""A Model shared between threads: calls are serialized by model.lock, a whole generate() is one call, and
every result equals the single-threaded one. Different models run at the same time."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import tridecode

from golden import GOLDEN_DIR, PROMPTS

MODES = [dict(mode="ar"), dict(mode="diffusion", block_length=8), dict(mode="self_spec", block_length=8),
         dict(mode="self_spec", block_length=4, use_lora=False), dict(mode="ar", temperature=0.8, seed=3),
         dict(mode="diffusion", block_length=4, temperature=0.7, seed=5)]


@pytest.fixture(scope="module")
def model():
    return tridecode.load(GOLDEN_DIR)


@pytest.fixture(scope="module")
def expected(model):
    """Single-threaded results: generate per (prompt, mode) and logits per chunk length."""
    gen = {(p, i): model.generate(PROMPTS[p], max_new_tokens=12, **kw).tokens
           for p in range(len(PROMPTS)) for i, kw in enumerate(MODES)}
    chunk = [int(t) % 90 + 1 for t in range(64)]
    logits = {}
    for n in (1, 5, 17, 40, 64):
        model.reset()
        logits[n] = model.forward(chunk[:n])
    return gen, chunk, logits


def run_threads(targets, timeout=300):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:   # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish: deadlock?"
    if errors:
        raise errors[0]


def test_forwards_on_growing_chunks_beside_generate_in_every_mode(model, expected):
    gen, chunk, logits = expected
    rounds = 12

    def forwards():
        for r in range(rounds):
            for n in (1, 5, 17, 40, 64):
                with model.lock:                 # reset + forward as one unit
                    model.reset()
                    got = model.forward(chunk[:n])
                np.testing.assert_array_equal(got, logits[n])
                # and single calls that never hold the lock across calls: no crash, right shape
                out = model.forward(chunk[:n], write_cache=False, start_pos=0)
                assert out.shape == (n, model.config.vocab_size) and np.isfinite(out).all()

    def generates():
        for r in range(rounds // 2):
            for (p, i), want in gen.items():
                assert model.generate(PROMPTS[p], max_new_tokens=12, **MODES[i]).tokens == want, (p, MODES[i])

    def meddler():
        for r in range(rounds * 20):
            model.crop(0) if r % 2 else model.reset()
            assert model.cache_length >= 0

    run_threads([forwards, generates, meddler])


def test_many_threads_generating_on_one_model(model, expected):
    gen, _, _ = expected
    keys = list(gen)

    def worker(k):
        def run():
            for j in range(4):
                p, i = keys[(k * 7 + j * 3) % len(keys)]
                assert model.generate(PROMPTS[p], max_new_tokens=12, **MODES[i]).tokens == gen[(p, i)]
        return run

    run_threads([worker(k) for k in range(8)])


def test_a_streaming_callback_may_use_the_same_model(model, expected):
    gen, _, _ = expected
    seen = []

    def on_tokens(run):   # runs inside generate(), holding the (reentrant) lock
        seen.append((list(run), model.cache_length))

    res = model.generate(PROMPTS[0], max_new_tokens=12, on_tokens=on_tokens, **MODES[0])
    assert res.tokens == gen[(0, 0)] and sum(len(r) for r, _ in seen) == len(res.tokens)


def test_different_models_run_at_the_same_time(model, expected):
    gen, _, _ = expected
    other = tridecode.load(GOLDEN_DIR)
    done = threading.Event()

    def use_other():
        assert other.generate(PROMPTS[2], max_new_tokens=12, **MODES[1]).tokens == gen[(2, 1)]
        done.set()

    with model.lock:   # holding one model's lock does not stop another model
        t = threading.Thread(target=use_other)
        t.start()
        assert done.wait(120), "a second model waited for the first model's lock"
        t.join()

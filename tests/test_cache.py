"""KV-cache semantics: chunking, crop/rollback, read-only passes, capacity, explicit positions."""

import numpy as np
import pytest

import tridecode

from golden import GOLDEN_DIR, PROMPTS

SEQ = PROMPTS[4]   # 70 tokens


@pytest.fixture()
def model():
    return tridecode.load(GOLDEN_DIR, max_context=128)


def test_chunked_prefill_equals_one_prefill(model):
    full = model.forward(SEQ, mode="causal")
    model.reset()
    parts = []
    for a, b in [(0, 13), (13, 14), (14, 45), (45, 70)]:
        parts.append(model.forward(SEQ[a:b], mode="causal"))
        assert model.cache_length == b
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=0, atol=2e-5)


def test_crop_then_reforward_equals_never_having_forwarded(model):
    model.forward(SEQ[:30], mode="causal")
    clean = model.forward(SEQ[30:40], mode="causal", write_cache=False)
    model.forward([5, 6, 7, 8, 9, 10], mode="causal")        # rejected tokens
    assert model.cache_length == 36
    model.crop(30)
    assert model.cache_length == 30
    again = model.forward(SEQ[30:40], mode="causal")
    np.testing.assert_array_equal(again, clean)


def test_bidirectional_reads_but_never_writes(model):
    model.forward(SEQ[:20], mode="causal")
    block = [17, 100, 100, 100, 100, 100, 100, 100]
    b1 = model.forward(block, mode="bidirectional")
    assert model.cache_length == 20
    b2 = model.forward(block, mode="bidirectional")
    np.testing.assert_array_equal(b1, b2)
    # The cache content is intact: the next causal chunk matches a fresh run.
    nxt = model.forward(SEQ[20:30], mode="causal")
    model.reset()
    model.forward(SEQ[:20], mode="causal")
    np.testing.assert_array_equal(nxt, model.forward(SEQ[20:30], mode="causal"))
    # Bidirectional logits differ from causal ones (the pattern is really different).
    model.crop(20)
    c = model.forward(block, mode="causal", write_cache=False)
    assert np.abs(c[:-1] - b1[:-1]).max() > 1e-3


def test_causal_without_write_leaves_the_cache(model):
    model.forward(SEQ[:10], mode="causal")
    model.forward(SEQ[10:20], mode="causal", write_cache=False)
    assert model.cache_length == 10


def test_explicit_start_position(model):
    a = model.forward(SEQ[:8], mode="causal", write_cache=False)
    b = model.forward(SEQ[:8], mode="causal", write_cache=False, start_pos=0)
    np.testing.assert_array_equal(a, b)
    # RoPE is relative: shifting a whole chunk (no cache) changes nothing below the query-scale threshold ...
    c = model.forward(SEQ[:8], mode="causal", write_cache=False, start_pos=1000)
    np.testing.assert_allclose(c, a, atol=5e-4)
    # ... but past 16384 the llama-4 query scale makes attention sharper.
    d = model.forward(SEQ[:8], mode="causal", write_cache=False, start_pos=40000)
    assert np.abs(d - a).max() > 1e-2
    # Against a cached prefix, the distance to the cached keys changes, and so do the logits.
    model.forward(SEQ[:8], mode="causal")
    near = model.forward(SEQ[8:16], mode="causal", write_cache=False)
    far = model.forward(SEQ[8:16], mode="causal", write_cache=False, start_pos=1000)
    assert np.abs(far - near).max() > 1e-2


def test_capacity_errors(model):
    with pytest.raises(ValueError, match="capacity"):
        model.forward(list(range(2, 131)), mode="causal")
    model.forward(SEQ, mode="causal")
    with pytest.raises(ValueError, match="capacity"):
        model.forward(SEQ, mode="causal")
    assert model.cache_length == 70
    with pytest.raises(ValueError, match="capacity"):
        model.generate(SEQ, max_new_tokens=100)
    res = model.generate(SEQ, max_new_tokens=59)   # 70 + 59 - 1 = 128 cached tokens fits exactly
    assert len(res.tokens) == 59


def test_crop_and_forward_reject_bad_arguments(model):
    model.forward(SEQ[:5], mode="causal")
    with pytest.raises(ValueError, match="crop"):
        model.crop(6)
    with pytest.raises(ValueError, match="crop"):
        model.crop(-1)
    with pytest.raises(ValueError, match="bidirectional forward cannot write"):
        model.forward([1, 2], mode="bidirectional", write_cache=True)
    with pytest.raises(ValueError, match="mode"):
        model.forward([1, 2], mode="sideways")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward([1, 256])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward([-1])
    with pytest.raises(ValueError, match="empty"):
        model.forward([])
    with pytest.raises(ValueError, match="1-D"):
        model.forward([[1, 2]])
    with pytest.raises(ValueError, match="start_pos"):
        model.forward([1], start_pos=-3)
    with pytest.raises(ValueError, match="integers"):
        model.forward([1.5, 2.0])
    with pytest.raises(ValueError, match="logits"):
        model.forward([1], logits="first")
    assert model.cache_length == 5


def test_random_cache_rows_act_like_cached_tokens(model):
    """append_random_cache(n) stands for n cached tokens (benchmarks over a long context): a forward sees
    the rows, the same seeds give the same rows, and the room is checked."""
    base = model.forward([5, 6, 7], mode="causal", write_cache=False, logits="last")
    model.append_random_cache(100, seed=4)
    assert model.cache_length == 100
    got = model.forward([5, 6, 7], mode="causal", write_cache=False, logits="last")
    assert not np.allclose(got, base)
    model.reset()
    model.append_random_cache(60, seed=4)
    model.append_random_cache(40, seed=5)
    other = model.forward([5, 6, 7], mode="causal", write_cache=False, logits="last")
    model.reset()
    model.append_random_cache(60, seed=4)
    model.append_random_cache(40, seed=5)
    np.testing.assert_array_equal(model.forward([5, 6, 7], mode="causal", write_cache=False, logits="last"), other)
    with pytest.raises(ValueError, match="capacity is 128"):
        model.append_random_cache(29)
    with pytest.raises(ValueError, match="append_random_cache: n"):
        model.append_random_cache(-1)
    model.append_random_cache(28)
    assert model.cache_length == 128

"""Stop strings, the streaming iterator, cancellation and per-token logprobs, in every mode, on the shipped
model (which has a tokenizer)."""

import math
import threading

import numpy as np
import pytest

import tridecode
from tridecode.params import DEFAULTS, normalize_mode
from tridecode.text import TextTracker

from golden import GOLDEN_DIR

PROMPT = "def add(a, b):"
MODES = [dict(mode="ar"), dict(mode="diffusion"), dict(mode="self_spec"), dict(mode="diffusion", block_length=8),
         dict(mode="self_spec", block_length=8)]


@pytest.fixture(scope="module")
def model():
    return tridecode.load(tridecode.default_model_path())


def _first_match_tokens(model, tokens, stop):
    """The shortest prefix of tokens whose decoded text holds stop (the tokenizer's own decode)."""
    for j in range(1, len(tokens) + 1):
        if stop in model.decode(tokens[:j]):
            return j
    return None


def _stops(text, tokens, model):
    """Stop strings taken from the output: one inside a token, one spanning a token boundary, one of a
    single character late in the text."""
    pieces = [model.decode(tokens[:j]) for j in range(len(tokens) + 1)]
    out = []
    for j in range(2, len(tokens)):
        a, b = len(pieces[j]), len(pieces[j + 1])
        if b - a >= 3 and text[a + 1:b].strip():
            out.append(text[a + 1:b])          # starts inside token j
            break
    for j in range(3, len(tokens) - 1):
        a = len(pieces[j])
        s = text[a - 2:a + 2]
        if s.strip() and len(s) == 4:
            out.append(s)                      # spans tokens j-1 and j
            break
    out.append(text.rstrip()[-1])
    return out


@pytest.mark.parametrize("kw", MODES, ids=lambda k: "-".join(map(str, k.values())))
def test_stop_strings_cut_the_output_before_the_first_match(model, kw):
    full = model.generate(PROMPT, max_new_tokens=48, **kw)
    assert full.finish_reason == "length" and full.stop_string is None
    stops = _stops(full.text, full.tokens, model)
    assert len(stops) == 3
    for stop in stops:
        r = model.generate(PROMPT, max_new_tokens=48, stop=stop, **kw)
        j = _first_match_tokens(model, full.tokens, stop)
        assert r.tokens == full.tokens[:j], stop
        assert r.text == full.text[:full.text.find(stop)]
        assert r.finish_reason == "stop" and r.stop_string == stop
    # Several: the earliest match wins, wherever it is in the list.
    r = model.generate(PROMPT, max_new_tokens=48, stop=[stops[2], stops[0]], **kw)
    first = min(stops[0], stops[2], key=full.text.find)
    assert r.stop_string == first and r.text == full.text[:full.text.find(first)]
    # A stop string that never appears changes nothing.
    r = model.generate(PROMPT, max_new_tokens=48, stop=["\x00never"], **kw)
    assert r.tokens == full.tokens and r.text == full.text and r.finish_reason == "length"


def test_followed_text_is_the_decoded_tokens(model):
    """The text followed token by token (for chunks and stop strings) is the one decode of all tokens."""
    for kw in MODES:
        chunks = []
        r = model.generate(PROMPT, max_new_tokens=64, on_chunk=chunks.append, **kw)
        assert r.text == model.decode(r.tokens) == "".join(c.text for c in chunks)


@pytest.mark.parametrize("kw", MODES[:3], ids=lambda k: k["mode"])
def test_stream_adds_up_to_generate(model, kw):
    full = model.generate(PROMPT, max_new_tokens=40, **kw)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    for args in (dict(), dict(stop=stop), dict(stop=[stop[0] + "\x00", stop])):   # a held-back prefix, too
        ref = model.generate(PROMPT, max_new_tokens=40, **args, **kw)
        s = model.stream(PROMPT, max_new_tokens=40, **args, **kw)
        chunks = list(s)
        assert "".join(c.text for c in chunks) == ref.text
        assert [t for c in chunks for t in c.tokens] == ref.tokens == s.result.tokens
        assert s.result.text == ref.text and s.result.finish_reason == ref.finish_reason
        if not args:
            assert sum(1 for c in chunks if c.tokens) > 1


def test_stream_with_sampling_matches_generate_for_a_seed(model):
    for kw in MODES[:3]:
        ref = model.generate(PROMPT, max_new_tokens=24, temperature=0.9, seed=7, **kw)
        s = model.stream(PROMPT, max_new_tokens=24, temperature=0.9, seed=7, **kw)
        assert "".join(c.text for c in s) == ref.text


def test_stream_close_cancels(model):
    s = model.stream(PROMPT, max_new_tokens=2000, eos_token_id=[])
    first = next(s)
    s.close()
    r = s.result
    assert r.finish_reason == "cancelled"
    assert len(first.tokens) <= len(r.tokens) < 2000
    assert model.generate(PROMPT, max_new_tokens=8).finish_reason in ("length", "stop")   # the model still works
    with model.stream(PROMPT, max_new_tokens=2000, eos_token_id=[]) as s2:
        next(s2)
    assert s2.result.finish_reason == "cancelled"


def test_stream_argument_errors_raise_at_the_call(model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.stream(PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown mode 'selfspec'"):
        model.stream(PROMPT, mode="selfspec")
    with pytest.raises(ValueError, match="on_chunk is stream's own"):
        model.stream(PROMPT, on_chunk=print)
    with model.lock:
        with pytest.raises(RuntimeError, match="holds model.lock"):
            model.stream(PROMPT)
    # An error while generating reaches the consumer.
    s = model.stream(PROMPT, max_new_tokens=model.max_context + 1)
    with pytest.raises(ValueError, match="KV cache"):
        list(s)


def test_cancel_event_ends_generation_after_the_current_forward(model):
    for kw in MODES[:3]:
        cancel = threading.Event()
        runs = []

        def on_tokens(run):
            runs.append(run)
            cancel.set()
        r = model.generate(PROMPT, max_new_tokens=200, eos_token_id=[], on_tokens=on_tokens, cancel=cancel, **kw)
        assert r.finish_reason == "cancelled" and runs == [r.tokens], kw
    with pytest.raises(TypeError, match="cancel must be a threading.Event"):
        model.generate(PROMPT, cancel=True)


def test_cancel_event_set_before_the_call_runs_nothing(model):
    cancel = threading.Event()
    cancel.set()
    for kw in MODES[:3]:
        model.reset()
        model.forward([5, 6, 7])             # a cache the call would have reset before its prefill
        runs, chunks = [], []
        r = model.generate(PROMPT, max_new_tokens=20, on_tokens=runs.append, on_chunk=chunks.append, cancel=cancel,
                           stop=["zz"], logprobs=True, **kw)
        assert (r.tokens, r.text, r.forwards, r.nfe, r.finish_reason) == ([], "", 0, 0, "cancelled"), kw
        assert r.logprobs == [] and runs == [] and chunks == [] and r.mode == kw["mode"], kw
        assert r.prompt_tokens == len(model.encode(PROMPT))
        assert model.cache_length == 3, kw
    fresh = model.generate(PROMPT, max_new_tokens=4)    # the next call runs as usual
    assert len(fresh.tokens) == 4 and fresh.finish_reason == "length"


def _teacher_forced_logprobs(model, prompt_ids, tokens):
    model.reset()
    logits = model.forward(prompt_ids + tokens[:-1]).astype(np.float64)
    rows = logits[len(prompt_ids) - 1:]
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return logp[np.arange(len(tokens)), tokens]


def test_logprobs_are_those_of_the_choosing_logits(model):
    ids = model.encode(PROMPT)
    for kw in (dict(), dict(temperature=0.8, seed=3), dict(temperature=0.8, top_k=20, seed=3),
               dict(temperature=0.8, top_p=0.9, seed=3)):
        r = model.generate(ids, max_new_tokens=24, logprobs=True, eos_token_id=[], **kw)
        want = _teacher_forced_logprobs(model, ids, r.tokens)
        assert len(r.logprobs) == len(r.tokens)
        np.testing.assert_allclose(r.logprobs, want, atol=2e-4, err_msg=str(kw))
    # self_spec at temperature 0: the AR tokens, chosen by the verifier's causal logits.
    ar = model.generate(ids, max_new_tokens=24, logprobs=True, eos_token_id=[])
    sp = model.generate(ids, mode="self_spec", max_new_tokens=24, logprobs=True, eos_token_id=[])
    assert sp.tokens == ar.tokens
    np.testing.assert_allclose(sp.logprobs, ar.logprobs, atol=2e-4)
    # diffusion: the first token comes from the prefill, as in AR; the rest from denoising steps.
    df = model.generate(ids, mode="diffusion", max_new_tokens=24, logprobs=True, eos_token_id=[])
    assert len(df.logprobs) == 24 and all(-math.inf < v <= 0 for v in df.logprobs)
    assert df.logprobs[0] == pytest.approx(ar.logprobs[0], abs=1e-6)
    assert model.generate(ids, max_new_tokens=4).logprobs is None


def test_prompt_tokens_and_finish_reason(model):
    ids = model.encode(PROMPT)
    r = model.generate(PROMPT, max_new_tokens=5, eos_token_id=[])
    assert r.prompt_tokens == len(ids) and r.finish_reason == "length"
    eos = r.tokens[2]
    r = model.generate(PROMPT, max_new_tokens=5, eos_token_id=eos)
    assert r.finish_reason == "stop" and r.stop_string is None and r.tokens[-1] == eos


def test_stop_argument_errors(model):
    with pytest.raises(ValueError, match=r"stop\[1\] is the empty string"):
        model.generate(PROMPT, stop=["a", ""])
    with pytest.raises(TypeError, match=r"stop\[0\] must be a string"):
        model.generate(PROMPT, stop=[3])
    with pytest.raises(TypeError, match="stop must be a string or a list"):
        model.generate(PROMPT, stop=3)
    nontext = tridecode.load(GOLDEN_DIR)    # no tokenizer.json
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        nontext.generate([1, 2], stop="x")


def test_modes_are_spelled_one_way_everywhere():
    assert normalize_mode("self-spec") == normalize_mode("self_spec") == "self_spec"
    for bad in ("selfspec", "spec", "AR", "self spec", None, 3):
        with pytest.raises(ValueError, match="unknown mode"):
            normalize_mode(bad)
    assert DEFAULTS["max_new_tokens"] == 128 and DEFAULTS["temperature"] == 0.0


class _Bytes:
    """A byte-level tokenizer: each id is a byte string, decode joins them and decodes UTF-8 with replacement
    characters for incomplete sequences, as a byte-level BPE decoder does."""

    def __init__(self, pieces):
        self.pieces = [p.encode("utf-8") if isinstance(p, str) else p for p in pieces]

    def decode(self, ids):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_tracker_waits_for_whole_characters_and_finds_stops_inside_them():
    snowman = "\u2603".encode("utf-8")       # three bytes, one per token below
    tok = _Bytes(["a", snowman[:1], snowman[1:2], snowman[2:], "b", " end"])
    t = TextTracker(tok)
    texts = []
    for i in range(6):
        t.push(i)
        texts.append(t.text)
    assert texts == ["a", "a", "a", "a\u2603", "a\u2603b", "a\u2603b end"]
    t = TextTracker(tok, ("\u2603",))
    assert [t.push(i) for i in range(4)] == [False, False, False, True]
    assert t.text == "a" and t.stop_string == "\u2603"
    # A stop string starting inside a token and ending inside a later one.
    t = TextTracker(tok, ("b e",))
    assert [t.push(i) for i in range(6)] == [False] * 5 + [True]
    assert t.text == "a\u2603"
    # Held back while it may still become a stop string; released once it cannot.
    t = TextTracker(tok, ("b ex",))
    for i in range(6):
        t.push(i)
    assert t.text == "a\u2603b end" and t.releasable(False) == len(t.text) and t.stop_string is None
    t = TextTracker(tok, ("d!",))
    for i in range(6):
        t.push(i)
    assert t.releasable(False) == len(t.text) - 1 and t.releasable(True) == len(t.text)
    # An output that ends inside a character keeps its replacement character.
    t = TextTracker(tok)
    t.push(0)
    t.push(1)
    t.finish()
    assert t.text == "a\ufffd"


class _Metaspace:
    """A SentencePiece-style decoder: word pieces start with U+2581, and a decode drops its leading space."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        text = "".join(self.pieces[i] for i in ids).replace("\u2581", " ")
        return text[1:] if text.startswith(" ") else text


def test_tracker_keeps_the_spaces_a_fresh_decode_would_drop():
    tok = _Metaspace(["\u2581def", "\u2581add", "(a", ",", "\u2581b", "):"])
    t = TextTracker(tok, (" b)!",))
    pushed = [t.push(i) for i in range(5)]
    assert pushed == [False] * 5 and t.text == "def add(a, b" and t.releasable(False) == len("def add(a,")
    assert t.push(5) is False and t.text == "def add(a, b):" == tok.decode(range(6))
    t = TextTracker(tok, (", b)",))
    assert [t.push(i) for i in range(6)] == [False] * 5 + [True] and t.text == "def add(a"

"""Bad input of every kind is a clear error raised before any work: the defects found by fuzzing (each
reproduced here as it was reported) and the safetensors format's rules, one test per rule."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import tridecode
from tridecode import ops
from tridecode.errors import ArgumentTypeError

import checkpoints as ck
from golden import GOLDEN_DIR, PROMPTS

CLEAN = (tridecode.CheckpointError, ValueError)


def must_fail(fn, *fragments, error=ValueError):
    with pytest.raises(error) as info:
        fn()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, msg
    assert type(info.value) not in (RecursionError, OverflowError, IsADirectoryError, KeyError, IndexError,
                                    ZeroDivisionError)
    return info.value


@pytest.fixture
def ckpt(tmp_path):
    return ck.copy_golden(tmp_path / "ckpt")


def edit_config(d, **changes):
    path = os.path.join(d, "config.json")
    cfg = json.load(open(path))
    cfg.update(changes)
    ck.write_config(d, cfg)


def edit_config_text(d, key, text):
    """Sets config key to raw JSON text (e.g. an integer too large for a float)."""
    path = os.path.join(d, "config.json")
    cfg = json.load(open(path))
    cfg[key] = "@@"
    with open(path, "w") as f:
        f.write(json.dumps(cfg).replace('"@@"', text))


# ---- 1. what used to hang ----

@pytest.mark.parametrize("layers", [10**7, 2**63, 5000])
def test_absurd_layer_counts_fail_at_once(ckpt, layers):
    edit_config(ckpt, num_hidden_layers=layers)
    must_fail(lambda: tridecode.load(ckpt), "num_hidden_layers")


def _run_with_timeout(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_fifo_is_refused_without_opening_it(ckpt, name):
    path = os.path.join(ckpt, name)
    os.remove(path)
    os.mkfifo(path)
    # in a subprocess: if the loader opened the FIFO it would block forever, and the timeout would say so
    p = _run_with_timeout(f"import tridecode\ntry:\n    tridecode.load({ckpt!r})\nexcept ValueError as e:\n    print(e)")
    assert p.returncode == 0 and "is a FIFO, not a regular file" in p.stdout, p.stdout + p.stderr


def test_a_link_to_dev_zero_is_refused(ckpt):
    os.remove(os.path.join(ckpt, "config.json"))
    os.symlink("/dev/zero", os.path.join(ckpt, "config.json"))
    must_fail(lambda: tridecode.load(ckpt), "config.json", "is a device, not a regular file")


# ---- 2. RecursionError ----

def test_a_deeply_nested_header_is_a_checkpoint_error(tmp_path):
    d = ck.copy_golden(tmp_path / "c")
    ck.write_raw(os.path.join(d, "model.safetensors"), b"[" * 100_000)
    must_fail(lambda: tridecode.load(d), "model.safetensors", "nested too deeply", error=tridecode.CheckpointError)


def test_a_deeply_nested_config_is_a_checkpoint_error(ckpt):
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    must_fail(lambda: tridecode.load(ckpt), "config.json", "nested too deeply", error=tridecode.CheckpointError)


# ---- 3. IsADirectoryError ----

@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json", "tokenizer.json"])
def test_a_directory_in_place_of_a_file(ckpt, name):
    if name != "config.json" and os.path.exists(os.path.join(ckpt, name)):
        os.remove(os.path.join(ckpt, name))
    if name == "config.json":
        os.remove(os.path.join(ckpt, name))
    os.mkdir(os.path.join(ckpt, name))
    must_fail(lambda: tridecode.load(ckpt), name, "is a directory, not a regular file", error=tridecode.CheckpointError)


def test_a_link_to_a_directory_in_place_of_the_index(ckpt, tmp_path):
    os.mkdir(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(ckpt, "model.safetensors.index.json"))
    must_fail(lambda: tridecode.load(ckpt), "is a directory", error=tridecode.CheckpointError)


# ---- 4, 5. numbers that overflow ----

FLOAT_FIELDS = ["rms_norm_eps", "rope_parameters.rope_theta", "rope_parameters.factor", "rope_parameters.beta_slow",
                "rope_parameters.mscale", "rope_parameters.attention_factor", "rope_parameters.llama_4_scaling_beta",
                "rope_parameters.original_max_position_embeddings"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["1" + "0" * 64, "1" + "0" * 400, "-" + "9" * 30, "1e400"])
def test_huge_numbers_in_config_are_named(ckpt, field, value):
    path = os.path.join(ckpt, "config.json")
    cfg = json.load(open(path))
    obj, key = (cfg["rope_parameters"], field.split(".")[1]) if "." in field else (cfg, field)
    obj[key] = "@@"
    with open(path, "w") as f:
        f.write(json.dumps(cfg).replace('"@@"', value))
    must_fail(lambda: tridecode.load(ckpt), "config.json", key, error=tridecode.CheckpointError)


def test_huge_original_max_position_with_the_default_rope(ckpt):
    edit_config(ckpt, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                       "original_max_position_embeddings": 2**63})
    must_fail(lambda: tridecode.load(ckpt), "original_max_position_embeddings", error=tridecode.CheckpointError)


def test_huge_lora_alpha(tmp_path):
    d = os.path.join(tmp_path, "g")
    shutil.copytree(GOLDEN_DIR, d)
    path = os.path.join(d, "linear_spec_lora", "adapter_config.json")
    ac = json.load(open(path))
    ac["lora_alpha"] = "@@"
    with open(path, "w") as f:
        f.write(json.dumps(ac).replace('"@@"', "1" + "0" * 400))
    must_fail(lambda: tridecode.load(d), "lora_alpha", error=tridecode.CheckpointError)


# ---- 6. a tokenizer that loads but cannot encode ----

def test_a_tokenizer_that_cannot_encode_is_refused_at_load(ckpt):
    vocab = {"hello": 5, "world": 6}   # WordLevel without its [UNK] token
    tok = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
           "pre_tokenizer": {"type": "Whitespace"}, "added_tokens": [], "normalizer": None,
           "post_processor": None, "decoder": None, "truncation": None, "padding": None}
    with open(os.path.join(ckpt, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    must_fail(lambda: tridecode.load(ckpt), "tokenizer.json", error=tridecode.CheckpointError)


# ---- 7. the safetensors format's rules ----

def _golden_entries():
    tensors = ck.golden_tensors()
    return {name: ("F32", a.shape, ck.tensor_bytes(a, "F32")) for name, a in tensors.items()}


def _write(d, header, data):
    ck.write_raw(os.path.join(d, "model.safetensors"), header, data)
    return d


@pytest.fixture
def parts(ckpt):
    header, data = ck.build_entries(_golden_entries())
    return ckpt, header, data


def test_the_unmodified_layout_loads(parts):
    d, header, data = parts
    tridecode.load(_write(d, header, data))


def test_overlapping_tensors_are_refused(parts):
    d, header, data = parts
    b = header[list(header)[1]]
    # the second tensor starts 4 bytes inside the first one
    b["data_offsets"] = [b["data_offsets"][0] - 4, b["data_offsets"][1] - 4]
    must_fail(lambda: tridecode.load(_write(d, header, data)), "overlap", error=tridecode.CheckpointError)


def test_a_gap_between_tensors_is_refused(parts):
    d, header, data = parts
    last = list(header)[-1]
    b, e = header[last]["data_offsets"]
    header[last]["data_offsets"] = [b + 4, e + 4]
    must_fail(lambda: tridecode.load(_write(d, header, data + b"\0" * 4)), "unused bytes between tensors",
              error=tridecode.CheckpointError)


def test_unused_bytes_before_the_first_tensor_are_refused(parts):
    d, header, data = parts
    for e in header.values():
        e["data_offsets"] = [e["data_offsets"][0] + 8, e["data_offsets"][1] + 8]
    must_fail(lambda: tridecode.load(_write(d, header, b"\0" * 8 + data)), "before the first tensor",
              error=tridecode.CheckpointError)


def test_trailing_bytes_are_refused(parts):
    d, header, data = parts
    must_fail(lambda: tridecode.load(_write(d, header, data + b"\0" * 4)), "trailing bytes",
              error=tridecode.CheckpointError)


@pytest.mark.parametrize("meta", [{"format": 1}, ["pt"], "pt", {"a": None}, {"a": {"b": "c"}}])
def test_metadata_must_map_strings_to_strings(parts, meta):
    d, header, data = parts
    must_fail(lambda: tridecode.load(_write(d, {"__metadata__": meta, **header}, data)), "__metadata__",
              error=tridecode.CheckpointError)


def test_a_header_over_the_size_bound_is_refused(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100 * 1024 * 1024 + 1))
    must_fail(lambda: tridecode.load(ckpt), "exceeds the limit", error=tridecode.CheckpointError)


def test_duplicate_keys_in_the_header_are_refused(parts):
    d, header, data = parts
    text = json.dumps(header)
    first = next(iter(header))
    dup = text[:-1] + f', "{first}": ' + json.dumps(header[first]) + "}"
    must_fail(lambda: tridecode.load(_write(d, dup, data)), "appears twice", error=tridecode.CheckpointError)


def test_the_span_of_a_dtype_the_runtime_does_not_read_is_still_checked(parts):
    d, header, data = parts
    header["extra"] = {"dtype": "I64", "shape": [3], "data_offsets": [len(data), len(data) + 16]}
    must_fail(lambda: tridecode.load(_write(d, header, data + b"\0" * 16)), "needs 24", error=tridecode.CheckpointError)


@pytest.mark.parametrize("fname", ["../model.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "",
                                   "model.bin", None, 3])
def test_index_entries_must_name_shards_in_the_directory(tmp_path, fname):
    d = ck.copy_golden(tmp_path / "s", shards=2)
    path = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(path))
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = fname
    json.dump(idx, open(path, "w"))
    must_fail(lambda: tridecode.load(d), "model.safetensors.index.json", error=tridecode.CheckpointError)


# ---- 8. API arguments ----

@pytest.fixture(scope="module")
def model():
    return tridecode.load(GOLDEN_DIR)


@pytest.mark.parametrize("length", [2**40, None, float("inf"), "3", True, -1, 1.0, np.float32(2)])
def test_crop_arguments(model, length):
    model.reset()
    model.forward(PROMPTS[1])
    must_fail(lambda: model.crop(length), "crop")
    assert model.cache_length == len(PROMPTS[1])


def test_on_tokens_must_be_callable_before_anything_runs(model):
    model.reset()
    must_fail(lambda: model.generate(PROMPTS[1], max_new_tokens=4, on_tokens=3), "on_tokens")
    assert model.cache_length == 0


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(start_pos=2**62), "start_pos"), (dict(start_pos=-1), "start_pos"), (dict(start_pos="0"), "start_pos"),
    (dict(mode=["causal"]), "mode"), (dict(write_cache="yes"), "write_cache"), (dict(logits=None), "logits"),
    (dict(use_lora=1), "use_lora"), (dict(out=0), "out"),
])
def test_forward_arguments(model, kwargs, fragment):
    must_fail(lambda: model.forward(PROMPTS[1], **kwargs), fragment)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(stream=2**64), "stream"), (dict(stream=-1), "stream"), (dict(seed=None), "seed"),
    (dict(seed=-1), "seed"), (dict(temperature=10**400), "temperature"), (dict(temperature=float("nan")), "temperature"),
])
def test_forward_select_arguments(model, kwargs, fragment):
    must_fail(lambda: model.forward_select(PROMPTS[1], **kwargs), fragment)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(temperature=10**400), "temperature"), (dict(top_k=5, temperature=1, seed=-1), "seed"),
    (dict(seed=2**64), "seed"), (dict(seed="1"), "seed"), (dict(top_p=10**400), "top_p"),
    (dict(max_new_tokens=10**30), "capacity"), (dict(eos_token_id="1"), "eos_token_id"),
    (dict(mode="diffusion", block_length=10**30), "block_length"),
    (dict(mode="diffusion", threshold=10**400), "threshold"),
    (dict(mode="self_spec", draft_threshold=10**400), "draft_threshold"),
    (dict(mode="self_spec", draft_threshold=np.array([1.0, 2.0])), "draft_threshold"),
])
def test_generate_arguments(model, kwargs, fragment):
    must_fail(lambda: model.generate(PROMPTS[1], **kwargs), fragment)


@pytest.mark.parametrize("prompt", [[1, [2, 3]], [[1, 2], [3]], [1, None], [2**70], ["a", 1], [1.5, 2.0],
                                    np.array([True, False]), b"12", {1, 2}])
def test_malformed_prompts(model, prompt):
    must_fail(lambda: model.generate(prompt, max_new_tokens=2), "prompt")


def test_wrong_types_are_both_value_and_type_errors(model):
    err = must_fail(lambda: model.crop("3"), "crop")
    assert isinstance(err, ArgumentTypeError) and isinstance(err, TypeError)


@pytest.mark.parametrize("call,fragment", [
    (lambda: ops.attention(np.ones((1, 2, 0), np.float32), np.ones((2, 1, 0), np.float32),
                           np.ones((2, 1, 0), np.float32)), "head_dim"),
    (lambda: ops.rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32), eps=10**400), "eps"),
    (lambda: ops.select(np.ones((1, 4), np.float32), temperature=10**400), "temperature"),
    (lambda: ops.select(np.ones((1, 4), np.float32), exclude_id="0"), "exclude_id"),
    (lambda: ops.select(np.ones((1, 4), np.float32), seed=-1), "seed"),
    (lambda: ops.rope(np.ones((1, 1, 4), np.float32), [0], [1.0, 1.0], qscale_beta=10**400), "qscale_beta"),
    (lambda: ops.rope(np.ones((1, 1, 4), np.float32), [0], [1.0, 1.0], qscale_length=math.inf), "qscale_length"),
    (lambda: ops.rope(np.ones((1, 1, 4), np.float32), [[0]], [1.0, 1.0]), "positions"),
    (lambda: ops.matmul([[1.0, 2.0], [3.0]], np.ones((2, 2), np.float32)), "x"),
    (lambda: ops.matmul(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), weight_dtype=[1]), "weight_dtype"),
    (lambda: ops.swiglu(np.ones(2, np.float32), np.ones(2, np.float32), device=["cpu"]), "device"),
])
def test_op_arguments(call, fragment):
    must_fail(call, fragment)


@pytest.mark.parametrize("kwargs,fragment", [(dict(dtype=["bf16"]), "dtype"), (dict(device=["cpu"]), "device"),
                                             (dict(max_context="8"), "max_context"), (dict(lora=3), "lora")])
def test_load_arguments(kwargs, fragment):
    must_fail(lambda: tridecode.load(GOLDEN_DIR, **kwargs), fragment)


@pytest.mark.parametrize("path", [None, 3, b"x", "", "a\x00b", ["x"]])
def test_load_path_argument(path):
    must_fail(lambda: tridecode.load(path), "path")


def test_random_model_arguments():
    cfg = ck.golden_config()
    must_fail(lambda: tridecode.random_model(cfg, seed=-1), "seed")
    must_fail(lambda: tridecode.random_model(cfg, max_context=0), "max_context")
    must_fail(lambda: tridecode.random_model(cfg, dtype="int8"), "dtype")
    must_fail(lambda: tridecode.random_model(dict(cfg, hidden_size=1 << 20, intermediate_size=1 << 22,
                                                  num_hidden_layers=4096)), "memory", error=MemoryError)


@pytest.mark.parametrize("mode", ["diffusion", "self_spec"])
def test_huge_max_new_tokens_in_parallel_modes(model, mode):
    must_fail(lambda: model.generate(PROMPTS[1], mode=mode, max_new_tokens=10**30), "capacity")


@pytest.mark.parametrize("n", ["x", 0, 10**9, None, 2.0, True])
def test_set_num_threads_argument(n):
    must_fail(lambda: tridecode.set_num_threads(n), "set_num_threads")


def test_load_config_argument():
    must_fail(lambda: tridecode.load_config(3), "directory")


"""Deterministic fuzz cases: case i of seed s is always the same input.

checkpoint_case() mutates a valid checkpoint directory (header length, header JSON, dtypes, shapes, offsets,
truncation, byte flips, config fields, the sharded index and its weight map, the LoRA adapter, the
tokenizer, unusual file types) and then loads it and, if it loads, uses it. api_case() calls generate,
forward, forward_select, crop, attach_lora, encode / decode, tridecode.ops, load and random_model with
arguments drawn from a pool of awkward values. Either returns (description, thunk); the worker runs the
thunk and classifies what happens."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct

import numpy as np

HUGE = 10**400

# Values that break naive checks: every type, extremes, strings posing as numbers, containers.
AWKWARD = [None, True, False, 0, 1, -1, 2, 3, 7, 64, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
           2**64, -2**63, HUGE, -HUGE, 0.0, -0.0, 0.5, 1.5, -2.5, 1e-300, 1e300, 1e308, math.inf, -math.inf, math.nan,
           "", "0", "1", "auto", "cpu", "cuda", "ar", "causal", "x" * 300, b"1", [], [1], [1, [2]], [[1, 2], [3]],
           [1.5], [2**70], {}, {"a": 1}, (1, 2), {1, 2}, object(), np.int64(3), np.float32(0.5), np.bool_(True),
           np.array([1, 2]), np.array([[1, 2]]), np.array([], np.int32), np.array([1.0, np.nan]),
           np.array(["a"]), np.uint64(2**64 - 1), np.int8(-1), lambda *a: None]

# Raw JSON texts for config values Python's json would not write.
RAW_JSON = ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "NaN", "Infinity", "-Infinity", "[" * 3000 + "]" * 3000,
            '"\\ud800"', "18446744073709551616", "9223372036854775808", "0.0000000000000000000000001"]

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "f32", "", None, 3, "C64"]


def awkward(rng: random.Random):
    return rng.choice(AWKWARD)


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------

def _read_st(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _write_st(path, header, data, header_len=None):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb) if header_len is None else header_len) + hb + data)


def _plain(path) -> bool:
    return os.path.isfile(path) and not os.path.islink(path)


def _st_files(d):
    out = []
    for root, _, files in os.walk(d):
        out += [os.path.join(root, f) for f in files if f.endswith(".safetensors")]
    return sorted(out)


def _json_files(d):
    out = []
    for root, _, files in os.walk(d):
        out += [os.path.join(root, f) for f in files if f.endswith(".json")]
    return sorted(out)


def _mutate_header_entry(rng, header):
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return "empty header"
    name = rng.choice(names)
    e = header[name]
    what = rng.choice(["dtype", "shape", "offsets", "delete", "entry", "extra"])
    if what == "dtype" and isinstance(e, dict):
        e["dtype"] = rng.choice(DTYPES)
    elif what == "shape" and isinstance(e, dict):
        shape = list(e.get("shape", [])) or [1]
        choice = rng.randrange(6)
        if choice == 0:
            shape[rng.randrange(len(shape))] = awkward(rng) if rng.random() < 0.5 else rng.randrange(-3, 10**6)
        elif choice == 1:
            shape.append(rng.choice([0, 1, 2, 2**40]))
        elif choice == 2:
            shape = shape[:-1]
        elif choice == 3:
            shape = shape[::-1]
        elif choice == 4:
            shape = [2**62, 2**62]
        else:
            shape = awkward(rng)
        e["shape"] = shape
    elif what == "offsets" and isinstance(e, dict):
        b, end = (e.get("data_offsets") or [0, 0])[:2] if isinstance(e.get("data_offsets"), list) else (0, 0)
        choice = rng.randrange(7)
        if choice == 0:
            e["data_offsets"] = [end, b]
        elif choice == 1:
            d = rng.choice([1, 2, 4, 7, 64, -1, -4, 10**9])
            e["data_offsets"] = [b + d, end + d]
        elif choice == 2:
            e["data_offsets"] = [b, end + rng.choice([1, -1, 4, -4])]
        elif choice == 3:
            e["data_offsets"] = [b, end, end]
        elif choice == 4:
            e["data_offsets"] = [0, end - b]      # overlap with the first tensor
        elif choice == 5:
            e["data_offsets"] = awkward(rng)
        else:
            e["data_offsets"] = [awkward(rng), awkward(rng)]
    elif what == "delete":
        del header[name]
    elif what == "entry":
        header[name] = awkward(rng) if rng.random() < 0.5 else {k: v for k, v in e.items() if rng.random() < 0.6}
    else:
        header[name + rng.choice(["", "_x", ".weight"])] = {"dtype": rng.choice(DTYPES), "shape": [rng.randrange(9)],
                                                          "data_offsets": [0, rng.randrange(64)]}
    return f"header entry {what} of {name}"


def _mutate_safetensors(rng, path):
    header, data = _read_st(path)
    kind = rng.randrange(9)
    if kind == 0:
        size = os.path.getsize(path)
        n = rng.choice([0, 1, 7, 8, 2**63, 2**64 - 1, size, size - 8, size - 7, 100 * 2**20 + 1, rng.randrange(size)])
        with open(path, "r+b") as f:
            f.write(struct.pack("<Q", n))
        return f"header length {n}"
    if kind == 1:
        with open(path, "r+b") as f:
            blob = bytearray(f.read())
            n = struct.unpack("<Q", blob[:8])[0]
            for _ in range(rng.randrange(1, 6)):
                i = rng.randrange(8, 8 + n)
                blob[i] = rng.randrange(256)
            f.seek(0)
            f.write(blob)
        return "header bytes flipped"
    if kind == 2:
        size = os.path.getsize(path)
        cut = rng.randrange(size)
        with open(path, "r+b") as f:
            f.truncate(cut)
        return f"truncated to {cut} of {size} bytes"
    if kind == 3:
        if data:
            blob = bytearray(data)
            for _ in range(rng.randrange(1, 20)):
                blob[rng.randrange(len(blob))] = rng.choice([0xff, 0x7f, 0x80, 0x00, rng.randrange(256)])
            data = bytes(blob)
        _write_st(path, header, data)
        return "data bytes flipped"
    if kind == 4:
        header["__metadata__"] = awkward(rng) if rng.random() < 0.7 else {"format": awkward(rng)}
        _write_st(path, header, data)
        return "metadata"
    if kind == 5:
        text = json.dumps(header)
        choice = rng.randrange(4)
        if choice == 0 and len(header) > 1:
            k = next(iter(header))
            text = text[:-1] + f', "{k}": ' + json.dumps(header[k]) + "}"
        elif choice == 1:
            text = "[" * rng.choice([10, 1000, 100000])
        elif choice == 2:
            text = text[: rng.randrange(len(text))]
        else:
            text = json.dumps(awkward(rng), default=str)
        _write_st(path, text.encode("utf-8", "surrogatepass"), data)
        return f"header text {choice}"
    if kind == 6:
        data = data + b"\0" * rng.choice([1, 4, 8])
        _write_st(path, header, data)
        return "trailing bytes"
    desc = _mutate_header_entry(rng, header)
    _write_st(path, header, data)
    return desc


def _set_json(path, edit):
    with open(path) as f:
        obj = json.load(f)
    edit(obj)
    with open(path, "w") as f:
        json.dump(obj, f, default=str)


def _mutate_config(rng, path):
    with open(path) as f:
        cfg = json.load(f)
    keys = list(cfg) + ["rope_parameters.rope_theta", "rope_parameters.factor", "rope_parameters.rope_type",
                        "rope_parameters.original_max_position_embeddings", "rope_parameters.beta_fast"]
    key = rng.choice(keys)
    obj, k = (cfg.setdefault("rope_parameters", {}), key.split(".")[1]) if "." in key else (cfg, key)
    if not isinstance(obj, dict):
        obj, k = cfg, "rope_parameters"
    choice = rng.randrange(4)
    if choice == 0:
        obj.pop(k, None)
        text = json.dumps(cfg)
    elif choice == 1:
        obj[k] = "@@RAW@@"
        text = json.dumps(cfg).replace('"@@RAW@@"', rng.choice(RAW_JSON))
    elif choice == 2:
        v = awkward(rng)
        obj[k] = v if isinstance(v, (int, float, str, list, dict, type(None))) and not isinstance(v, bool) else str(v)
        text = json.dumps(cfg, default=str)
    else:
        text = rng.choice(["", "{", "[]", "null", "3", '"x"', "{}", json.dumps(cfg)[: rng.randrange(200)]])
    with open(path, "w") as f:
        f.write(text)
    return f"config {key} ({choice})"


def _mutate_index(rng, path, d):
    with open(path) as f:
        idx = json.load(f)
    wm = idx.get("weight_map", {})
    names = list(wm)
    choice = rng.randrange(8)
    if choice == 0 and names:
        wm[rng.choice(names)] = rng.choice(["../model.safetensors", "/etc/passwd", "..", ".", "", "sub/x.safetensors",
                                            "missing.safetensors", "config.json", "model.safetensors\0x"])
    elif choice == 1 and names:
        wm[rng.choice(names)] = awkward(rng) if not callable(awkward(rng)) else 3
    elif choice == 2 and names:
        del wm[rng.choice(names)]
    elif choice == 3:
        wm["extra.weight"] = rng.choice(list(set(wm.values())) or ["x.safetensors"])
    elif choice == 4 and len(set(wm.values())) > 1 and names:
        a = rng.choice(names)
        wm[a] = rng.choice([v for v in set(wm.values()) if v != wm[a]])
    elif choice == 5:
        idx["weight_map"] = awkward(rng) if rng.random() < 0.5 else {}
    elif choice == 6:
        with open(path, "w") as f:
            f.write(rng.choice(["", "[", "{\"weight_map\": 3}", "[" * 5000]))
        return f"index text {choice}"
    else:
        os.symlink("/etc/hostname", os.path.join(d, "linked.safetensors"))
        if names:
            wm[rng.choice(names)] = "linked.safetensors"
    with open(path, "w") as f:
        json.dump(idx, f, default=str)
    return f"index {choice}"


def _mutate_adapter(rng, d):
    a = os.path.join(d, "linear_spec_lora")
    if not os.path.isdir(a):
        return "no adapter"
    choice = rng.randrange(4)
    if choice == 0:
        key = rng.choice(["r", "lora_alpha", "target_modules", "peft_type", "use_rslora", "use_dora", "bias",
                          "fan_in_fan_out", "layers_to_transform"])
        v = awkward(rng)
        _set_json(os.path.join(a, "adapter_config.json"),
                  lambda c: c.__setitem__(key, v if not callable(v) else "f"))
        return f"adapter config {key}"
    if choice == 1:
        return "adapter " + _mutate_safetensors(rng, os.path.join(a, "adapter_model.safetensors"))
    if choice == 2:
        os.remove(os.path.join(a, rng.choice(["adapter_config.json", "adapter_model.safetensors"])))
        return "adapter file removed"
    with open(os.path.join(a, "adapter_config.json"), "w") as f:
        f.write(rng.choice(["", "{", "[]", '{"r": ' + rng.choice(RAW_JSON) + "}"]))
    return "adapter config text"


def _mutate_tokenizer(rng, d):
    p = os.path.join(d, "tokenizer.json")
    choice = rng.randrange(5)
    if choice == 0:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.truncate(rng.randrange(size))
    elif choice == 1:
        with open(p, "w") as f:
            f.write(rng.choice(["", "{}", "[]", "null", "{\"model\": 3}", "x" * 100]))
    elif choice == 2:
        with open(p, "w") as f:   # loads, but cannot encode: a word-level model without its unknown token
            json.dump({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 1}, "unk_token": "[UNK]"},
                       "pre_tokenizer": {"type": "Whitespace"}, "added_tokens": [], "normalizer": None,
                       "post_processor": None, "decoder": None, "truncation": None, "padding": None}, f)
    elif choice == 3:
        _set_json(p, lambda t: t.__setitem__("model", awkward(rng) if not callable(awkward(rng)) else 1))
    else:
        with open(p, "r+b") as f:
            blob = bytearray(f.read())
            for _ in range(10):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            f.seek(0)
            f.write(blob)
    return f"tokenizer {choice}"


def _unusual_file(rng, d):
    targets = [p for p in _st_files(d) + _json_files(d)]
    path = rng.choice(targets)
    os.remove(path)
    choice = rng.randrange(7)
    if choice == 0:
        os.mkdir(path)
    elif choice == 1:
        os.mkfifo(path)
    elif choice == 2:
        os.symlink("/dev/zero", path)
    elif choice == 3:
        os.symlink(path, path)            # a loop
    elif choice == 4:
        os.symlink(path + ".nowhere", path)
    elif choice == 5:
        open(path, "wb").close()          # empty
    else:
        os.symlink(d, path)               # a link to a directory
    return f"{os.path.relpath(path, d)} -> unusual file {choice}"


def checkpoint_case(rng: random.Random, bases: dict, workdir: str):
    """(description, thunk) for one mutated checkpoint."""
    base = rng.choice(sorted(bases))
    d = os.path.join(workdir, "case")
    if os.path.lexists(d):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(bases[base], d, symlinks=True)
    descs = [base]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        what = rng.randrange(10)
        if not all(_plain(p) for p in _st_files(d) + _json_files(d)):
            break      # an unusual file is in place: the mutators below would block on it or read it forever
        try:
            if what <= 2:
                descs.append(_mutate_safetensors(rng, rng.choice(_st_files(d))))
            elif what <= 4:
                descs.append(_mutate_config(rng, os.path.join(d, "config.json")))
            elif what == 5 and os.path.exists(os.path.join(d, "model.safetensors.index.json")):
                descs.append(_mutate_index(rng, os.path.join(d, "model.safetensors.index.json"), d))
            elif what == 6:
                descs.append(_mutate_adapter(rng, d))
            elif what == 7:
                descs.append(_mutate_tokenizer(rng, d))
            elif what == 8:
                descs.append(_unusual_file(rng, d))
            else:
                descs.append(_mutate_safetensors(rng, rng.choice(_st_files(d))))
        except Exception:   # noqa: BLE001 - a mutator that cannot parse what an earlier one broke
            descs.append("(mutation skipped: the file was already broken)")

    def thunk():
        import tridecode
        m = tridecode.load(d, max_context=64, lora=rng.choice(["auto", None]))
        prompt = [1, 2, 3]
        m.forward(prompt)
        m.generate(prompt, max_new_tokens=3)
        if m.config.mask_token_id is not None:
            m.generate(prompt, mode="diffusion", max_new_tokens=3, block_length=4)
            m.generate(prompt, mode="self_spec", max_new_tokens=3, block_length=4)
        if m.tokenizer is not None:
            m.generate("hi", max_new_tokens=2)
        return "loaded"

    return "; ".join(descs), thunk


# ---------------------------------------------------------------------------------------------------------
# API arguments
# ---------------------------------------------------------------------------------------------------------

def _maybe(rng, valid):
    return valid if rng.random() < 0.6 else awkward(rng)


def api_case(rng: random.Random, env: dict):
    """(description, thunk) for one API call with awkward arguments. env holds a loaded model."""
    import tridecode
    from tridecode import ops

    m = env["model"]
    f32 = np.float32
    which = rng.randrange(16)
    if which == 0:
        kw = {k: _maybe(rng, v) for k, v in dict(mode=rng.choice(["ar", "diffusion", "self_spec"]), max_new_tokens=4,
                                                  temperature=0.0, seed=1).items() if rng.random() < 0.8}
        for k in rng.sample(["top_k", "top_p", "eos_token_id", "block_length", "threshold", "steps",
                             "draft_threshold", "use_lora", "on_tokens", "stop", "logprobs", "on_chunk", "cancel"],
                            rng.randrange(3)):
            kw[k] = awkward(rng)
        prompt = _maybe(rng, [1, 2, 3])
        return f"generate({prompt!r:.60}, {kw!r:.200})", lambda: m.generate(prompt, **kw)
    if which == 1:
        kw = {k: awkward(rng) for k in rng.sample(["mode", "write_cache", "start_pos", "logits", "use_lora", "out"],
                                                   rng.randrange(1, 3))}
        ids = _maybe(rng, [5, 6])
        return f"forward({ids!r:.60}, {kw!r:.200})", lambda: m.forward(ids, **kw)
    if which == 2:
        kw = {k: awkward(rng) for k in rng.sample(["temperature", "seed", "stream", "mode", "logits"], rng.randrange(1, 3))}
        return f"forward_select({kw!r:.200})", lambda: m.forward_select([5, 6], **kw)
    if which == 3:
        n = awkward(rng)
        return f"crop({n!r:.60})", lambda: m.crop(n)
    if which == 4:
        p = rng.choice([awkward(rng), env["lora"], "/nonexistent", env["dir"], "/dev/null"])
        return f"attach_lora({p!r:.80})", lambda: (m.attach_lora(p), m.detach_lora())
    if which == 5:
        t = awkward(rng)
        return f"encode/decode({t!r:.60})", lambda: (m.encode(t), m.decode(t))
    x = np.ones((2, 8), f32)
    if which == 6:
        args = [_maybe(rng, x), _maybe(rng, np.ones(8, f32))]
        kw = {k: awkward(rng) for k in rng.sample(["eps", "weight_dtype", "device"], rng.randrange(1, 3))}
        return f"ops.rms_norm({kw!r:.200})", lambda: ops.rms_norm(*args, **kw)
    if which == 7:
        args = [_maybe(rng, x), _maybe(rng, np.ones((3, 8), f32))]
        kw = {k: awkward(rng) for k in rng.sample(["weight_dtype", "device"], rng.randrange(0, 2))}
        return f"ops.matmul({kw!r:.200})", lambda: ops.matmul(*args, **kw)
    if which == 8:
        args = [_maybe(rng, np.ones((2, 1, 8), f32)), _maybe(rng, [0, 1]), _maybe(rng, np.ones(4, f32))]
        kw = {k: awkward(rng) for k in rng.sample(["attention_factor", "qscale_beta", "qscale_length", "is_query",
                                                   "device"], rng.randrange(1, 3))}
        return f"ops.rope({kw!r:.200})", lambda: ops.rope(*args, **kw)
    if which == 9:
        d = rng.choice([0, 1, 8])
        q = _maybe(rng, np.ones((1, 2, d), f32))
        kv = _maybe(rng, np.ones((3, 1, d), f32))
        kw = {k: awkward(rng) for k in rng.sample(["causal", "scale", "device"], rng.randrange(0, 2))}
        return f"ops.attention(d={d}, {kw!r:.200})", lambda: ops.attention(q, kv, kv, **kw)
    if which == 10:
        logits = _maybe(rng, np.ones((2, 5), f32))
        kw = {k: awkward(rng) for k in rng.sample(["exclude_id", "temperature", "seed", "stream", "device"],
                                                   rng.randrange(1, 3))}
        return f"ops.select({kw!r:.200})", lambda: ops.select(logits, **kw)
    if which == 11:
        a, b = _maybe(rng, x), _maybe(rng, x)
        return "ops.swiglu", lambda: ops.swiglu(a, b)
    if which == 14:   # chat, its template and the stream iterator, with awkward conversations and arguments
        msg = rng.choice([awkward(rng), [awkward(rng)], [{"role": awkward(rng), "content": "hi"}],
                          [{"role": "user", "content": awkward(rng)}], [{"role": "user"}],
                          [{"role": "user", "content": [awkward(rng)]}], [{"role": "user", "content": "hi"}]])
        kw = {k: awkward(rng) for k in rng.sample(["max_new_tokens", "mode", "stop", "logprobs"], rng.randrange(0, 2))}
        call = rng.choice(["chat", "stream_chat", "apply_chat_template"])
        if call == "apply_chat_template":
            kw = {"add_generation_prompt": awkward(rng)} if kw else {}
        if call == "stream_chat":
            return f"stream_chat({msg!r:.80}, {kw!r:.120})", lambda: list(m.stream_chat(msg, **kw))
        return f"{call}({msg!r:.80}, {kw!r:.120})", lambda: getattr(m, call)(msg, **kw)
    if which == 15:
        prompt = _maybe(rng, [1, 2, 3])
        kw = {k: awkward(rng) for k in rng.sample(["max_new_tokens", "mode", "stop", "temperature"], rng.randrange(1, 3))}
        return f"stream({prompt!r:.60}, {kw!r:.120})", lambda: list(m.stream(prompt, **kw))
    if which == 12:
        kw = {k: awkward(rng) for k in rng.sample(["device", "dtype", "max_context", "lora", "revision", "hugepages"],
                                                   rng.randrange(1, 3))}
        return f"load({kw!r:.200})", lambda: tridecode.load(env["dir"], **kw)
    cfg = dict(env["config"])
    for k in rng.sample(list(cfg), rng.randrange(0, 2)):
        cfg[k] = awkward(rng)
    kw = {k: awkward(rng) for k in rng.sample(["device", "dtype", "max_context", "seed"], rng.randrange(0, 2))}
    return f"random_model({kw!r:.200})", lambda: tridecode.random_model(cfg, **kw)

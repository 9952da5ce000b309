"""PEFT LoRA adapters on o_proj: the self-speculation drafter (`<model>/linear_spec_lora/`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from . import _check as check
from . import _files
from .config import ModelConfig
from .errors import CheckpointError
from .safetensors_io import SafetensorsFile

DEFAULT_DIR = "linear_spec_lora"
MAX_RANK = 65536


@dataclass
class LoraAdapter:
    path: str
    rank: int
    alpha: float
    scale: float
    a: list      # per layer (array [r, q_dim], dtype code)
    b: list      # per layer (array [hidden, r], dtype code)


def _cfg_err(path: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{os.path.join(path, 'adapter_config.json')}: {msg}")


def load_adapter(path, cfg: ModelConfig) -> LoraAdapter:
    path = check.path("LoRA adapter path", path)
    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isdir(path) or not _files.exists(cfg_path):
        raise CheckpointError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    ac = _files.load_json(cfg_path, what="adapter_config.json")
    if not isinstance(ac, dict):
        raise _cfg_err(path, "expected a JSON object")
    if ac.get("peft_type", "LORA") != "LORA":
        raise _cfg_err(path, f"peft_type {ac.get('peft_type')!r} is not supported (only LORA)")
    targets = ac.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise _cfg_err(path, f"target_modules must name o_proj, got {ac.get('target_modules')!r}")
    other = [t for t in targets if not (isinstance(t, str) and t.split(".")[-1] == "o_proj")]
    if other:
        raise _cfg_err(path, f"target_modules {other} are not supported: the drafter adapter may target o_proj only")
    r, alpha = ac.get("r"), ac.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_RANK:
        raise _cfg_err(path, f"'r' must be a positive integer, got {check._show(r)} (at most {MAX_RANK})")
    try:
        alpha = check.real("lora_alpha", alpha, 0.0, 1e12, lo_open=True)
    except ValueError:
        raise _cfg_err(path, f"'lora_alpha' must be a positive number, got {check._show(alpha)} (at most 1e12)") from None
    for key in ("alpha_pattern", "rank_pattern", "layers_to_transform", "layers_pattern", "modules_to_save",
                "target_parameters"):
        if ac.get(key):
            raise _cfg_err(path, f"'{key}' is not supported (one rank and alpha for every o_proj), got {ac[key]!r}")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if ac.get(key) is not None and not isinstance(ac[key], bool):
            raise _cfg_err(path, f"'{key}' must be true or false, got {ac[key]!r}")
    if ac.get("fan_in_fan_out"):
        raise _cfg_err(path, "fan_in_fan_out adapters are not supported")
    if ac.get("bias", "none") not in ("none", None):
        raise _cfg_err(path, f"bias {ac.get('bias')!r} is not supported (only 'none')")
    if ac.get("use_dora"):
        raise _cfg_err(path, "DoRA adapters are not supported")
    scale = alpha / math.sqrt(r) if ac.get("use_rslora") else alpha / r

    weights = os.path.join(path, "adapter_model.safetensors")
    if not _files.exists(weights):
        raise CheckpointError(f"{path}: adapter_model.safetensors not found")
    st = SafetensorsFile(weights)
    prefix = f"base_model.model.{cfg.prefix}layers."
    q_dim = cfg.num_attention_heads * cfg.head_dim
    a, b, used = [], [], set()
    for i in range(cfg.num_hidden_layers):
        pair = []
        for part, shape in (("lora_A", (r, q_dim)), ("lora_B", (cfg.hidden_size, r))):
            name = f"{prefix}{i}.self_attn.o_proj.{part}.weight"
            if name not in st.tensors:
                raise CheckpointError(f"{st.name}: missing tensor {name}")
            info = st.tensors[name]
            if info.shape != shape:
                raise CheckpointError(f"{st.name}: tensor {name} has shape {list(info.shape)}, expected "
                                      f"{list(shape)} (rank {r} from adapter_config.json)")
            arr, code = st.array(name)
            values = arr if code != 2 else (arr.astype("uint32") << 16).view("float32")
            if not np.isfinite(values).all():   # adapters are small: a full check costs nothing
                raise CheckpointError(f"{st.name}: tensor {name} holds NaN or infinite values")
            pair.append((arr, code))
            used.add(name)
        a.append(pair[0])
        b.append(pair[1])
    unexpected = sorted(set(st.tensors) - used)
    if unexpected:
        raise CheckpointError(f"{st.name}: unexpected tensor {unexpected[0]} (the adapter may target o_proj only)")
    return LoraAdapter(path, r, float(alpha), float(scale), a, b)


def find_default(directory: str):
    p = os.path.join(directory, DEFAULT_DIR)
    return p if os.path.isdir(p) else None


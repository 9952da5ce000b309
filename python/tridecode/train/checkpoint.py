"""Checkpoints of the recipe: written in the layout tridecode loads (config.json, model.safetensors,
tokenizer.json, and a PEFT LoRA adapter in linear_spec_lora/), and read back to continue training."""

from __future__ import annotations

import json
import os

import numpy as np

from .data import BOS_ID, EOS_ID, MASK_ID


def config_dict(shape, block_size: int, max_position_embeddings: int = 4096) -> dict:
    return {
        "architectures": ["NemotronLabsDiffusionModel"],
        "model_type": "nemotron_labs_diffusion",
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "intermediate_size": shape.intermediate_size,
        "vocab_size": shape.vocab_size,
        "rms_norm_eps": shape.rms_norm_eps,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "tie_word_embeddings": False,
        "mask_token_id": MASK_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "block_size": block_size,
        "dtype": "float32",
    }


def save(model, tokenizer, out_dir: str, block_size: int, extra: dict | None = None) -> str:
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: p.detach().cpu().float().numpy().astype(np.float32) for name, p in model.state_dict().items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    cfg = config_dict(model.shape, block_size)
    if extra:
        cfg["training"] = extra
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    return out_dir


def load(directory: str):
    """(TriModeLM, tokenizer, config dict) of a checkpoint this recipe wrote."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from .model import Shape, TriModeLM

    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    shape = Shape(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                  num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                  num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                  intermediate_size=cfg["intermediate_size"], rope_theta=cfg["rope_parameters"]["rope_theta"],
                  rms_norm_eps=cfg["rms_norm_eps"])
    model = TriModeLM(shape)
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    return model, Tokenizer.from_file(os.path.join(directory, "tokenizer.json")), cfg


def save_lora(model, out_dir: str, rank: int, alpha: float, extra: dict | None = None) -> str:
    """The o_proj adapter of model (TriModeLM.add_lora) in PEFT's layout: adapter_config.json and
    adapter_model.safetensors with base_model.model.encoder.layers.{i}.self_attn.o_proj.lora_{A,B}.weight."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(model.encoder.layers):
        att = layer.self_attn
        base = f"base_model.model.encoder.layers.{i}.self_attn.o_proj"
        tensors[f"{base}.lora_A.weight"] = att.lora_A.weight.detach().float().numpy().astype(np.float32)
        tensors[f"{base}.lora_B.weight"] = att.lora_B.weight.detach().float().numpy().astype(np.float32)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["o_proj"], "bias": "none",
           "lora_dropout": 0.0, "fan_in_fan_out": False, "use_rslora": False, "task_type": None}
    if extra:
        cfg["training"] = extra
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


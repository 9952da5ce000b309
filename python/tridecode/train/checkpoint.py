"""Writes a trained model as a checkpoint tridecode loads: config.json, model.safetensors, tokenizer.json."""

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

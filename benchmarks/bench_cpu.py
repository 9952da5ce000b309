"""CPU backend vs transformers-on-torch, in one run, on the same random mid-size checkpoint.

Measures the latency of a 1-token decode forward and of a 32-token chunk forward over a fixed cached context
(the cache is cropped back after every timed call), median of many runs after a warm-up, and prints the
memory-bandwidth floor of the decode step: the weight bytes one forward must read divided by the machine's
read bandwidth, measured in the same run.

The checkpoint is stored in bfloat16, as real ones are. tridecode computes from the stored bf16 weights
(fp32 accumulation); torch runs it in fp32 (the baseline the project targets) and, as a second row, in bf16.
A "tridecode fp32" row loads the same file converted to fp32, reading as many bytes as torch fp32.

    python benchmarks/bench_cpu.py [--hidden 1024 --layers 8 --vocab 32000 --threads 2 --runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def make_checkpoint(path, hidden, layers, heads, kv_heads, head_dim, inter, vocab, seed=0):
    from tridecode.safetensors_io import to_bf16_bits

    rng = np.random.default_rng(seed)

    def bf16(shape, std):
        return to_bf16_bits(rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    t = {"model.embed_tokens.weight": bf16((vocab, hidden), 0.02),
         "model.norm.weight": to_bf16_bits(np.ones(hidden, np.float32)),
         "lm_head.weight": bf16((vocab, hidden), hidden ** -0.5)}
    for i in range(layers):
        p = f"model.layers.{i}."
        ones = t["model.norm.weight"]
        t[p + "input_layernorm.weight"] = ones
        t[p + "post_attention_layernorm.weight"] = ones
        t[p + "self_attn.q_proj.weight"] = bf16((heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.k_proj.weight"] = bf16((kv_heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.v_proj.weight"] = bf16((kv_heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.o_proj.weight"] = bf16((hidden, heads * head_dim), (heads * head_dim) ** -0.5)
        t[p + "mlp.gate_proj.weight"] = bf16((inter, hidden), hidden ** -0.5)
        t[p + "mlp.up_proj.weight"] = bf16((inter, hidden), hidden ** -0.5)
        t[p + "mlp.down_proj.weight"] = bf16((hidden, inter), inter ** -0.5)
    # safetensors.numpy has no bf16: write the file by hand (header + raw little-endian bits).
    header, offset, blobs = {}, 0, []
    for name in sorted(t):
        raw = np.ascontiguousarray(t[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t[name].shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for b in blobs:
            f.write(b)
    config = {
        "architectures": ["Ministral3ForCausalLM"], "model_type": "ministral3", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "intermediate_size": inter, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "max_position_embeddings": 262144, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0,
                            "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    weight_elems = sum(a.size for n, a in t.items() if n != "model.embed_tokens.weight")
    return weight_elems


def median_ms(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_read_bandwidth(torch, gib=1.0):
    """Bytes/s of a multi-threaded streaming read (sum of a buffer much larger than the caches)."""
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    x.sum()
    ms = median_ms(lambda: x.sum(), runs=7, warmup=1)
    return x.numel() * 4 / (ms / 1e3)


def bench_tridecode(path, dtype, context, runs):
    import tridecode

    m = tridecode.load(path, dtype=dtype, max_context=context + 64)
    prompt = list(range(3, 3 + context))
    m.forward(prompt, mode="causal", logits="last")

    def decode():
        m.forward([5], mode="causal", logits="last")
        m.crop(context)

    def chunk():
        m.forward(list(range(10, 42)), mode="causal", logits="all")
        m.crop(context)

    return median_ms(decode, runs), median_ms(chunk, max(3, runs // 3)), m.weight_bytes


def bench_torch(path, torch_dtype, context, runs):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa").eval()
    prompt = torch.arange(3, 3 + context).reshape(1, -1)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True)
        one = torch.tensor([[5]])
        block = torch.arange(10, 42).reshape(1, -1)

        def decode():
            model(input_ids=one, cache=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)

        def chunk():
            model(input_ids=block, cache=cache, use_cache=True)
            cache.crop(-32)

        d = median_ms(decode, runs)
        c = median_ms(chunk, max(3, runs // 3))
    del model
    return d, c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--context", type=int, default=64, help="cached tokens before each timed forward")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-torch-bf16", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import tridecode

    torch.set_num_threads(args.threads)
    tridecode.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        elems = make_checkpoint(d, args.hidden, args.layers, args.heads, args.kv_heads, args.head_dim,
                                args.intermediate, args.vocab)
        bw = measure_read_bandwidth(torch)
        rows = []
        td_bf16 = bench_tridecode(d, None, args.context, args.runs)
        rows.append(("tridecode (bf16 weights)", td_bf16[0], td_bf16[1], elems * 2))
        td_f32 = bench_tridecode(d, "float32", args.context, args.runs)
        rows.append(("tridecode (fp32 weights)", td_f32[0], td_f32[1], elems * 4))
        t32 = bench_torch(d, torch.float32, args.context, args.runs)
        rows.append(("torch fp32 (baseline)", t32[0], t32[1], elems * 4))
        if not args.skip_torch_bf16:
            t16 = bench_torch(d, torch.bfloat16, args.context, args.runs)
            rows.append(("torch bf16", t16[0], t16[1], elems * 2))

    base_decode, base_chunk = t32
    print(f"model: hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads}x{args.head_dim}, "
          f"MLP {args.intermediate}, vocab {args.vocab}; {elems / 1e6:.1f}M weights read per forward; "
          f"context {args.context}; threads {args.threads}; cpu kernels {tridecode._C.cpu_isa()}")
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s")
    print(f"{'':28s} {'decode ms':>10s} {'floor ms':>9s} {'x floor':>8s} {'vs torch':>9s} "
          f"{'32-chunk ms':>12s} {'vs torch':>9s}")
    for name, dec, chk, nbytes in rows:
        floor = nbytes / bw * 1e3
        print(f"{name:28s} {dec:10.2f} {floor:9.2f} {dec / floor:8.2f} {base_decode / dec:8.2f}x "
              f"{chk:12.2f} {base_chunk / chk:8.2f}x")
    print("(vs torch = torch fp32 time / this row's time; floor = weight bytes / measured read bandwidth)")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

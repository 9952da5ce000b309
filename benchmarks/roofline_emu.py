"""Global-memory traffic of the CUDA kernels at the widths of an 8B Llama-3-like model, counted on the CUDA
emulator, next to the bytes the forward must move and the floor time they imply.

    TRIDECODE_CUDA=EMU pip install . && python benchmarks/roofline_emu.py [--contexts 1024,8192] [--rows 1,32]

One layer at the 8B widths (hidden 4096, 32/8 heads x 128, MLP 14336) plus the LM head (vocab 128256), bf16
weights, random (`tridecode.random_model`). For each context length, `ctx` cached tokens of random K/V are
appended (no prefill), then one forward is counted: n = 1 (a decode step: causal, the last row's token) and
n = 32 (a diffusion block: bidirectional, every row's token), both through the fused sampler head as the
generate loops run them.

Per op of the forward (each a launch or two), it prints:
- must-move: the bytes the op cannot avoid: its weights once, the K/V it attends to once (in bf16, the
  cache dtype a bandwidth-bound design uses), its activations once (fp32 in and out, as the ops exchange
  them);
- counted: the global-memory bytes the kernels' threads request (loads + stores, the emulator's counters;
  a value that several threads read counts once per thread, so re-reads served by caches on a GPU show);
- ratio = counted / must-move, FLOPs, and the floor time max(must-move / 3.0 TB/s, FLOPs / 790 TFLOP/s).
Then the forward's totals, and the 8B model's (32 such layers and the head).

The counts are exact for the code as the host compiler built it (see csrc/cuda_emu/traffic.cpp); they say
nothing about caches or timing, which only a GPU measures (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import argparse
import sys
import time

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB = 4096, 32, 8, 128, 14336, 128256
LAYERS_8B = 32
HBM_BYTES_PER_S = 3.0e12
TC_FLOPS = 790e12
W, A, KV, ID = 2, 4, 2, 4        # bytes: bf16 weight, fp32 activation, bf16 K/V, int32 id

CONFIG = {
    "model_type": "nemotron_labs_diffusion", "architectures": ["NemotronLabsDiffusionModel"],
    "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 1,
    "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
    "vocab_size": VOCAB, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "mask_token_id": VOCAB - 1,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "block_size": 32,
}


MATMUL_KERNELS = ("skinny_matmul", "tc_matmul_kernel", "tc_skinny_kernel")


def matmul_op(name, rows, cols):
    """x [n, cols] @ W[rows, cols]^T -> [n, rows]"""
    return (name, MATMUL_KERNELS, (1, 2),      # a split-k sum after the tensor-core kernel when k is cut
            lambda n, kv: (rows * cols * W + n * cols * A + n * rows * A, 2.0 * n * rows * cols))


def ops_table():
    """The forward's ops in launch order: (name, kernel name prefixes, launches (a count, or the (fewest,
    most) of an op whose launch count depends on the shape), (n, kv_len) -> (bytes, flops))."""
    Q, K = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    norm = lambda n, kv: (2 * n * HIDDEN * A + HIDDEN * W, 4.0 * n * HIDDEN)
    add_norm = lambda n, kv: (4 * n * HIDDEN * A + HIDDEN * W, 5.0 * n * HIDDEN)
    layer = [
        matmul_op("qkv_proj", Q + 2 * K, HIDDEN),            # q, k and v stacked: one launch
        ("rope+kv_append", ("rope_kv_append_kernel",), 1,
         lambda n, kv: (n * (Q + 2 * K) * A + n * 8 + n * Q * A + 2 * n * K * KV, 6.0 * n * (Q + K))),
        ("attention", ("attention_tile_kernel", "attention_mma_kernel", "attention_merge_kernel"), (1, 2),   # merge: several chunks
         lambda n, kv: (2 * kv * K * KV + 2 * n * Q * A, 4.0 * n * HEADS * HEAD_DIM * kv)),
        matmul_op("o_proj", HIDDEN, Q),
        ("add+post_norm", ("rms_norm_kernel",), 1, add_norm),
        matmul_op("gate_up_proj", 2 * INTER, HIDDEN),
        ("swiglu", ("swiglu_kernel",), 1, lambda n, kv: (3 * n * INTER * A, 4.0 * n * INTER)),
        matmul_op("down_proj", HIDDEN, INTER),
        ("add+next_norm", ("rms_norm_kernel",), 1, add_norm),
    ]
    head = [("lm_head+select", MATMUL_KERNELS + ("select_split_kernel", "select_merge_kernel"), (3, 4),
             lambda n, kv: (VOCAB * HIDDEN * W + n * HIDDEN * A + 2 * n * 4, 2.0 * n * VOCAB * HIDDEN))]
    pre = [("embed", ("embed_kernel",), 1, lambda n, kv: (n * HIDDEN * W + n * ID + n * HIDDEN * A, 0.0)),
           ("input_norm", ("rms_norm_kernel",), 1, norm)]
    return pre, layer, head


def assign(log, ops):
    """Pairs the launch log with the op table, in order; refuses a log that does not match it."""
    out, i = [], 0
    for name, kernels, count, cost in ops:
        lo, hi = count if isinstance(count, tuple) else (count, count)
        take = lo
        while take < hi and i + take < len(log) and log[i + take][0].split("<")[0].startswith(kernels):
            take += 1
        got = log[i:i + take]
        names = [k.split("<")[0] for k, *_ in got]
        if len(got) < lo or any(not nm.startswith(kernels) for nm in names):
            raise SystemExit(f"roofline_emu: the launches {names} do not match op '{name}' (kernels {kernels}); "
                             f"the forward's kernels changed: update ops_table() in {__file__}")
        out.append((name, names, got, cost))
        i += take
    if i != len(log):
        raise SystemExit(f"roofline_emu: {len(log) - i} launches left over after the op table: "
                         f"{[k for k, *_ in log[i:]]}")
    return out


def floor_s(nbytes, flops):
    return max(nbytes / HBM_BYTES_PER_S, flops / TC_FLOPS)


def measure(model, n, ctx, seed=1):
    import numpy as np
    from tridecode import _C

    emu = _C.cuda_emu
    model.reset()
    model.append_random_cache(ctx, seed=seed)
    ids = np.random.default_rng(seed).integers(4, VOCAB - 2, size=n).tolist()
    emu.take_launches()
    emu.configure(record_launches=1, count_traffic=1)
    t0 = time.perf_counter()
    try:
        if n == 1:
            model.forward_select(ids, "causal", write_cache=False, logits="last")
        else:
            model.forward_select(ids, "bidirectional", write_cache=False)
    finally:
        emu.configure(record_launches=0, count_traffic=0)
    seconds = time.perf_counter() - t0
    log = [r for r in emu.take_launches() if r[0].split("<")[0] != "fill_random_kernel"]
    return log, seconds


def report(log, n, ctx, file=sys.stdout):
    pre, layer, head = ops_table()
    rows = assign(log, pre + layer + head)
    kv = ctx + n
    print(f"\nn = {n} ({'decode, causal' if n == 1 else 'block, bidirectional'}), {ctx} cached tokens", file=file)
    hdr = f"{'op':<16}{'kernels':<48}{'must MB':>10}{'counted MB':>12}{'ratio':>7}{'GFLOP':>9}{'floor us':>10}"
    print(hdr, file=file)
    tot = {"pre": [0, 0, 0], "layer": [0, 0, 0], "head": [0, 0, 0]}
    worst = 0.0
    for idx, (name, names, got, cost) in enumerate(rows):
        must, flops = cost(n, kv)
        counted = sum(t[0] + t[1] for *_, t in got)
        part = "pre" if idx < len(pre) else "layer" if idx < len(pre) + len(layer) else "head"
        for j, v in enumerate((must, counted, flops)):
            tot[part][j] += v
        worst = max(worst, counted / must)
        kern = "+".join(dict.fromkeys(names))
        print(f"{name:<16}{kern[:47]:<48}{must / 1e6:>10.2f}{counted / 1e6:>12.2f}{counted / must:>7.2f}"
              f"{flops / 1e9:>9.2f}{floor_s(must, flops) * 1e6:>10.1f}", file=file)
    one = [sum(tot[p][j] for p in tot) for j in range(3)]
    full = [tot["pre"][j] + LAYERS_8B * tot["layer"][j] + tot["head"][j] for j in range(3)]
    for label, (must, counted, flops) in (("forward (1 layer + head)", one), (f"8B forward ({LAYERS_8B} layers)", full)):
        print(f"{label:<64}{must / 1e6:>10.1f}{counted / 1e6:>12.1f}{counted / must:>7.2f}{flops / 1e9:>9.1f}"
              f"{floor_s(must, flops) * 1e6:>10.1f}", file=file)
    per_layer = sum(len(got) for _, _, got, _ in rows[len(pre):len(pre) + len(layer)])
    print(f"(launches per layer: {per_layer}; worst op ratio {worst:.2f}; floor at "
          f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s and {TC_FLOPS / 1e12:.0f} TFLOP/s)", file=file)
    return {"n": n, "ctx": ctx, "must": one[0], "counted": one[1], "worst_op_ratio": worst,
            "full_must": full[0], "full_counted": full[1], "full_floor_s": floor_s(full[0], full[2])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,8192", help="cached tokens, comma-separated")
    ap.add_argument("--rows", default="1,32", help="query rows per forward (1: decode; more: a block)")
    args = ap.parse_args(argv)
    import tridecode

    if not tridecode.cuda_emulated():
        print("roofline_emu: needs the emulated CUDA backend (TRIDECODE_CUDA=EMU pip install .)", file=sys.stderr)
        return 2
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    t0 = time.perf_counter()
    model = tridecode.random_model(CONFIG, device="cuda", dtype="bfloat16", max_context=max(contexts) + max(rows))
    print(f"8B-shaped layer + LM head on the emulated CUDA backend: hidden {HIDDEN}, {HEADS}/{KV_HEADS} heads x "
          f"{HEAD_DIM}, MLP {INTER}, vocab {VOCAB}, bf16 weights; "
          f"built in {time.perf_counter() - t0:.0f} s")
    results = []
    for ctx in contexts:
        for n in rows:
            log, sec = measure(model, n, ctx)
            results.append(report(log, n, ctx))
            print(f"(emulated in {sec:.0f} s)")
    by = {(r["n"], r["ctx"]): r for r in results}
    for ctx in contexts:
        if (1, ctx) in by and (32, ctx) in by:
            a, b = by[(1, ctx)], by[(32, ctx)]
            print(f"ctx {ctx}: 8B forward floor n=1 {a['full_floor_s'] * 1e3:.2f} ms, n=32 {b['full_floor_s'] * 1e3:.2f} ms; "
                  f"counted/must n=1 {a['full_counted'] / a['full_must']:.2f}, n=32 {b['full_counted'] / b['full_must']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

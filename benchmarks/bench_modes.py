"""Decoding modes side by side on one checkpoint: tokens/s, nfe, tokens per forward (TPF), mean accepted
tokens per self-spec cycle, and how often each mode's output agrees with AR greedy, over a fixed prompt set.

    python benchmarks/bench_modes.py MODEL_DIR [--max-new-tokens 64] [--block-length 32]
        [--thresholds 0.9,0.7,0.5] [--prompts FILE] [--csv out.csv]

Prompts: one per line in --prompts (text when the checkpoint has tokenizer.json, else comma-separated ids);
by default 8 fixed pseudo-random id prompts of lengths 4..64 (seeded, so every run uses the same ones).
AR greedy is the baseline in the same run; "agree" is the fraction of generated positions equal to AR's.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np


def default_prompts(model, n=8):
    rng = np.random.default_rng(2026)
    vocab = model.config.vocab_size
    banned = {model.config.mask_token_id, *model.config.eos_token_ids}
    out = []
    for length in np.linspace(4, 64, n).astype(int):
        ids = [i for i in rng.integers(0, vocab, size=int(length) * 2).tolist() if i not in banned][: int(length)]
        if model.config.bos_token_id is not None:
            ids[0] = model.config.bos_token_id
        out.append(ids)
    return out


def read_prompts(model, path):
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if model.tokenizer is not None:
                prompts.append(model.encode(line))
            else:
                prompts.append([int(t) for t in line.split(",")])
    return prompts


def agreement(tokens, reference):
    n = min(len(tokens), len(reference))
    if n == 0:
        return 1.0
    return float(np.mean(np.asarray(tokens[:n]) == np.asarray(reference[:n])))


def run_mode(model, prompts, label, ar_outputs, **kwargs):
    toks = nfe = fwd = 0
    seconds = 0.0
    accepted = []
    agree = []
    for i, p in enumerate(prompts):
        t0 = time.perf_counter()
        r = model.generate(p, **kwargs)
        seconds += time.perf_counter() - t0
        toks += len(r.tokens)
        nfe += r.nfe
        fwd += r.forwards
        if r.accepted_per_cycle:
            accepted += r.accepted_per_cycle
        if ar_outputs is not None:
            agree.append(agreement(r.tokens, ar_outputs[i]))
    return {
        "mode": label,
        "tokens": toks,
        "nfe": nfe,
        "forwards": fwd,
        "tpf": toks / fwd,
        "tokens_per_s": toks / seconds,
        "mean_accepted": (sum(accepted) / len(accepted)) if accepted else None,
        "agree_with_ar": float(np.mean(agree)) if agree else 1.0,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", metavar="MODEL_DIR")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--thresholds", default="0.9", help="diffusion thresholds, comma-separated")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import tridecode

    if args.threads:
        tridecode.set_num_threads(args.threads)
    model = tridecode.load(args.model)
    prompts = read_prompts(model, args.prompts) if args.prompts else default_prompts(model)
    no_eos = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])   # fixed lengths: compare like with like
    L = args.block_length

    ar = [model.generate(p, mode="ar", **no_eos).tokens for p in prompts]
    rows = [run_mode(model, prompts, "ar (baseline)", ar, mode="ar", **no_eos)]
    for thr in [float(t) for t in args.thresholds.split(",") if t]:
        rows.append(run_mode(model, prompts, f"diffusion L={L} thr={thr}", ar, mode="diffusion", block_length=L,
                             threshold=thr, **no_eos))
    if model.lora is not None:
        rows.append(run_mode(model, prompts, f"self-spec L={L} +lora", ar, mode="self_spec", block_length=L,
                             **no_eos))
    rows.append(run_mode(model, prompts, f"self-spec L={L}", ar, mode="self_spec", block_length=L, use_lora=False,
                         **no_eos))

    base = rows[0]["tokens_per_s"]
    print(f"model {args.model}: {len(prompts)} prompts, {args.max_new_tokens} new tokens each, "
          f"threads {tridecode.num_threads()}, cpu kernels {tridecode._C.cpu_isa()}")
    print(f"{'mode':28s} {'tokens':>7s} {'nfe':>6s} {'fwd':>6s} {'TPF':>6s} {'accept':>7s} {'agree':>6s} "
          f"{'tok/s':>9s} {'vs ar':>6s}")
    for r in rows:
        acc = f"{r['mean_accepted']:.2f}" if r["mean_accepted"] is not None else "-"
        print(f"{r['mode']:28s} {r['tokens']:7d} {r['nfe']:6d} {r['forwards']:6d} {r['tpf']:6.2f} {acc:>7s} "
              f"{r['agree_with_ar']:6.3f} {r['tokens_per_s']:9.1f} {r['tokens_per_s'] / base:5.2f}x")
    print("(TPF = tokens / forwards incl. prefill; accept = mean tokens per self-spec cycle; agree = fraction of "
          "positions equal to AR greedy)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

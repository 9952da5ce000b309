"""Decoding modes side by side on one checkpoint: tokens per forward (TPF), mean accepted tokens per self-spec
cycle, how often each mode's output agrees with AR greedy, the AR model's mean log-likelihood of each mode's
output and its distinct-token ratio (so a faster mode that writes worse or more repetitive text shows), and
tokens/s as a ratio to AR in the same run at each thread count, over a fixed prompt set.

    python benchmarks/bench_modes.py MODEL_DIR [--max-new-tokens 64] [--block-length L (default: the config's)]
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


def ar_loglik(model, prompt, tokens) -> float:
    """Mean log-probability of tokens after prompt under the model's own AR (causal) distribution."""
    if not tokens:
        return 0.0
    model.reset()
    logits = model.forward(list(prompt) + list(tokens[:-1]), mode="causal", write_cache=False).astype(np.float64)
    rows = logits[len(prompt) - 1:]
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return float(np.mean(logp[np.arange(len(tokens)), tokens]))


def run_mode(model, prompts, label, ar_outputs, **kwargs):
    toks = nfe = fwd = 0
    seconds = 0.0
    accepted, agree, loglik, distinct = [], [], [], []
    outputs = []
    for i, p in enumerate(prompts):
        t0 = time.perf_counter()
        r = model.generate(p, **kwargs)
        seconds += time.perf_counter() - t0
        outputs.append(r.tokens)
        toks += len(r.tokens)
        nfe += r.nfe
        fwd += r.forwards
        if r.accepted_per_cycle:
            accepted += r.accepted_per_cycle
        if ar_outputs is not None:
            agree.append(agreement(r.tokens, ar_outputs[i]))
    for p, out in zip(prompts, outputs):   # after the timing: these forwards are not the mode's
        loglik.append(ar_loglik(model, p, out))
        distinct.append(len(set(out)) / max(1, len(out)))
    return {
        "mode": label,
        "tokens": toks,
        "nfe": nfe,
        "forwards": fwd,
        "tpf": toks / fwd,
        "tokens_per_s": toks / seconds,
        "mean_accepted": (sum(accepted) / len(accepted)) if accepted else None,
        "agree_with_ar": float(np.mean(agree)) if agree else 1.0,
        "ar_loglik": float(np.mean(loglik)),
        "distinct": float(np.mean(distinct)),
    }


def forward_costs(model, L, context=64, runs=30):
    """Median ms of one forward over `context` cached tokens: a 1-token decode step (the sampler head on its
    row), and an L-token block, causal (a verify) and bidirectional (a diffusion step, not cached)."""
    ids = [5] * context

    def timed(fn):
        ts = []
        for _ in range(runs + 3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts[3:])) * 1e3

    model.reset()
    model.forward(ids, logits="last")

    def decode():
        model.forward_select([7], logits="last")
        model.crop(context)

    def verify():
        model.forward_select([7] * L)
        model.crop(context)

    def diffuse():
        model.forward_select([7] * L, mode="bidirectional", write_cache=False)

    out = {"decode": timed(decode), "block causal": timed(verify), "block bidirectional": timed(diffuse)}
    model.reset()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", metavar="MODEL_DIR")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=None,
                    help="default: the checkpoint's block_size (config.json), else 32")
    ap.add_argument("--thresholds", default="0.9", help="diffusion thresholds, comma-separated")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--threads", default="1,default",
                    help="thread counts to time every mode at, comma-separated ('default': OpenMP's)")
    args = ap.parse_args(argv)

    import tridecode

    default_threads = tridecode.num_threads()
    counts = [default_threads if t == "default" else int(t) for t in args.threads.split(",") if t]
    model = tridecode.load(args.model)
    prompts = read_prompts(model, args.prompts) if args.prompts else default_prompts(model)
    no_eos = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])   # fixed lengths: compare like with like
    L = args.block_length or model.default_block_length
    modes = [("ar (baseline)", dict(mode="ar"))]
    for thr in [float(t) for t in args.thresholds.split(",") if t]:
        modes.append((f"diffusion L={L} thr={thr}", dict(mode="diffusion", block_length=L, threshold=thr)))
    if model.lora is not None:
        modes.append((f"self-spec L={L} +lora", dict(mode="self_spec", block_length=L)))
    modes.append((f"self-spec L={L}", dict(mode="self_spec", block_length=L, use_lora=False)))

    ar = [model.generate(p, mode="ar", **no_eos).tokens for p in prompts]
    rows = []
    costs = {}
    for k, threads in enumerate(counts):   # every mode timed at each thread count, AR in the same run
        tridecode.set_num_threads(threads)
        costs[threads] = forward_costs(model, L)
        for i, (label, kw) in enumerate(modes):
            r = run_mode(model, prompts, label, ar, **kw, **no_eos)
            if k == 0:
                rows.append(r)
            rows[i][f"tokens_per_s@{threads}"] = r["tokens_per_s"]
    tridecode.set_num_threads(default_threads)

    print(f"model {args.model}: {len(prompts)} prompts, {args.max_new_tokens} new tokens each, "
          f"cpu kernels {tridecode._C.cpu_isa()}")
    head = (f"{'mode':26s} {'tokens':>6s} {'fwd':>6s} {'TPF':>5s} {'accept':>6s} {'agree':>6s} {'loglik':>7s} "
            f"{'distinct':>8s}" + "".join(f" {'tok/s@' + str(t):>10s} {'vs ar':>6s}" for t in counts))
    print(head)
    for r in rows:
        acc = f"{r['mean_accepted']:.2f}" if r["mean_accepted"] is not None else "-"
        line = (f"{r['mode']:26s} {r['tokens']:6d} {r['forwards']:6d} {r['tpf']:5.2f} {acc:>6s} "
                f"{r['agree_with_ar']:6.3f} {r['ar_loglik']:7.3f} {r['distinct']:8.3f}")
        for t in counts:
            line += f" {r[f'tokens_per_s@{t}']:10.1f} {r[f'tokens_per_s@{t}'] / rows[0][f'tokens_per_s@{t}']:5.2f}x"
        print(line)
    print("(TPF = tokens / forwards incl. prefill; accept = mean tokens per self-spec cycle; agree = fraction of "
          "positions equal to AR greedy; loglik = mean log-probability of the output under the model's AR; "
          "distinct = distinct tokens / tokens per output)")
    print(f"per-forward cost over 64 cached tokens, ms (block = {L} tokens):")
    for t, c in costs.items():
        print(f"  {t} thread(s): decode {c['decode']:.3f}, block causal {c['block causal']:.3f} "
              f"({c['block causal'] / c['decode']:.2f} decode steps), block bidirectional "
              f"{c['block bidirectional']:.3f} ({c['block bidirectional'] / c['decode']:.2f} decode steps)")
    print("what the forward costs allow (AR's forwards are decode steps; diffusion's are bidirectional blocks; "
          "self-spec's half drafts, half causal verifies): ceiling = TPF x decode / block; 1.5x AR would need a "
          "block to cost at most TPF / 1.5 decode steps:")

    def block(r, c):
        if r["mode"].startswith("self-spec"):
            return (c["block causal"] + c["block bidirectional"]) / 2
        return c["block bidirectional"]

    for r in rows[1:]:
        bounds = ", ".join(f"{r['tpf'] * c['decode'] / block(r, c):.2f}x @{t} (block = {block(r, c) / c['decode']:.2f} "
                           f"steps)" for t, c in costs.items())
        print(f"  {r['mode']:26s} ceiling {bounds}; 1.5x needs <= {r['tpf'] / 1.5:.2f} steps")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

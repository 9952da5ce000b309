"""The effect of the diffusion-loss weight alpha: shortened training runs at several alphas (same corpus,
shape, seed and steps), each measured on the held-out prompts: final AR loss, diffusion TPF at threshold
0.9 with its agreement with AR greedy, and self-spec mean acceptance.

    python benchmarks/bench_alpha.py --alphas 0.1,0.3,1.0 --ar-steps 150 --joint-steps 350 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_modes import agreement, read_prompts  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alphas", default="0.1,0.3,1.0")
    ap.add_argument("--ar-steps", type=int, default=150)
    ap.add_argument("--joint-steps", type=int, default=350)
    ap.add_argument("--out", required=True)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts to measure on")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import tridecode
    from tridecode.train.__main__ import main as train

    rows = []
    for alpha in [float(a) for a in args.alphas.split(",")]:
        out = os.path.join(args.out, f"alpha{alpha}")
        if not os.path.exists(os.path.join(out, "config.json")):
            rc = train(["--out", out, "--ar-steps", str(args.ar_steps), "--joint-steps", str(args.joint_steps),
                        "--alpha", str(alpha), "--block-size", str(args.block_length), "--threads",
                        str(args.threads), "--log-every", "100000"])
            if rc:
                return rc
        curve = json.load(open(os.path.join(out, "loss_curve.json")))
        m = tridecode.load(out)
        prompts = read_prompts(m, os.path.join(out, "heldout.txt"))[: args.prompts]
        kw = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[], block_length=args.block_length)
        toks = fwd = 0
        agree, acc = [], []
        for p in prompts:
            ar = m.generate(p, mode="ar", max_new_tokens=args.max_new_tokens, eos_token_id=[]).tokens
            d = m.generate(p, mode="diffusion", threshold=0.9, **kw)
            toks += len(d.tokens)
            fwd += d.forwards
            agree.append(agreement(d.tokens, ar))
            s = m.generate(p, mode="self_spec", **kw)
            assert s.tokens == ar
            acc += s.accepted_per_cycle
        tail = curve[-50:]
        rows.append((alpha, sum(c["ar"] for c in tail) / len(tail), sum(c["diff"] for c in tail) / len(tail),
                     toks / fwd, sum(agree) / len(agree), sum(acc) / len(acc)))
    print(f"{args.ar_steps} AR + {args.joint_steps} joint steps per run, block {args.block_length}, "
          f"{args.prompts} held-out prompts x {args.max_new_tokens} tokens")
    print(f"{'alpha':>6s} {'AR loss':>8s} {'diff loss':>9s} {'diff TPF@0.9':>13s} {'agree':>6s} {'accept':>7s}")
    for a, l_ar, l_diff, tpf, agr, acc in rows:
        print(f"{a:6.2f} {l_ar:8.3f} {l_diff:9.3f} {tpf:13.2f} {agr:6.3f} {acc:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

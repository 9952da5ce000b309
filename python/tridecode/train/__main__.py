"""python -m tridecode.train: the two-stage recipe (AR warm-up, then joint AR + diffusion).

Example (a small model on the standard library sources, CPU):
    python -m tridecode.train --out model-dir --ar-steps 300 --joint-steps 1200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m tridecode.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--corpus", default="stdlib",
                    help="'stdlib' (the interpreter's standard library sources) or a directory/file of text")
    ap.add_argument("--corpus-sha256", default=None, help="fail unless the corpus manifest has this digest")
    ap.add_argument("--max-files", type=int, default=None, help="use only the first N corpus files")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seq-len", type=int, default=128, help="training sequence length (a multiple of block size)")
    ap.add_argument("--block-size", type=int, default=16, help="diffusion block size of the joint stage")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ar-steps", type=int, default=200, help="stage 1: AR-only steps")
    ap.add_argument("--joint-steps", type=int, default=800, help="stage 2: joint AR + diffusion steps")
    ap.add_argument("--alpha", type=float, default=0.3, help="weight of the diffusion loss")
    ap.add_argument("--eps", type=float, default=1e-3, help="t ~ U(eps, 1)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps (the schedule still spans the full run): to check that a "
                         "rerun reproduces the start of a recorded loss curve")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch
    except ImportError:
        print("tridecode.train needs torch: pip install 'tridecode[train]'", file=sys.stderr)
        return 2
    from .data import MASK_ID, encode_stream, files_corpus, stdlib_corpus, train_tokenizer
    from .model import Shape, TriModeLM
    from .objective import ar_loss, joint_loss
    from . import checkpoint

    if args.seq_len % args.block_size:
        print("--seq-len must be a multiple of --block-size", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.corpus == "stdlib":
        corpus = stdlib_corpus(args.max_files)
    else:
        paths = ([os.path.join(dp, f) for dp, _, fs in sorted(os.walk(args.corpus)) for f in sorted(fs)]
                 if os.path.isdir(args.corpus) else [args.corpus])
        corpus = files_corpus([(os.path.relpath(p, args.corpus) if os.path.isdir(args.corpus) else
                                os.path.basename(p), p) for p in paths][: args.max_files])
    if args.corpus_sha256 and corpus.digest != args.corpus_sha256:
        print(f"corpus digest {corpus.digest} != expected {args.corpus_sha256}", file=sys.stderr)
        return 1
    train_texts, held_texts = corpus.split()
    tok = train_tokenizer(train_texts, args.vocab_size)
    stream = torch.tensor(encode_stream(tok, train_texts), dtype=torch.long)
    shape = Shape(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                  intermediate_size=args.intermediate)
    model = TriModeLM(shape)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    total = args.ar_steps + args.joint_steps
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
    print(f"corpus {len(corpus.files)} files (sha256 {corpus.digest}), {stream.numel()} train tokens, "
          f"vocab {shape.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    curve = []
    start = time.time()
    for step in range(total if args.stop_after is None else min(total, args.stop_after)):
        starts = torch.randint(0, stream.numel() - args.seq_len - 1, (args.batch,), generator=gen)
        x0 = torch.stack([stream[s:s + args.seq_len] for s in starts.tolist()])
        if step < args.ar_steps:
            loss = ar_loss(model, x0)
            stats = {"stage": "ar", "ar": loss.item(), "loss": loss.item()}
        else:
            loss, stats = joint_loss(model, x0, MASK_ID, args.block_size, args.alpha, args.eps, gen)
            stats["stage"] = "joint"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append({"step": step, **stats})
        if step % args.log_every == 0 or step == total - 1:
            print(f"step {step:5d} {stats['stage']:5s} loss {stats['loss']:.4f} ar {stats['ar']:.4f}"
                  + (f" diff {stats['diff']:.4f}" if "diff" in stats else "") + f"  {time.time() - start:.0f}s",
                  flush=True)
    extra = {"command": "python -m tridecode.train " + " ".join(argv if argv is not None else sys.argv[1:]),
             "corpus_sha256": corpus.digest, "final": curve[-1]}
    checkpoint.save(model, tok, args.out, args.block_size, extra)
    with open(os.path.join(args.out, "loss_curve.json"), "w") as f:
        json.dump(curve, f)
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        for text in held_texts:
            line = " ".join(text.split())[:200]
            if line:
                f.write(line + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

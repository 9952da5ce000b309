"""python -m tridecode.train: the recipe.

    python -m tridecode.train --out BASE ...                  the base: AR warm-up, then joint AR + diffusion
    python -m tridecode.train distill --init BASE --out DIR   self-distillation on the model's own AR output
    python -m tridecode.train lora --init DIR                 the self-speculation LoRA drafter (DIR/linear_spec_lora)
    python -m tridecode.train eval --init DIR                 the held-out AR loss of a checkpoint

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
    ap.add_argument("--block-align", choices=["varied", "zero"], default="varied",
                    help="varied: noisy blocks start after a clean prefix of 1..L tokens and slot 0 (the seed) "
                         "is never masked, as at inference; zero: blocks at multiples of L from position 0, "
                         "every slot maskable (the recipe's first form)")
    ap.add_argument("--save-state", action="store_true",
                    help="also write train_state.pt (optimizer, schedule, RNG) so --resume can continue the run")
    ap.add_argument("--resume", default=None, help="continue the run saved (with --save-state) in this directory")
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = argv[0] if argv and argv[0] in ("distill", "lora", "eval") else None
    args = None if stage else build_parser().parse_args(argv)
    try:
        import torch
    except ImportError:
        print("tridecode.train needs torch: pip install 'tridecode[train]'", file=sys.stderr)
        return 2
    if stage == "eval":
        from . import distill
        return distill.evaluate(argv[1:])
    if stage:
        from . import distill
        return distill.main(stage, argv[1:])
    from .data import MASK_ID, encode_stream, load_corpus, train_tokenizer
    from .model import Shape, TriModeLM
    from .objective import ar_loss, heldout_ar_loss, joint_loss
    from . import checkpoint

    if args.seq_len % args.block_size:
        print("--seq-len must be a multiple of --block-size", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = load_corpus(args.corpus, args.max_files)
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
    curve, first = [], 0
    if args.resume:
        state = torch.load(os.path.join(args.resume, "train_state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first, curve = state["step"], state["curve"]
        print(f"resuming at step {first} of {total}")
    start = time.time()
    for step in range(first, total if args.stop_after is None else min(total, args.stop_after)):
        starts = torch.randint(0, stream.numel() - args.seq_len - 1, (args.batch,), generator=gen)
        x0 = torch.stack([stream[s:s + args.seq_len] for s in starts.tolist()])
        if step < args.ar_steps:
            loss = ar_loss(model, x0)
            stats = {"stage": "ar", "ar": loss.item(), "loss": loss.item()}
        else:
            loss, stats = joint_loss(model, x0, MASK_ID, args.block_size, args.alpha, args.eps, gen,
                                     aligned=args.block_align == "varied")
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
    held = torch.tensor(encode_stream(tok, held_texts), dtype=torch.long)
    held_loss = heldout_ar_loss(model, held, args.seq_len)
    print(f"held-out AR loss {held_loss:.4f}")
    extra = {"command": "python -m tridecode.train " + " ".join(argv), "corpus_sha256": corpus.digest,
             "final": curve[-1], "heldout_ar_loss": held_loss}
    checkpoint.save(model, tok, args.out, args.block_size, extra)
    if args.save_state:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": len(curve),
                    "curve": curve, "lr": args.lr, "warm": warm, "total": total},
                   os.path.join(args.out, "train_state.pt"))
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

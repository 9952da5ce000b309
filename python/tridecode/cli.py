"""Command line: `tridecode generate MODEL_DIR --prompt TEXT | --ids 1,2,3 [options]`."""

from __future__ import annotations

import argparse
import sys


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("--ids is empty")
    return ids


def _threshold(text: str):
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold must be a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tridecode",
        description="Native inference for tri-mode (AR / block diffusion / self-speculation) language models.")
    parser.add_argument("--version", action="store_true", help="print the version and build facts, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text or token ids from a prompt",
                       description="Generate from a prompt with a Hugging Face checkpoint directory.")
    g.add_argument("model", metavar="MODEL_DIR", nargs="?", default=None,
                   help="checkpoint directory: config.json, model.safetensors (or shards), optional tokenizer.json "
                        "(default: the small tri-mode model shipped with tridecode)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json in MODEL_DIR)")
    src.add_argument("--ids", type=_ids, help="prompt as comma-separated token ids, e.g. 1,15,70")
    g.add_argument("--mode", default="ar", choices=["ar", "diffusion", "self-spec"],
                   help="decoding mode: ar (one token per forward), diffusion (block diffusion), self-spec "
                        "(diffusion drafts verified autoregressively; output equals ar at temperature 0). "
                        "Default: ar")
    g.add_argument("--block-length", type=int, default=None,
                   help="diffusion / self-spec block length (default: the checkpoint's block_size, else 32)")
    g.add_argument("--threshold", type=_threshold, default=None,
                   help="diffusion: commit every masked slot with confidence >= this (plus the most confident "
                        "one) per step, in (0, 1] (default: 0.9); 'none' = fixed schedule of --steps steps")
    g.add_argument("--steps", type=int, default=None,
                   help="diffusion with --threshold none: denoising steps per block (default: block length - 1)")
    g.add_argument("--draft-threshold", type=float, default=None,
                   help="self-spec: 0 drafts a block in one forward (default); > 0 iterates, committing drafts "
                        "with confidence >= this")
    g.add_argument("--no-lora", action="store_true",
                   help="self-spec: do not use the LoRA drafter (MODEL_DIR/linear_spec_lora/)")
    g.add_argument("--lora", default=None, metavar="DIR", help="self-spec: LoRA drafter directory to use instead")
    g.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with mass >= p")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible runs)")
    g.add_argument("--eos-token-id", type=int, action="append", default=None,
                   help="stop after this token (repeatable; default: the config's eos_token_id)")
    g.add_argument("--max-context", type=int, default=None,
                   help="KV-cache capacity in tokens (default: min(max_position_embeddings, 4096))")
    g.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "int8"],
                   help="convert weights to this dtype at load; int8 quantizes the products' weights with a "
                        "scale per 32 (CPU only; default: keep the stored dtype)")
    g.add_argument("--compute-dtype", default="auto", choices=["auto", "float32"],
                   help="auto: bf16 weights multiply bf16 activations (fp32 sums); float32: fp32 activations "
                        "(CPU only; default: auto)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="backend to run on (default: cpu)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--print-ids", action="store_true", help="print token ids even when a tokenizer exists")
    return parser


def _version() -> str:
    import tridecode
    from tridecode import _C
    cuda = f"cuda compiled: {tridecode.cuda_compiled()}, cuda available: {tridecode.cuda_available()}"
    if tridecode.cuda_available():
        cuda += f", cuda device: {_C.cuda_device_name(0)}"
    if tridecode.cuda_emulated():
        cuda += " (emulated: TRIDECODE_CUDA=EMU build, kernels run on the CPU)"
    p = _C.cpu_paths()
    cpu = f"cpu kernels: {p['kernels']} (bf16 products: {p['bf16']}, int8 products: {p['int8']})"
    return f"tridecode {tridecode.__version__} ({cpu}, threads: {_C.num_threads()}, {cuda})"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_version())
        return 0
    if args.command != "generate":
        parser.print_help()
        return 2

    import tridecode
    try:
        if args.threads is not None:
            tridecode.set_num_threads(args.threads)
        lora = None if args.no_lora else (args.lora or "auto")
        path = args.model if args.model is not None else tridecode.default_model_path()
        model = tridecode.load(path, device=args.device, dtype=args.dtype, max_context=args.max_context, lora=lora,
                               compute_dtype=args.compute_dtype)
        if args.prompt is not None and model.tokenizer is None:
            parser.error(f"--prompt needs {path}/tokenizer.json; use --ids instead")
        prompt = args.prompt if args.prompt is not None else args.ids
        as_text = model.tokenizer is not None and not args.print_ids
        printed: list[int] = []

        def stream(tokens):
            # New text = decode(context + new) minus decode(context) over a short window of already printed
            # tokens, so characters spanning several tokens print whole and long outputs stay linear.
            if as_text:
                context = printed[-8:]
                before = model.decode(context)
                printed.extend(tokens)
                sys.stdout.write(model.decode(context + list(tokens))[len(before):])
            else:
                sys.stdout.write(("," if printed else "") + ",".join(map(str, tokens)))
                printed.extend(tokens)
            sys.stdout.flush()

        mode = args.mode.replace("-", "_")
        kwargs = {}
        if args.block_length is not None:
            kwargs["block_length"] = args.block_length
        if args.threshold is not None:
            kwargs["threshold"] = None if args.threshold == "none" else args.threshold
        if args.steps is not None:
            kwargs["steps"] = args.steps
        if args.draft_threshold is not None:
            kwargs["draft_threshold"] = args.draft_threshold
        if mode == "self_spec" and args.no_lora:
            kwargs["use_lora"] = False
        result = model.generate(prompt, mode=mode, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, eos_token_id=args.eos_token_id, on_tokens=stream, **kwargs)
    except (ValueError, TypeError, OSError, MemoryError) as e:
        print(f"tridecode: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tridecode",
        description="Native inference for tri-mode (AR / block diffusion / self-speculation) language models.")
    parser.add_argument("--version", action="store_true", help="print the version and build facts, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text or token ids from a prompt",
                       description="Generate from a prompt with a Hugging Face checkpoint directory.")
    g.add_argument("model", metavar="MODEL_DIR",
                   help="checkpoint directory: config.json, model.safetensors (or shards), optional tokenizer.json")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json in MODEL_DIR)")
    src.add_argument("--ids", type=_ids, help="prompt as comma-separated token ids, e.g. 1,15,70")
    g.add_argument("--mode", default="ar", choices=["ar"], help="decoding mode (default: ar)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with mass >= p")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible runs)")
    g.add_argument("--eos-token-id", type=int, action="append", default=None,
                   help="stop after this token (repeatable; default: the config's eos_token_id)")
    g.add_argument("--max-context", type=int, default=None,
                   help="KV-cache capacity in tokens (default: min(max_position_embeddings, 4096))")
    g.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="convert weights to this dtype at load (default: keep the stored dtype)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--print-ids", action="store_true", help="print token ids even when a tokenizer exists")
    return parser


def _version() -> str:
    import tridecode
    from tridecode import _C
    return (f"tridecode {tridecode.__version__} (cpu kernels: {_C.cpu_isa()}, threads: {_C.num_threads()}, "
            f"cuda compiled: {tridecode.cuda_compiled()}, cuda available: {tridecode.cuda_available()})")


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
        model = tridecode.load(args.model, dtype=args.dtype, max_context=args.max_context)
        if args.prompt is not None and model.tokenizer is None:
            parser.error(f"--prompt needs {args.model}/tokenizer.json; use --ids instead")
        prompt = args.prompt if args.prompt is not None else args.ids
        as_text = model.tokenizer is not None and not args.print_ids
        printed: list[int] = []

        def stream(tokens):
            # Text is re-decoded from the whole output so multi-token characters print correctly.
            if as_text:
                before = model.decode(printed)
                printed.extend(tokens)
                sys.stdout.write(model.decode(printed)[len(before):])
            else:
                sys.stdout.write(("," if printed else "") + ",".join(map(str, tokens)))
                printed.extend(tokens)
            sys.stdout.flush()

        result = model.generate(prompt, mode=args.mode, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, eos_token_id=args.eos_token_id, on_tokens=stream)
    except (ValueError, TypeError, OSError) as e:
        print(f"tridecode: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

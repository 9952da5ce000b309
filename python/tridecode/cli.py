"""Command line: `tridecode generate [MODEL] -p TEXT | -f FILE | --ids 1,2,3 [options]`, `tridecode serve`.

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments, 130 interrupted (Ctrl-C: the stats so
far on stderr, no traceback). A closed pipe (`| head`) ends quietly with 0."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .params import DEFAULTS, DESCRIPTIONS, normalize_mode


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


def _mode(text: str) -> str:
    try:
        return normalize_mode(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _help(name: str) -> str:
    """The parameter's description from the shared table, with its shared default."""
    shown = "none" if DEFAULTS[name] is None else DEFAULTS[name]
    return f"{DESCRIPTIONS[name]} (default: {shown})"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and loading options `generate` and `serve` share."""
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="checkpoint directory (config.json, model.safetensors or shards, optional tokenizer.json) or a "
                        "Hugging Face model id in the local hub cache (default: the small tri-mode model shipped "
                        "with tridecode)")
    p.add_argument("-m", "--model", dest="model_option", metavar="MODEL", default=None,
                   help="the same as the positional MODEL")
    p.add_argument("--revision", default=None, help="with a Hugging Face model id: branch, tag or commit "
                                                     "(default: main)")
    p.add_argument("-c", "--max-context", type=int, default=None,
                   help="KV-cache capacity in tokens (default: min(max_position_embeddings, 4096))")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "int8"],
                   help="convert weights to this dtype at load; int8 quantizes the products' weights with a "
                        "scale per 32 (CPU only; default: keep the stored dtype)")
    p.add_argument("--compute-dtype", default="auto", choices=["auto", "float32"],
                   help="auto: bf16 weights multiply bf16 activations (fp32 sums); float32: fp32 activations "
                        "(CPU only; default: auto)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="backend to run on (default: cpu)")
    p.add_argument("--hugepages", default="auto", choices=["auto", "on", "off"],
                   help="CPU weights in transparent huge pages (one copy at load) or memory-mapped from the "
                        "files (off); auto: huge pages past 16 MiB of weights where the kernel offers them "
                        "(default: auto)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-lora", action="store_true",
                   help="self_spec: do not use the LoRA drafter (MODEL/linear_spec_lora/)")
    p.add_argument("--lora", default=None, metavar="DIR", help="self_spec: LoRA drafter directory to use instead")


def model_path(parser, args) -> str:
    if args.model is not None and args.model_option is not None and args.model != args.model_option:
        parser.error("give the model once: positional MODEL or -m/--model")
    path = args.model if args.model is not None else args.model_option
    if path is None:
        import tridecode
        path = tridecode.default_model_path()
    return path


def load_model(parser: argparse.ArgumentParser, args):
    import tridecode

    if args.threads is not None:
        tridecode.set_num_threads(args.threads)
    lora = None if args.no_lora else (args.lora or "auto")
    return tridecode.load(model_path(parser, args), device=args.device, dtype=args.dtype,
                          max_context=args.max_context, lora=lora, compute_dtype=args.compute_dtype,
                          revision=args.revision, hugepages={"auto": None, "on": True, "off": False}[args.hugepages])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tridecode",
        description="Native inference for tri-mode (AR / block diffusion / self-speculation) language models.")
    parser.add_argument("--version", action="store_true", help="print the version and build facts, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text or token ids from a prompt",
                       description="Generate from a prompt. The defaults are the Python API's and the server's.")
    add_model_arguments(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="prompt text, or - to read it from standard input (needs a tokenizer)")
    src.add_argument("-f", "--file", help="read the prompt text from this file")
    src.add_argument("--ids", type=_ids, help="prompt as comma-separated token ids, e.g. 1,15,70")
    g.add_argument("--mode", type=_mode, default=DEFAULTS["mode"], help=_help("mode"))
    g.add_argument("-n", "--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"],
                   help=_help("max_new_tokens"))
    g.add_argument("--temperature", "--temp", type=float, default=DEFAULTS["temperature"],
                   help=_help("temperature"))
    g.add_argument("--top-k", type=int, default=None, help=_help("top_k"))
    g.add_argument("--top-p", type=float, default=None, help=_help("top_p"))
    g.add_argument("-s", "--seed", type=int, default=None, help=_help("seed"))
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help=_help("stop").replace("(default", "(repeatable; default"))
    g.add_argument("--block-length", type=int, default=None, help=_help("block_length"))
    g.add_argument("--threshold", type=_threshold, default=None, help=_help("threshold"))
    g.add_argument("--steps", type=int, default=None, help=_help("steps"))
    g.add_argument("--draft-threshold", type=float, default=None, help=_help("draft_threshold"))
    g.add_argument("--eos-token-id", type=int, action="append", default=None,
                   help="stop after this token (repeatable; default: the config's eos_token_id)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS tokens (runs to -n tokens)")
    g.add_argument("--print-ids", action="store_true", help="print token ids even when a tokenizer exists")

    from .server.cli import add_arguments as add_serve_arguments
    s = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                       description="Serve a model over HTTP: /v1/completions, /v1/chat/completions, /v1/models, "
                                   "/health, /metrics (needs the serve extra: pip install 'tridecode[serve]').")
    add_serve_arguments(s)
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
    cpu = f"cpu kernels: {p['kernels']} (bf16 products: {p['bf16']}, int8 products: {p['int8']}, amx: {p['amx']})"
    return f"tridecode {tridecode.__version__} ({cpu}, threads: {_C.num_threads()}, {cuda})"


def _prompt(parser, args, model):
    if args.ids is not None:
        return args.ids
    if model.tokenizer is None:
        parser.error(f"{model.directory} has no tokenizer.json: give the prompt as --ids")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"-f {args.file}: cannot read the prompt: {e}") from None
    if args.prompt == "-":
        return sys.stdin.read()
    return args.prompt


def _generate(parser, args) -> int:
    model = load_model(parser, args)
    prompt = _prompt(parser, args, model)
    as_text = model.tokenizer is not None and not args.print_ids
    count = [0]

    def on_chunk(chunk):
        if as_text:
            sys.stdout.write(chunk.text)
        elif chunk.tokens:
            sys.stdout.write(("," if count[0] else "") + ",".join(map(str, chunk.tokens)))
        count[0] += len(chunk.tokens)
        sys.stdout.flush()

    kwargs = {}
    if args.block_length is not None:
        kwargs["block_length"] = args.block_length
    if args.threshold is not None:
        kwargs["threshold"] = None if args.threshold == "none" else args.threshold
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.draft_threshold is not None:
        kwargs["draft_threshold"] = args.draft_threshold
    if args.mode == "self_spec" and args.no_lora:
        kwargs["use_lora"] = False
    start = time.perf_counter()
    try:
        result = model.generate(prompt, mode=args.mode, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                eos_token_id=[] if args.ignore_eos else args.eos_token_id, stop=args.stop,
                                on_chunk=on_chunk, **kwargs)
    except KeyboardInterrupt:
        seconds = time.perf_counter() - start
        sys.stdout.write("\n")
        sys.stdout.flush()
        rate = count[0] / seconds if seconds > 0 else 0.0
        print(f"interrupted: mode={args.mode} tokens={count[0]} seconds={seconds:.3f} tokens/s={rate:.1f}",
              file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(result.summary(), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_version())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            from .server.cli import main as serve
            return serve(args)
        return _generate(parser, args)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say. Point stdout at /dev/null so the interpreter's
        # final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:          # while loading, before any output
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, MemoryError, RuntimeError) as e:
        print(f"tridecode: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

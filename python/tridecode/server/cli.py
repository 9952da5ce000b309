"""`tridecode serve [MODEL] [options]`: arguments and entry point. Imports only argparse-level modules;
the server's dependencies are imported when it starts."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ..params import DEFAULTS
from .schema import TRIDECODE_FIELDS

SERVE_EXTRA = "tridecode serve needs the serve extra: pip install 'tridecode[serve]'"

#: On Ctrl-C the generations in flight are stopped at once; the responses still open after this many seconds
#: (a client that does not read, say) are then dropped.
SHUTDOWN_GRACE_SECONDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Request defaults are tridecode's, not OpenAI's: max_tokens "
        f"{DEFAULTS['max_new_tokens']}, temperature {DEFAULTS['temperature']} (greedy), mode {DEFAULTS['mode']}. "
        "tridecode's own fields go in the request body next to OpenAI's (extra_body with the openai client): "
        f"{', '.join(sorted(TRIDECODE_FIELDS))}. Unknown fields are refused (400).")
    from ..cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the model's name in the API (default: the directory's basename, or the model id "
                             "as given)")
    parser.add_argument("--queue-size", type=int, default=16,
                        help="requests that may wait while one runs; more are answered 503 (default: 16)")


def served_name(model: str) -> str:
    """The default --served-model-name: a directory's basename, or a model id as given."""
    if os.path.isdir(model):
        return os.path.basename(os.path.normpath(os.path.abspath(model)))
    return model


def main(args: argparse.Namespace) -> int:
    if args.model is not None and args.model_option is not None and args.model != args.model_option:
        print(f"tridecode: error: two models given ({args.model!r} and -m {args.model_option!r})", file=sys.stderr)
        return 2
    if args.queue_size < 1:
        print("tridecode: error: --queue-size must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("tridecode: error: --port must be in [0, 65535]", file=sys.stderr)
        return 2
    if any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn")):
        print(f"tridecode: error: {SERVE_EXTRA}", file=sys.stderr)
        return 1

    import tridecode
    from ..cli import load_model
    from .app import create_app
    from .run import serve

    try:
        model = load_model(None, args)
        path = args.model if args.model is not None else args.model_option
        name = args.served_model_name or (served_name(path) if path is not None
                                          else served_name(tridecode.default_model_path()))
        app = create_app(model, name, queue_size=args.queue_size)
    except (ValueError, TypeError, OSError, MemoryError) as e:
        print(f"tridecode: error: {e}", file=sys.stderr)
        return 1
    return serve(app, name, args.host, args.port, SHUTDOWN_GRACE_SECONDS)

"""`tridecode serve`: an OpenAI-compatible HTTP server (Starlette + uvicorn, the `serve` extra).

Only the serve command imports this package; `import tridecode` does not. `create_app` is loaded on first
use, so that `tridecode.server.cli` (argument parsing) works without the extra installed.
"""

from __future__ import annotations

from typing import Any

from .cli import add_arguments, main

__all__ = ["create_app", "add_arguments", "main"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

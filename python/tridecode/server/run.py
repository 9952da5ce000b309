"""Runs the application with uvicorn until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import asyncio
import sys
from typing import List, Optional

import uvicorn
from starlette.applications import Starlette

from .scheduler import Scheduler


class _Server(uvicorn.Server):
    """Announces the address once the socket listens (with the real port when port 0 was asked for), and
    stops the generations first when it shuts down."""

    def __init__(self, config: uvicorn.Config, model_name: str, scheduler: Scheduler):
        super().__init__(config)
        self.model_name = model_name
        self.scheduler = scheduler

    async def startup(self, sockets: Optional[List] = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = self.config.host
            host = f"[{host}]" if ":" in host else host
            print(f"tridecode: serving {self.model_name} on http://{host}:{port}", file=sys.stderr, flush=True)

    async def shutdown(self, sockets: Optional[List] = None) -> None:
        # End the generations in flight first (their clients get a 503 or an error event), so that the
        # connections close at once instead of holding the shutdown until they finish.
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.close)
        await super().shutdown(sockets)


def serve(app: Starlette, model_name: str, host: str, port: int, grace_seconds: float) -> int:
    """Serves until interrupted; returns the exit status (0 after Ctrl-C)."""
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=grace_seconds)
    try:
        _Server(config, model_name, app.state.scheduler).run()
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGINT, then raises the signal again for the caller: done.
        pass
    except SystemExit as e:   # uvicorn exits this way when it cannot start (e.g. the port is taken)
        return e.code if isinstance(e.code, int) else 1
    return 0

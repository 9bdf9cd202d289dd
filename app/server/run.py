"""Serving the API on a Unix socket (``jit server``), beside the engine, until told to stop."""
from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from app.domain.errors import ConfigError
from app.server.api import make_app

if TYPE_CHECKING:
    from app.bootstrap import Services


def _prepare(socket_path: Path) -> None:
    """The socket's directory 0755 (created when missing); a stale socket file from a crash removed."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        mode = socket_path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(str(socket_path), ["server.socket: exists and is not a socket; refusing to replace it"])
    socket_path.unlink()


def serve(services: Services, socket_path: Path, stop: threading.Event, *,
          ready: Callable[[], None] | None = None) -> None:
    """Listen on ``socket_path`` (0666: who may do what is decided per request, by peer uid) until
    ``stop`` is set. The caller runs the engine."""
    _prepare(socket_path)

    async def main() -> None:
        runner = web.AppRunner(make_app(services), handle_signals=False)
        await runner.setup()
        try:
            await web.UnixSite(runner, str(socket_path)).start()
            os.chmod(socket_path, 0o666)
            if ready is not None:
                ready()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        finally:
            await runner.cleanup()
            socket_path.unlink(missing_ok=True)

    asyncio.run(main())

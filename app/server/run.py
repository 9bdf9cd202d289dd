"""Serving the API on a Unix socket (``jit server``), and on TCP with TLS when ``[server] listen`` is
set, beside the engine, until told to stop."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, TextIO

from aiohttp import web

from app.domain.errors import ConfigError
from app.server.api import make_app
from app.server.auth import REMOTE

if TYPE_CHECKING:
    from app.bootstrap import Services

log = logging.getLogger("jit.server")


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
          ready: Callable[[], None] | None = None, impersonation: bool = False) -> None:
    """Listen on ``socket_path`` (0666: who may do what is decided per request, by peer uid) until
    ``stop`` is set (``impersonation``: dev mode only); with ``[server] listen``, also on that TCP address with TLS, callers proven by a
    client certificate or a bearer token (app/server/remote.py). The caller runs the engine."""
    tcp = None
    if services.config.settings.server.listen:
        from app.server.remote import tcp_listener  # PyJWT and cryptography only when TCP is served
        tcp = tcp_listener(services)  # a bad certificate, key, CA or JWKS stops us before anything listens
    _prepare(socket_path)

    async def main() -> None:
        app = make_app(services, impersonation=impersonation)
        if tcp is not None:
            app[REMOTE] = tcp.remote
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            await web.UnixSite(runner, str(socket_path)).start()
            os.chmod(socket_path, 0o666)
            if tcp is not None:
                await web.TCPSite(runner, tcp.host, tcp.port, ssl_context=tcp.context).start()
                log.info("serving TLS on %s", services.config.settings.server.listen)
            if ready is not None:
                ready()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        finally:
            await runner.cleanup()
            socket_path.unlink(missing_ok=True)

    asyncio.run(main())


def run_server(config_path: Path, *, socket: str | None, dev: bool, environ: Mapping[str, str],
               out: TextIO, err: TextIO) -> int:
    """``jit server``: the checks, the services, the engine, the API, until SIGTERM or SIGINT."""
    from app.bootstrap import build
    from app.config import load_config
    from app.server.preflight import check_deployment
    config = load_config(config_path)
    check_deployment(config, dev=dev)
    socket_path = Path(socket) if socket else config.path(config.settings.server.socket)
    if dev:
        err.write(f"DEV MODE on {config.base}: any client of {socket_path} may act as anyone by setting JIT_USER;\n"
                  "every event it causes is recorded as impersonated. Never run this in production.\n")
        err.flush()
    sv = build(config, environ=environ)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sv.engine.start()
    try:
        serve(sv, socket_path, stop, impersonation=dev,
              ready=lambda: (out.write(f"serving on unix:{socket_path}\n"), out.flush()))
    finally:
        sv.close()
    return 0

"""A ``jit server --dev`` for tests, in this process: the real API on a real Unix socket (the
sandbox's ``[server] socket``), with the engine not started, so each test drives time itself
(``jit engine --once``, ``run_once()``). CLI tests then run ``jit`` as a client of it exactly as
a person would, naming who they play with ``JIT_USER`` as the dev server allows."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from app.bootstrap import Services, build
from app.config import load_config
from app.server.run import serve


@contextlib.contextmanager
def dev_server(config: Path, *, impersonation: bool = True, services: Services | None = None,
               environ: dict | None = None) -> Iterator[Services]:
    sv = services or build(load_config(config), environ=environ)
    sock = sv.config.path(sv.config.settings.server.socket)
    stop, ready = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve(sv, sock, stop, ready=ready.set, impersonation=impersonation)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)
            ready.set()
    thread = threading.Thread(target=run, name="jit-test-server", daemon=True)
    thread.start()
    if not ready.wait(30) or failed:
        raise RuntimeError(f"the test server did not start: {failed[0] if failed else 'timeout'}")
    try:
        yield sv
    finally:
        stop.set()
        thread.join(30)
        if services is None:
            sv.close()

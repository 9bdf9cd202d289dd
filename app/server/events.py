"""What wakes ``/v1/events`` streams: the audit head, watched. Every server on one PostgreSQL
appends to the same chain, so watching the head's sequence number brings events committed by
another server as surely as this one's. One watcher per server (not one per stream), and only
while someone listens: it reads one row every ``interval``."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Callable

from aiohttp import web

log = logging.getLogger("jit.server")


class Hub:
    def __init__(self, newest: Callable[[], int], pool: Executor, interval: float = 0.05) -> None:
        self._newest, self._pool, self.interval = newest, pool, interval
        self.seq = -1
        self.listeners = 0
        self.closing = False  # the server is shutting down: streams end rather than hold it up
        self._moved = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._moved = asyncio.Event()  # bound to the running loop
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def close(self) -> None:
        """The server stops: wake every stream so it ends (aiohttp waits for open handlers)."""
        self.closing = True
        self._moved.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            await asyncio.sleep(self.interval * (1 + min(failures, 40)))
            if not self.listeners:
                continue
            try:
                seq = await loop.run_in_executor(self._pool, self._newest)
                failures = 0
            except RuntimeError:  # the pool is shut down: the server is stopping
                return
            except Exception as exc:  # the database is down: streams wait, the watcher backs off
                failures += 1
                if failures == 1:
                    log.warning("events: cannot read the audit head: %s", type(exc).__name__)
                continue
            if seq != self.seq and not self.closing:
                self.seq = seq
                moved, self._moved = self._moved, asyncio.Event()
                moved.set()

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Until the head is past ``seq`` (True) or ``timeout`` seconds pass (False)."""
        moved = self._moved
        if self.seq > seq:
            return True
        try:
            await asyncio.wait_for(moved.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self.seq > seq


HUB = web.AppKey("events_hub", Hub)

"""A throw-away sandbox wired through the real bootstrap, the console on top, and ways to wait for it."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from textual.css.query import NoMatches

from app.bootstrap import Services, build
from app.clock import FrozenClock
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.queries.console import ConsoleData
from app.tui.console import JitConsole
from integrations.fake import FakeBackend

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # a Tuesday
PROD, DEV = "web-prod-01", "web-dev-01"
ADMIN = "service-admin"


@dataclass
class World:
    services: Services
    clock: FrozenClock
    root: Path

    @property
    def lifecycle(self):
        return self.services.lifecycle

    def data(self, person: str) -> ConsoleData:
        return ConsoleData(self.services, person)

    def request(self, person: str, target: str, duration: timedelta, reason: str, ticket: str | None = None,
                role: str = ADMIN) -> int:
        return self.lifecycle.submit(person, target, role, duration, reason, ticket=ticket).request.id

    def at(self, minutes_before_t0: float) -> None:
        self.clock.at = T0 - timedelta(minutes=minutes_before_t0)


def make_world(root: Path, *, fake_backend: bool = False, start: datetime = T0) -> World:
    """The sandbox the CLI's ``jit init --sandbox`` writes (ServiceNow off), on SQLite, with a frozen clock.

    The real sudo backend (``visudo``-checked drop-ins) unless ``fake_backend``: the snapshots use the
    fake so that nothing on screen depends on the temporary directory's name."""
    config = load_config(write_sandbox(root / "sb", servicenow_url=None))
    clock = FrozenClock(start)
    backends = {"sudo": FakeBackend("sudo")} if fake_backend else None
    return World(build(config, clock=clock, backends=backends), clock, root / "sb")


def story(world: World) -> None:
    """A morning's worth of requests, always the same: the snapshot tests' data (times relative to T0)."""
    lc = world.lifecycle
    world.at(60)
    world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")  # REQ-1
    world.at(50)
    lc.approve("bob", 1, "ok for the renewal")
    world.at(45)
    world.request("dave", PROD, timedelta(hours=1), "rotate the nginx access logs", "CHG0000002")  # REQ-2
    world.at(30)
    world.request("dave", PROD, timedelta(hours=2), "patch openssl on the web tier", "CHG0000003")  # REQ-3
    lc.approve("bob", 3, "")
    lc.approve("carol", 3, "patch window agreed")
    world.at(25)
    world.request("dave", DEV, timedelta(hours=3), "longer dev work on the nginx config")  # REQ-4
    world.at(18)
    world.request("alice", PROD, timedelta(minutes=30), "check the renewed certificate chain", "CHG0000005")  # REQ-5
    lc.approve("bob", 5, "")
    lc.approve("carol", 5, "")
    world.at(10)
    lc.bypass("dave", PROD, ADMIN, timedelta(hours=1), "INC0000042", "nginx down, customers affected")  # REQ-6
    world.at(6)
    world.request("alice", DEV, timedelta(minutes=10), "check the nginx config on dev")  # REQ-7
    world.at(5)
    world.request("erin", PROD, timedelta(hours=4), "audit the nginx logs for the incident", "CHG0000008",
                  role="log-auditor")  # REQ-8
    world.at(3)
    try:
        world.request("alice", PROD, timedelta(hours=9), "a whole day on the web tier", "CHG0000009")
    except Exception:  # noqa: BLE001 - refused (over the 8h maximum) and audited: that is the point
        pass
    world.at(2)
    lc.deny("bob", 2, "use the change window tomorrow")
    world.at(4 / 60)
    world.lifecycle.owner = "engine-1:4242"  # the heartbeat's name is host:pid; fixed for the snapshots
    world.services.engine.heartbeat()
    world.at(0)
    lc.escalate_and_lapse()


class RecordingConsole(JitConsole):
    """The console, remembering every notification it showed (title, message, severity)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str, str]] = []

    def notify(self, message: str, *, title: str = "", severity: str = "information", **kwargs) -> None:
        self.notes.append((title, str(message), severity))
        super().notify(message, title=title, severity=severity, **kwargs)


async def settle(pilot, rounds: int = 2) -> None:
    """Let the workers finish and the screen catch up with what they posted.

    A worker that raised has finished too (``workers.wait_for_complete()`` would raise its error here):
    what the operator is shown of it is the test's to assert."""
    for _ in range(rounds):
        await asyncio.gather(*(worker.wait() for worker in pilot.app.workers), return_exceptions=True)
        await pilot.pause()


async def until(pilot, condition: Callable[[], object], timeout: float = 2.0, what: str = "condition") -> float:
    """Wait (polling, no fixed sleep) until ``condition()`` holds; return how long it took."""
    start = time.monotonic()

    def holds() -> bool:
        try:
            return bool(condition())
        except NoMatches:  # the screen it looks at is not composed yet
            return False

    while not holds():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await pilot.pause(0.05)
    return time.monotonic() - start

"""ServiceNow faults, over real HTTP against the simulator: 429 storms, 500s, timeouts, dropped
connections, answers lost after the write, and the instance down for a long stretch (stopped, then
started again on the same port with the same data).

Promises checked: no ticket lost (every ticket-driven request created exactly once), no work note
written twice (the journal is counted), and the sync catches up and says how far behind it was.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlmodel import select

from app.cli.main import _sync_status
from app.server.routes import Call, sync_status
from app.clock import FrozenClock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.jobs.engine import Engine
from app.jobs.outbox import Deliverer
from app.jobs.sync import TicketSync
from app.lifecycle import Lifecycle, OutboxSettings
from app.lifecycle.ticket_facts import TicketGateway
from app.store import AuditEvent, OutboxRow
from integrations.fake import FakeBackend
from integrations.servicenow.client import CircuitBreaker, Credentials, ServiceNowClient
from integrations.servicenow.simulator import Simulator, SimulatorOptions
from integrations.servicenow.tickets import Tickets, sn_time

H = timedelta(hours=1)
M = timedelta(minutes=1)


class World:
    """The simulator (with a data file) and a lifecycle, sync, outbox and engine wired to it."""

    def __init__(self, store, policy, data: Path) -> None:
        self.clock = FrozenClock(datetime.now(timezone.utc).replace(microsecond=0))
        self.data = data
        self.sim = self._simulator(port=0)
        self.port = int(self.sim.base_url.rsplit(":", 1)[1])
        # Short waits so the test is quick; max_backoff also caps the simulator's Retry-After (1 s minimum).
        self.client = ServiceNowClient(self.sim.base_url, Credentials("admin", "admin"), retries=3, backoff=0.01,
                                       max_backoff=0.3, timeout=0.5,
                                       breaker=CircuitBreaker(3, 60, clock=lambda: self.clock().timestamp()))
        self.tickets = Tickets(self.client)
        gateway = TicketGateway(self.tickets)
        directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
        self.backend = FakeBackend("sudo")
        self.lc = Lifecycle(store, policy, directory, {"sudo": self.backend}, self.clock,
                            EngineSettings(retry_backoff=timedelta(0)), tickets=gateway,
                            outbox=OutboxSettings(servicenow=True))
        self.sync = TicketSync(store, self.lc, self.tickets, gateway, self.clock, timedelta(days=7))
        self.deliverer = Deliverer(store, self.clock, tickets=self.tickets, webhook=None)
        self.engine = Engine(self.lc, EngineSettings(), self.clock, sync=self.sync, deliverer=self.deliverer)
        self.store = store

    def _simulator(self, port: int) -> Simulator:
        return Simulator(SimulatorOptions(seed="demo", clock=self.clock, data_file=self.data), port=port).start()

    def restart_simulator(self) -> None:
        """The instance comes back on the same port with the data it had."""
        self.sim = self._simulator(port=self.port)

    def add_change(self, number: str, person: str) -> None:
        """An approved change in its window carrying the JIT fields, updated now."""
        seeded = next(r for r in self.sim.records("change_request") if r["number"] == "CHG0000001")
        user = next(u for u in self.sim.records("sys_user") if u["user_name"] == person)
        now = self.clock()
        self.sim.insert("change_request", {
            "number": number, "state": "-1", "approval": "approved", "short_description": f"work by {person}",
            "start_date": sn_time(now - H), "end_date": sn_time(now + 4 * H), "assigned_to": user["sys_id"],
            "assignment_group": seeded["assignment_group"], "cmdb_ci": seeded["cmdb_ci"],
            "u_jit_target": "web-prod-01", "u_jit_role": "service-admin"})
        self.sim.approve(number, "bob", "carol")  # the tier's dual approval, in ServiceNow

    def notes(self, number: str) -> list[str]:
        sys_id = next(r for r in self.sim.records("change_request") if r["number"] == number)["sys_id"]
        return [j["value"] for j in self.sim.journal(sys_id)]

    def pass_(self, step: timedelta = 10 * M):
        """One engine pass (sync, then outbox delivery), then time moves on past any outbox backoff."""
        report = self.engine.run_once()
        self.clock.advance(step)
        return report

    def requests_by_ticket(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for view in self.lc.list():
            out.setdefault(view.ticket, []).append(view.id)
        return out

    def close(self) -> None:
        self.client.close()
        self.sim.stop()


@pytest.fixture
def world(store, policy, tmp_path):
    w = World(store, policy, tmp_path / "servicenow.json")
    yield w
    w.close()


CHANGES = {"CHG0000001": "alice", "CHG0000011": "dave", "CHG0000012": "alice", "CHG0000013": "dave",
           "CHG0000014": "alice", "CHG0000015": "dave"}


def assert_each_change_once_and_noted_once(world: World, changes: dict[str, str]) -> None:
    by_ticket = world.requests_by_ticket()
    assert {t: len(ids) for t, ids in by_ticket.items()} == {t: 1 for t in changes}  # none lost, none twice
    for number, person in changes.items():
        [rid] = by_ticket[number]
        view = world.lc.get(rid)
        assert (view.state, view.requester) == ("active", person)
        notes = world.notes(number)
        assert len(notes) == 1, notes  # exactly one journal entry: no duplicate despite lost answers
        assert notes[0].startswith(f"JIT REQ-{rid}: Access granted to {person} on web-prod-01")
    assert len(world.backend.artifacts) == len(changes)
    with world.store.transaction() as s:
        assert {o.state for o in s.exec(select(OutboxRow)).all()} == {"sent"}


def test_fault_storms_lose_no_ticket_and_write_no_note_twice(world):
    storms = [  # (name, start it, still going?)
        ("answers lost after the write", lambda: world.sim.faults.update({"fail_after_write_next": 2}),
         lambda: world.sim.faults.fail_after_write_next),
        ("429 storm", lambda: setattr(world.sim.options, "rate_limit", 2), lambda: False),
        ("500s", lambda: world.sim.faults.update({"fail_next": 5}), lambda: world.sim.faults.fail_next),
        ("timeouts", lambda: world.sim.faults.update({"timeout_next": 3, "timeout_s": 1}),
         lambda: world.sim.faults.timeout_next),
        ("dropped connections", lambda: world.sim.faults.update({"drop_next": 5}), lambda: world.sim.faults.drop_next),
    ]
    world.sim.options.rate_window = 0.3
    hurt = []
    for (name, start, going), (number, person) in zip(storms, list(CHANGES.items())[1:]):
        world.add_change(number, person)  # each storm meets new work: a change to read, a note to write
        start()
        for _ in range(8):  # each pass runs into the fault until it has spent itself
            report = world.pass_()
            hurt.append(bool(report.sync.error or report.delivery.retried))
            if not going():
                break
        assert not going(), f"{name} never reached ServiceNow"
        world.sim.options.rate_limit = None
    for _ in range(6):  # calm again: the engine finishes whatever the storms interrupted
        report = world.pass_()
        if report.sync.error is None and report.delivery.sent == report.delivery.retried == 0:
            break
    stats = world.sim.stats
    assert stats["429"] >= 1 and stats["500"] >= 5 and stats["dropped"] >= 7  # the faults really happened
    assert any(hurt)  # and some passes really failed or had to retry
    assert_each_change_once_and_noted_once(world, CHANGES)


def test_long_outage_then_restart_on_the_same_port_catches_up_and_says_how_far_behind(world):
    first = world.pass_(step=timedelta(0))  # CHG0000001 becomes a grant; its note is sent at once
    assert (first.sync.created, first.delivery.sent) == (1, 1)
    last_ok = world.clock()

    world.sim.faults.update({"down": True})  # unreachable: every connection dropped
    world.clock.advance(20 * M)
    world.add_change("CHG0000011", "dave")  # people keep changing tickets during the outage
    failed = [world.pass_(step=15 * M)]
    world.add_change("CHG0000012", "alice")
    failed.append(world.pass_(step=15 * M))
    world.sim.stop()  # then the instance is gone altogether
    failed.append(world.pass_(step=30 * M))
    assert all(r.sync.error and r.sync.created == 0 for r in failed), [str(r.sync) for r in failed]
    assert world.sync.status().last_ok_at == last_ok

    world.restart_simulator()
    world.add_change("CHG0000013", "dave")  # changed right after it came back
    world.clock.advance(40 * M)
    now = world.clock()
    report = world.pass_(step=timedelta(0))
    assert report.sync.error is None and report.sync.created == 3
    assert report.sync.down_s == (now - last_ok).total_seconds() == 2 * 3600
    assert report.sync.behind_s == (now - (last_ok + 20 * M)).total_seconds()  # CHG0000011, the oldest missed
    assert "caught up after 7200s without ServiceNow" in str(report.sync)

    with world.store.transaction() as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.action == "sync.caught_up")).all()
    assert json.loads(event.details) == {"down_s": 7200.0, "behind_s": 6000.0, "caught_up": 3,
                                         "last_ok_at": last_ok.isoformat()}
    # what `jit sync status` prints of it: the server's answer (its route) through the CLI's printing
    answer = json.loads(json.dumps(sync_status(Call(SimpleNamespace(sync=world.sync, tickets=world.tickets),
                                                    None, None, None))))
    out = io.StringIO()
    _sync_status(SimpleNamespace(json=False), answer, out)
    assert "caught up    " in out.getvalue() and "after 7200s without ServiceNow: read 3 change(s), the oldest " \
        "6000s late" in out.getvalue()
    out = io.StringIO()
    _sync_status(SimpleNamespace(json=True), answer, out)
    assert json.loads(out.getvalue())["last_catch_up"]["caught_up"] == 3

    steady = world.pass_(step=timedelta(0))  # a healthy run re-reads the last second: it is not "behind"
    assert steady.sync.created == 0 and steady.sync.behind_s == 0 and steady.sync.down_s is None
    assert_each_change_once_and_noted_once(world, dict(list(CHANGES.items())[:4]))

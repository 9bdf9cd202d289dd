"""Claims that outlive their lease: a live engine keeps its claim by renewing it, and an engine
that cannot renew (its database gone) lets go of it. Two lifecycles on one PostgreSQL database,
each an engine on its own host (owners on other host names, so only the lease can free a
claim), the real clock, a lease of one second and backend calls three times as long."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.clock import system_clock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.lifecycle import Lifecycle
from app.store import AuditEvent, GrantRow, Store
from integrations.fake import FakeBackend
from tests.reliability.fault_rigs import TcpRelay

pytestmark = pytest.mark.postgres

LEASE = timedelta(seconds=1)
SLOW = 3 * LEASE.total_seconds()  # every slow backend call outlasts the lease three times


class SlowBackend(FakeBackend):
    """A fake backend whose calls run ``during(method)`` first (a sleep, a database cut, ...)."""

    def __init__(self, during=None) -> None:
        super().__init__("sudo")
        self.during = during

    def apply(self, grant):
        if self.during:
            self.during("apply")
        return super().apply(grant)

    def revoke(self, grant):
        if self.during:
            self.during("revoke")
        return super().revoke(grant)



@pytest.fixture
def schema(pg_url: str) -> str:
    store = Store(pg_url)
    store.migrate()
    store.dispose()
    return pg_url


def engine(url: str, owner: str, backend: FakeBackend, policy) -> Lifecycle:
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    settings = EngineSettings(lease=LEASE, retry_backoff=timedelta(0))
    return Lifecycle(Store(url), policy, directory, {"sudo": backend}, system_clock, settings, owner=owner)


def actions(lc: Lifecycle, rid: int) -> Counter:
    with lc.store.transaction() as s:
        return Counter(e.action for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == rid)))


def in_thread(call) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    t.start()
    return t, out


def keep_recovering(other: Lifecycle, worker: threading.Thread) -> int:
    """The other engine's sweep, as often as it can, for as long as the first engine works."""
    taken = 0
    while worker.is_alive():
        taken += other.recover()
        other.expire_due()
        time.sleep(0.02)
    return taken


@pytest.mark.parametrize("step", ["apply", "expiry"])
def test_a_live_engine_slower_than_its_lease_is_not_taken_over(schema, policy, step):
    slow = SlowBackend(lambda method: time.sleep(SLOW) if method == ("apply" if step == "apply" else "revoke")
                       else None)
    a = engine(schema, "host-a:1", slow, policy)
    b_backend = FakeBackend("sudo")
    b = engine(schema, "host-b:2", b_backend, policy)
    try:
        submit = lambda: a.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),  # noqa: E731
                                  "check the nginx config")
        if step == "apply":
            worker, out = in_thread(submit)
        else:
            rid = submit().request.id
            with a.store.transaction() as s:  # due now
                s.execute(sa.update(GrantRow).values(expires_at=system_clock() - timedelta(seconds=1)))
            worker, out = in_thread(a.expire_due)
        t0 = time.monotonic()
        taken = keep_recovering(b, worker)
        worker.join()
        assert time.monotonic() - t0 >= SLOW  # the call did outlast the lease
        rid = out[0].request.id if step == "apply" else rid
        assert taken == 0 and b_backend.calls == []  # the other engine never touched it
        assert slow.calls.count(("apply", 1)) == 1
        done = actions(a, rid)
        assert done["grant.recovered"] == 0 and done["grant.active"] == 1, done
        if step == "apply":
            assert a.get(rid).state == "active" and out[0].notes[0].startswith("active:")
        else:
            assert out == [1] and done["request.expired"] == 1 and a.get(rid).state == "expired"
            assert slow.calls.count(("revoke", 1)) == 1 and slow.artifacts == {}
        with a.store.transaction() as s:
            g = s.get(GrantRow, 1)
        assert g.owner is None and g.lease_until is None
    finally:
        a.store.dispose()
        b.store.dispose()


@pytest.mark.parametrize("order", ["taken-over-while-cut", "back-after-the-lease"])
def test_an_engine_that_loses_its_database_writes_no_outcome_after_its_lease(schema, policy, order):
    """Engine A reaches PostgreSQL through a relay that is cut while A's backend call runs, so A
    cannot renew. Either B takes the grant over while A is cut off, or A's database is back
    (after A's lease ended) before B looks: in both, A writes nothing more, and B finishes it once."""
    parts = urlsplit(schema)
    relay = TcpRelay((parts.hostname, parts.port or 5432))
    a_url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    cut, resume = threading.Event(), threading.Event()

    def cut_off(method: str) -> None:
        relay.cut()
        cut.set()
        assert resume.wait(30)
        if order == "back-after-the-lease":
            relay.restore()

    a_backend = SlowBackend(cut_off)
    a = engine(a_url, "host-a:1", a_backend, policy)
    b_backend = FakeBackend("sudo")
    b = engine(schema, "host-b:2", b_backend, policy)
    try:
        worker, out = in_thread(lambda: a.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                                                 "check the nginx config"))
        assert cut.wait(30)
        with b.store.transaction() as s:
            lease_until = s.get(GrantRow, 1).lease_until
        while system_clock() < lease_until - timedelta(milliseconds=100):  # A's heartbeat fails meanwhile
            assert b.recover() == 0  # A's lease still runs: nobody takes it
            time.sleep(0.05)
        time.sleep((lease_until + LEASE / 2 - system_clock()).total_seconds())  # and then it has ended
        if order == "taken-over-while-cut":
            assert b.recover() == 1
            relay.restore()
            resume.set()
            worker.join(30)
        else:
            resume.set()
            worker.join(30)  # A returns with the database back, after its lease
            with b.store.transaction() as s:
                g = s.get(GrantRow, 1)
            assert (g.status, g.owner) == ("applying", "host-a:1")  # A wrote no outcome
            assert b.recover() == 1
        assert not worker.is_alive()
        rid = out[0].request.id
        assert "taken over" in out[0].notes[0] or "another engine" in out[0].notes[0], out[0].notes
        done = actions(b, rid)
        assert (done["grant.applying"], done["grant.recovered"], done["grant.active"]) == (1, 1, 1), done
        assert b.get(rid).state == "active"
        assert a_backend.calls == [("apply", 1)] and b_backend.calls == [("apply", 1)]
        with b.store.transaction() as s:
            g = s.get(GrantRow, 1)
            recovered = s.exec(select(AuditEvent).where(AuditEvent.action == "grant.recovered")).one()
        assert g.status == "active" and g.owner is None
        assert json.loads(recovered.details)["previous_owner"] == "host-a:1"
    finally:
        resume.set()
        relay.cut()
        a.store.dispose()
        b.store.dispose()

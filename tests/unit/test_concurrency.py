"""Concurrent actions on one request: exactly one transition, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import select

from app.domain.errors import Refused
from app.store import AuditEvent, audit
from app.store.leases import Leases

ROUNDS = 5


def race(calls):
    """Run every call at once (a barrier releases them together); return (successes, refusals)."""
    barrier = threading.Barrier(len(calls))
    ok, refused, errors = [], [], []

    def run(name, call):
        barrier.wait()
        try:
            call()
            ok.append(name)
        except Refused as exc:
            refused.append((name, exc.exit_code))
        except Exception as exc:  # anything else is a bug
            errors.append((name, repr(exc)))

    threads = [threading.Thread(target=run, args=item) for item in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return ok, refused


def terminal_events(store, rid):
    with store.transaction() as s:
        return [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == rid)).all()
                if e.action in ("request.approved", "request.denied", "request.cancelled")]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_approve_deny_cancel_race_gives_one_transition(lifecycle, store, round_):
    rid = lifecycle.submit("alice", "web-prod-01", "service-admin", timedelta(hours=2),
                           "restart nginx after renewal", "CHG0000001").request.id
    lifecycle.approve("bob", rid)  # one of two: carol's approval would complete it
    ok, refused = race([
        ("approve", lambda: lifecycle.approve("carol", rid)),
        ("deny", lambda: lifecycle.deny("erin", rid, "outside the change window")),
        ("cancel", lambda: lifecycle.cancel("alice", rid)),
    ])
    assert len(ok) == 1, (ok, refused)
    assert [code for _, code in refused] == [4, 4], refused  # each loser: someone else changed it first
    expected = {"approve": "active", "deny": "denied", "cancel": "cancelled"}[ok[0]]
    assert lifecycle.get(rid).state == expected
    assert len(terminal_events(store, rid)) == 1


def test_the_approval_and_its_activation_leave_no_gap_for_a_cancel(lifecycle, store, backend):
    """The activation an approval causes is claimed in the approval's own transaction: while its
    backend call runs, a cancel, a deny or a revoke finds the request taken and does nothing."""
    rid = lifecycle.submit("alice", "web-prod-01", "service-admin", timedelta(hours=2),
                           "restart nginx after renewal", "CHG0000001").request.id
    lifecycle.approve("bob", rid)
    real_apply, losers = backend.apply, []

    def apply_meanwhile(spec):
        for name, call in [("cancel", lambda: lifecycle.cancel("alice", rid)),
                           ("deny", lambda: lifecycle.deny("erin", rid, "too late")),
                           ("revoke", lambda: lifecycle.revoke("erin", rid, "too late")),
                           ("approve", lambda: lifecycle.approve("carol", rid))]:
            with pytest.raises(Refused) as caught:
                call()
            losers.append((name, caught.value.exit_code))
        return real_apply(spec)

    backend.apply = apply_meanwhile
    lifecycle.approve("carol", rid)
    assert losers == [("cancel", 4), ("deny", 4), ("revoke", 4), ("approve", 4)]
    assert lifecycle.get(rid).state == "active"
    assert terminal_events(store, rid) == ["request.approved"]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_revoke_release_expire_race_revokes_once(lifecycle, store, backend, clock, round_):
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                           "check the nginx config").request.id
    grant_id = lifecycle.get(rid).grant.id
    clock.advance(timedelta(minutes=11))
    ok, refused = race([
        ("revoke", lambda: lifecycle.revoke("erin", rid, "suspicious activity")),
        ("release", lambda: lifecycle.release("alice", rid)),
        ("expire", lambda: lifecycle.expire_due() or (_ for _ in ()).throw(Refused("expire", "nothing due"))),
    ])
    assert len(ok) == 1, (ok, refused)
    view = lifecycle.get(rid)
    assert view.state == {"revoke": "revoked", "release": "released", "expire": "expired"}[ok[0]]
    assert backend.calls.count(("revoke", grant_id)) == 1
    assert backend.artifacts == {}


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_expiry_of_a_row_locked_by_someone_else_is_not_left_for_later(lifecycle, store, backend, clock, db_url):
    """SKIP LOCKED lets engines split a burst; a row locked by a transaction that is NOT claiming it
    (here a plain SELECT ... FOR UPDATE held for 0.5 s) must still be revoked in the same pass."""
    import sqlalchemy as sa

    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                           "check the nginx config").request.id
    grant_id = lifecycle.get(rid).grant.id
    clock.advance(timedelta(minutes=11))
    other = sa.create_engine(db_url)
    conn = other.connect()
    tx = conn.begin()
    conn.execute(sa.text("SELECT id FROM grant_record WHERE id = :id FOR UPDATE"), {"id": grant_id})
    release = threading.Timer(0.5, tx.commit)
    release.start()
    try:
        assert lifecycle.expire_due() == 1
    finally:
        release.join()
        conn.close()
        other.dispose()
    assert lifecycle.get(rid).state == "expired" and backend.calls.count(("revoke", grant_id)) == 1


def test_an_apply_outliving_its_lease_is_recorded_once(lifecycle, store, backend, clock):
    """The engine applying a grant is so slow that its lease runs out; a second engine takes the
    grant over and applies it. When the first finally returns, it must not record the grant again."""
    from copy import copy

    other = copy(lifecycle)
    other.owner = "other-host:4242"
    other.leases = Leases(store, other.owner, lifecycle.settings.lease, clock)
    real_apply = backend.apply

    def slow_apply(spec):
        backend.apply = real_apply  # the second engine's call goes straight through
        clock.advance(lifecycle.settings.lease + timedelta(seconds=1))
        assert other.recover() == 1  # the lease is over: the other engine takes it and applies it
        return real_apply(spec)

    backend.apply = slow_apply
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                           "check the nginx config").request.id
    with store.transaction() as s:
        actions = [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == rid)).all()]
    assert lifecycle.get(rid).state == "active"
    assert actions.count("grant.recovered") == 1 and actions.count("grant.active") == 1, actions


def other_engine(lifecycle, store, clock, owner="other-host:4242"):
    """A second engine on the same database: its own owner, claims and backend."""
    from copy import copy

    from integrations.fake import FakeBackend
    other = copy(lifecycle)
    other.owner = owner
    other.leases = Leases(store, owner, lifecycle.settings.lease, clock)
    other.backends = {"sudo": FakeBackend("sudo")}
    return other


@pytest.mark.parametrize("round_", range(3))
def test_two_engines_activating_one_burst_apply_each_grant_once(lifecycle, store, backend, clock, round_):
    """24 requests start at one instant; two engines run activate_due at once, in batches of 4: the
    claims they report add up to 24, and every grant is applied by exactly one of them, once."""
    import time

    for i in range(10):
        lifecycle.directory._people[f"user{i}"] = frozenset({"engineers"})
    start = clock() + timedelta(hours=1)
    rids = [lifecycle.submit(f"user{i % 10}", "web-dev-01", "service-admin", timedelta(minutes=10),
                             "a change window opening", start=start).request.id for i in range(24)]
    clock.advance(timedelta(hours=1))
    other = other_engine(lifecycle, store, clock)
    backends = [backend, other.backends["sudo"]]
    for b in backends:  # a backend call takes a moment, so the two engines' batches overlap
        b.apply = (lambda real: lambda spec: time.sleep(0.002) or real(spec))(b.apply)
    claimed = []
    ok, refused = race([("engine-a", lambda: claimed.append(lifecycle.activate_due(limit=4))),
                        ("engine-b", lambda: claimed.append(other.activate_due(limit=4)))])
    assert len(ok) == 2 and sum(claimed) == 24, (ok, refused, claimed)
    applied = Counter(gid for b in backends for method, gid in b.calls if method == "apply")
    assert sorted(applied) == sorted(lifecycle.get(r).grant.id for r in rids) and set(applied.values()) == {1}
    with store.transaction() as s:
        events = Counter((e.request_id, e.action) for e in s.exec(select(AuditEvent)).all())
        assert audit.verify(s).ok
    for rid in rids:
        assert lifecycle.get(rid).state == "active"
        assert (events[(rid, "grant.applying")], events[(rid, "grant.active")]) == (1, 1)


def test_a_batch_that_outlives_its_lease_records_none_of_it(lifecycle, store, backend, clock):
    """The engine applying a batch is so slow that its leases run out; a second engine takes every
    grant over and applies it. When the first returns, it records none of them again."""
    start = clock() + timedelta(hours=1)
    rids = [lifecycle.submit(who, "web-dev-01", "service-admin", timedelta(minutes=10), "a change window opening",
                             start=start).request.id for who in ("alice", "dave", "alice")]
    clock.advance(timedelta(hours=1))
    other = other_engine(lifecycle, store, clock)
    real_apply_many = backend.apply_many

    def slow_apply_many(specs):
        clock.advance(lifecycle.settings.lease + timedelta(seconds=1))
        assert other.recover() == 3  # the leases are over: the other engine takes each and applies it
        return real_apply_many(specs)

    backend.apply_many = slow_apply_many
    assert lifecycle.activate_due() == 3
    with store.transaction() as s:
        actions = Counter((e.request_id, e.action) for e in s.exec(select(AuditEvent)).all())
    for rid in rids:
        assert lifecycle.get(rid).state == "active"
        assert (actions[(rid, "grant.recovered")], actions[(rid, "grant.active")]) == (1, 1), actions
    assert sorted(gid for _, gid in other.backends["sudo"].calls) == sorted(lifecycle.get(r).grant.id for r in rids)

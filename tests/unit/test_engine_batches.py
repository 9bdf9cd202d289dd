"""Expiry, expiry warnings and activation work in batches (the revocation-lag and activation-burst
benchmarks' fixes): every grant is still applied once and ended once, each with its own audit
events, the chain intact, a failure left to retry (expiry) or failed alone (activation)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlmodel import select

from app.store import AuditEvent, GrantRow, audit
from integrations.base import BackendError, InvalidGrant

M = timedelta(minutes=1)
H = timedelta(hours=1)


def grant_five(lifecycle):
    people = ["alice", "dave"]
    rids = [lifecycle.submit(people[i % 2], "web-dev-01", "service-admin", (5 + i) * M,
                             f"batch check number {i}").request.id for i in range(5)]
    return rids


def test_expiry_in_batches_ends_each_grant_once_with_its_events(lifecycle, backend, clock, store):
    rids = grant_five(lifecycle)
    clock.advance(20 * M)
    assert lifecycle.expire_due(limit=2) == 5  # three batches: 2, 2, 1
    assert backend.artifacts == {}
    assert sorted(gid for method, gid in backend.calls if method == "revoke") == sorted(
        lifecycle.get(r).grant.id for r in rids)
    for rid in rids:
        view = lifecycle.get(rid)
        assert view.state == "expired" and view.grant.status == "revoked" and view.grant.revoked_at == clock()
        assert view.closed_by == "engine"
    with store.transaction() as s:
        for rid in rids:
            events = [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == rid)
                                                .order_by(AuditEvent.seq)).all()]
            assert events[-2:] == ["grant.revoking", "request.expired"]
        lag = json.loads(s.exec(select(AuditEvent).where(AuditEvent.request_id == rids[0],
                                                         AuditEvent.action == "request.expired")).one().details)
        assert lag["lag_ms"] == 15 * 60 * 1000
        assert audit.verify(s).ok
    assert lifecycle.expire_due() == 0


def test_a_failed_removal_in_a_batch_stays_revoking_and_the_rest_are_revoked(lifecycle, backend, clock, store):
    rids = grant_five(lifecycle)
    clock.advance(20 * M)
    backend.fail_revoke = 3  # the first grant's call and its two retries (apply_attempts = 3)
    assert lifecycle.expire_due() == 5
    states = [lifecycle.get(r).grant.status for r in rids]
    assert sorted(states) == ["revoked"] * 4 + ["revoking"]
    stuck = rids[states.index("revoking")]
    assert lifecycle.get(stuck).state == "active" and lifecycle.get(stuck).grant.last_error
    assert len(backend.artifacts) == 1  # nothing marked revoked while it still exists
    clock.advance(10 * M)
    assert lifecycle.recover() == 1
    assert lifecycle.get(stuck).state == "expired" and backend.artifacts == {}
    with store.transaction() as s:
        assert audit.verify(s).ok


def test_expiry_warnings_in_small_transactions_warn_each_grant_once(lifecycle, clock, store):
    grant_five(lifecycle)
    assert lifecycle.warn_expiring(timedelta(minutes=15), limit=2) == 5
    assert lifecycle.warn_expiring(timedelta(minutes=15), limit=2) == 0
    with store.transaction() as s:
        assert len(s.exec(select(AuditEvent).where(AuditEvent.action == "grant.expiring")).all()) == 5
        assert all(g.warned_at == clock() for g in s.exec(select(GrantRow)).all())


def schedule_five(lifecycle, clock):
    """Five requests (alice's and dave's) starting at one instant, an hour ahead; the clock then at it."""
    people, start = ["alice", "dave"], clock() + H
    rids = [lifecycle.submit(people[i % 2], "web-dev-01", "service-admin", (5 + i) * M, f"burst check number {i}",
                             start=start).request.id for i in range(5)]
    assert {lifecycle.get(r).state for r in rids} == {"approved"} and lifecycle.activate_due() == 0
    clock.advance(H)
    return rids


def events_of(store, rid):
    with store.transaction() as s:
        return [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == rid)
                                         .order_by(AuditEvent.seq)).all()]


@pytest.fixture
def transactions(store, monkeypatch):
    """How many transactions the store opens from now on."""
    opened, real = [], store.transaction

    @contextmanager
    def counted():
        opened.append(1)
        with real() as s:
            yield s
    monkeypatch.setattr(store, "transaction", counted)
    return opened


def test_activation_in_batches_applies_each_grant_once_with_its_events(lifecycle, backend, clock, store,
                                                                       transactions):
    rids = schedule_five(lifecycle, clock)
    transactions.clear()
    assert lifecycle.activate_due(limit=2) == 5
    # Per batch one transaction for the intents and one for the outcomes (PostgreSQL: one more, the
    # pass that waits for rows another engine had locked, which finds none).
    assert len(transactions) == 3 * 2 + (store.dialect == "postgresql"), len(transactions)
    grant_ids = [lifecycle.get(r).grant.id for r in rids]
    assert backend.batches == [grant_ids[0:2], grant_ids[2:4], grant_ids[4:]]  # one backend call per batch
    for rid in rids:
        view = lifecycle.get(rid)
        assert view.state == "active" and view.grant.status == "active" and view.grant.applied_at == clock()
        assert backend.artifacts[view.grant.id].not_before == clock() and view.grant.expires_at == view.expires_at
        assert events_of(store, rid)[-3:] == ["request.approved", "grant.applying", "grant.active"]
    with store.transaction() as s:
        assert audit.verify(s).ok
        assert all(g.owner is None and g.lease_until is None for g in s.exec(select(GrantRow)).all())
    assert lifecycle.activate_due() == 0 and len(backend.batches) == 3


@pytest.mark.parametrize("error", ["transient", "invalid"])
def test_a_grant_failing_in_a_batch_fails_alone_and_the_others_become_active(lifecycle, backend, clock, store,
                                                                             error):
    rids = schedule_five(lifecycle, clock)
    real_apply = backend.apply

    def apply(spec):
        if spec.request_id != rids[2]:
            return real_apply(spec)
        backend.calls.append(("apply", spec.grant_id))
        raise BackendError("the target refused", transient=True) if error == "transient" else \
            InvalidGrant("person", "not a user here")
    backend.apply = apply
    assert lifecycle.activate_due() == 5
    middle = lifecycle.get(rids[2])
    assert middle.state == "failed" and middle.grant.status == "failed" and middle.closed_by == "engine"
    assert middle.grant.last_error == ("the target refused" if error == "transient" else "person: not a user here")
    assert events_of(store, rids[2])[-2:] == ["grant.applying", "grant.failed"]
    others = [lifecycle.get(r) for r in rids if r != rids[2]]
    assert {v.state for v in others} == {"active"} and sorted(backend.artifacts) == sorted(v.grant.id for v in others)
    # Retried alone, as often as one grant on its own (apply_attempts = 3), and only when it may help.
    assert backend.batches == [[lifecycle.get(r).grant.id for r in rids]] + \
        [[middle.grant.id]] * (2 if error == "transient" else 0)
    with store.transaction() as s:
        assert audit.verify(s).ok


def test_a_backend_without_apply_many_is_called_once_per_grant(lifecycle, backend, clock):
    backend.apply_many = None  # as LDAP, AWS and Windows: no batch call
    rids = schedule_five(lifecycle, clock)
    assert lifecycle.activate_due(limit=2) == 5
    assert backend.batches == []
    assert sorted(gid for method, gid in backend.calls if method == "apply") == \
        sorted(lifecycle.get(r).grant.id for r in rids)
    assert {lifecycle.get(r).state for r in rids} == {"active"}


def test_an_activation_whose_window_passed_is_left_to_lapse(lifecycle, backend, clock):
    rids = schedule_five(lifecycle, clock)
    clock.advance(30 * M)  # every window (5 to 9 minutes) is over before the engine came
    assert lifecycle.activate_due() == 0 and backend.calls == []
    assert lifecycle.escalate_and_lapse() == (0, 5)
    assert {lifecycle.get(r).state for r in rids} == {"lapsed"}


def test_only_the_named_requests_are_activated(lifecycle, backend, clock):
    rids = schedule_five(lifecycle, clock)
    assert lifecycle.activate_due(only=rids[1:3]) == 2
    assert [lifecycle.get(r).state for r in rids] == ["approved", "active", "active", "approved", "approved"]
    assert lifecycle.activate_due() == 3


def test_a_database_failure_between_batches_still_records_the_batch_in_flight(lifecycle, backend, clock,
                                                                              monkeypatch):
    """A batch's backend calls run while the next batch's intent is written; when that write fails,
    the batch already applied still gets its outcomes and its claims are let go."""
    from app.domain.errors import StoreError

    rids = schedule_five(lifecycle, clock)
    real, intents = lifecycle._intend_activation, []

    def intend(*args):
        intents.append(args)
        if len(intents) == 2:
            raise StoreError("database error: the server closed the connection")
        return real(*args)
    monkeypatch.setattr(lifecycle, "_intend_activation", intend)
    with pytest.raises(StoreError):
        lifecycle.activate_due(limit=2)
    views = [lifecycle.get(r) for r in rids]
    assert [v.state for v in views] == ["active", "active", "approved", "approved", "approved"]
    assert not any(lifecycle.leases.holds(v.grant.id) for v in views[:2])
    monkeypatch.undo()
    assert lifecycle.activate_due() == 3 and {lifecycle.get(r).state for r in rids} == {"active"}

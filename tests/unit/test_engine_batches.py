"""Expiry and expiry warnings work in batches (the revocation-lag benchmark's fixes): every grant
is still ended once, each with its own audit events, the chain intact, a failure left to retry."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import select

from app.store import AuditEvent, GrantRow, audit

M = timedelta(minutes=1)


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

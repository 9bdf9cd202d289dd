"""The policy holds at every step, not only at submission (issue 15): what is queued counts, the
approval that completes a request and its activation run the whole policy again, and an
extension keeps the approval model it was granted under. SQLite and PostgreSQL."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import select

from app.dev.sandbox import PEOPLE
from app.domain.errors import Refused
from app.identity import StaticDirectory
from app.lifecycle import OutboxSettings
from app.store import AuditEvent, OutboxRow

H = timedelta(hours=1)
M = timedelta(minutes=1)
REASON = "restart nginx after the TLS renewal"


def people(**changed):
    groups = {name: frozenset(g) for name, (_, g) in PEOPLE.items()}
    groups.update({name: frozenset(g) for name, g in changed.items()})
    return StaticDirectory(groups)


def prod(lc, role="service-admin", who="alice", hours=2):
    return lc.submit(who, "web-prod-01", role, hours * H, REASON, "CHG0000001").request.id


def refusals(store, request_id):
    with store.transaction() as s:
        return [e for e in s.exec(select(AuditEvent).where(AuditEvent.request_id == request_id,
                                                           AuditEvent.action == "request.refused"))]


def without_sod(policy):
    return policy.model_copy(update={"separation_of_duties": ()})


def test_conflicting_roles_cannot_both_be_queued(lifecycle):
    """Reproduction: pending service-admin and log-auditor on web-prod-01 both became active."""
    prod(lifecycle, "service-admin")
    with pytest.raises(Refused, match="separation_of_duties.*conflicts with service-admin"):
        prod(lifecycle, "log-auditor")
    assert [v.role for v in lifecycle.list()] == ["service-admin"]


def test_five_pending_requests_never_become_more_grants_than_the_limit(lifecycle):
    """Reproduction: five pending requests became five active grants against a limit of 3."""
    made = []
    for _ in range(5):
        try:
            made.append(prod(lifecycle))
        except Refused as exc:
            assert exc.rule == "policy" and "concurrency" in str(exc)
    assert len(made) == 3
    for rid in made:
        lifecycle.approve("bob", rid)
        lifecycle.approve("carol", rid)
    assert sorted(v.state for v in lifecycle.list()) == ["active"] * 3


def test_the_completing_approval_refuses_what_the_policy_no_longer_allows(lifecycle, policy, store):
    """Two conflicting requests queued before the rule existed: the first approved wins, the
    second is denied by the policy at its approval, audited with the failing check."""
    lifecycle.policy = without_sod(policy)
    first, second = prod(lifecycle, "service-admin"), prod(lifecycle, "log-auditor")
    lifecycle.policy = policy
    for rid in (first, second):
        lifecycle.approve("bob", rid)
    assert lifecycle.approve("carol", first).request.state == "active"
    with pytest.raises(Refused, match="refused by policy at approval: separation_of_duties"):
        lifecycle.approve("carol", second)
    view = lifecycle.get(second)
    assert view.state == "denied" and view.closed_by == "policy" and view.grant is None
    assert "separation_of_duties" in view.closed_reason
    assert {c["name"]: c["passed"] for c in view.checks}["separation_of_duties"] is False
    [event] = refusals(store, second)
    assert event.actor == "policy" and '"stage":"approval"' in event.details.replace(" ", "")
    assert '"approver":"carol"' in event.details.replace(" ", "")


def test_a_request_submitted_in_hours_and_approved_after_them_is_refused(lifecycle, policy, clock):
    """Reproduction: submitted at 17:59, approved at 23:00, it started outside approved hours."""
    env = policy.environments["production"].model_copy(update={"hours": "09:00-18:00"})
    lifecycle.policy = policy.model_copy(update={"environments": {**policy.environments, "production": env}})
    clock.advance(7 * H + 59 * M)  # T0 is 10:00 UTC: now 17:59
    rid = prod(lifecycle)
    lifecycle.approve("bob", rid)
    clock.advance(5 * H + M)  # 23:00
    with pytest.raises(Refused, match="approved_hours"):
        lifecycle.approve("carol", rid)
    assert lifecycle.get(rid).state == "denied"


def test_removed_from_the_eligible_group_after_submitting_gets_nothing(lifecycle, backend):
    """Reproduction: a person removed from the eligible group after submitting still got the grant."""
    rid = prod(lifecycle)
    lifecycle.approve("bob", rid)
    lifecycle.directory = people(alice=[])
    with pytest.raises(Refused, match="privilege_appropriate"):
        lifecycle.approve("carol", rid)
    assert lifecycle.get(rid).state == "denied" and backend.artifacts == {}


def test_a_scheduled_request_is_weighed_again_when_it_starts(lifecycle, backend, clock, store):
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * M, REASON, start=clock() + H).request.id
    assert lifecycle.get(rid).state == "approved"
    lifecycle.directory = people(alice=[])
    clock.advance(H)
    assert lifecycle.activate_due() == 0
    view = lifecycle.get(rid)
    assert view.state == "revoked" and view.closed_by == "policy" and "privilege_appropriate" in view.closed_reason
    assert backend.artifacts == {} and view.grant is None
    [event] = refusals(store, rid)
    assert '"stage":"activation"' in event.details.replace(" ", "")
    # one still allowed in the same batch starts
    lifecycle.directory = people()
    ok = lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * M, REASON, start=clock() + H).request.id
    clock.advance(H)
    assert lifecycle.activate_due() == 1 and lifecycle.get(ok).state == "active"


def test_a_refusal_at_approval_is_noted_on_the_ticket(lifecycle, store):
    lifecycle.outbox = OutboxSettings(servicenow=True)
    rid = prod(lifecycle)
    lifecycle.approve("bob", rid)
    lifecycle.directory = people(alice=[])
    with pytest.raises(Refused):
        lifecycle.approve("carol", rid)
    with store.transaction() as s:
        texts = [o.payload["text"] for o in s.exec(select(OutboxRow).where(OutboxRow.request_id == rid))]
    assert any("refused by policy at approval" in t and "privilege_appropriate" in t for t in texts)


class SlowDirectory(StaticDirectory):
    """Takes its time to answer for the requester: two approvals for one person overlap in it."""

    def groups_of(self, person):
        if person == "alice":
            time.sleep(0.3)
        return super().groups_of(person)


def test_two_completing_approvals_for_one_person_see_each_other(lifecycle, policy, store):
    """Serialised per requester: of two racing approvals whose requests conflict, one wins; without
    the requester's lock both read no holdings and both became active on PostgreSQL."""
    lifecycle.policy = without_sod(policy)
    first, second = prod(lifecycle, "service-admin"), prod(lifecycle, "log-auditor")
    lifecycle.policy = policy
    for rid in (first, second):
        lifecycle.approve("bob", rid)
    lifecycle.directory = SlowDirectory({**{n: frozenset(g) for n, (_, g) in PEOPLE.items()},
                                         "frank": frozenset({"system-owners"})})
    outcomes = {}

    def approve(who, rid):
        try:
            outcomes[rid] = lifecycle.approve(who, rid).request.state
        except Refused as exc:
            outcomes[rid] = exc.rule

    threads = [threading.Thread(target=approve, args=a) for a in (("carol", first), ("frank", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["active", "policy"], outcomes
    assert sorted(lifecycle.get(r).state for r in (first, second)) == ["active", "denied"]


def test_one_approver_cannot_extend_a_dual_approved_grant(lifecycle, backend, store):
    """Reproduction: a single approver extended a dual-approved production grant from 1 h to 7 h."""
    rid = prod(lifecycle, hours=1)
    lifecycle.approve("bob", rid)
    view = lifecycle.approve("carol", rid).request
    for who in ("bob", "carol", "alice"):
        with pytest.raises(Refused, match="needs dual approval.*new request starting at"):
            lifecycle.extend(who, rid, 6 * H, "the migration runs long")
    assert lifecycle.get(rid).expires_at == view.expires_at
    assert backend.artifacts[view.grant.id].not_after == view.expires_at
    with store.transaction() as s:
        assert len(s.exec(select(AuditEvent).where(AuditEvent.action == "extension.refused")).all()) == 3


def test_an_emergency_or_servicenow_approved_grant_is_not_extended_by_one_person():
    from datetime import datetime, timezone

    from policies.authority import may_extend
    end = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    for granted in ("servicenow", "emergency"):
        why = may_extend("bob", frozenset({"managers"}), "alice", granted, False, "single", ("managers",),
                         "3h", "REQ-1", end)
        assert why and "new request starting at 2026-11-24 12:00 UTC" in why
    assert may_extend("bob", frozenset({"managers"}), "alice", "single", False, "single", ("managers",),
                      "3h", "REQ-1", end) is None
    assert "needs single" in may_extend("alice", frozenset({"engineers"}), "alice", "single", True,
                                        "self-service", ("managers",), "12m", "REQ-1", end)

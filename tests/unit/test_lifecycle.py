"""The lifecycle on a real database (SQLite and PostgreSQL) with the in-memory backend."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from app.domain.errors import BadInput, Conflict, NotFound, Refused
from app.store import AuditEvent, GrantRow, audit

H = timedelta(hours=1)
M = timedelta(minutes=1)
REASON = "restart nginx after the TLS renewal"


def actions(store, request_id=None):
    with store.transaction() as s:
        q = select(AuditEvent).order_by(AuditEvent.seq)
        if request_id is not None:
            q = q.where(AuditEvent.request_id == request_id)
        return [e.action for e in s.exec(q).all()]


def prod(lc, who="alice", hours=2):
    return lc.submit(who, "web-prod-01", "service-admin", hours * H, REASON, "CHG0000001").request.id


def dev(lc, who="alice", minutes=10, **kw):
    return lc.submit(who, "web-dev-01", "service-admin", minutes * M, REASON, **kw).request.id


def test_dual_approval_then_release(lifecycle, backend, store):
    rid = prod(lifecycle)
    assert lifecycle.get(rid).state == "pending"
    assert lifecycle.approve("bob", rid, "ok").request.state == "pending"
    with pytest.raises(Refused, match="never approve their own"):
        lifecycle.approve("alice", rid)
    with pytest.raises(Refused, match="counts once"):
        lifecycle.approve("bob", rid)
    view = lifecycle.approve("carol", rid).request
    assert view.state == "active" and view.grant.status == "active"
    assert [a.approver for a in view.approvals] == ["bob", "carol"]
    art = backend.artifacts[view.grant.id]
    assert art.person == "alice" and art.not_after == view.expires_at
    assert art.details["commands"][0] == "/usr/bin/systemctl restart nginx"
    assert lifecycle.release("alice", rid).request.state == "released"
    assert backend.artifacts == {}
    assert actions(store, rid) == ["request.submitted", "approval.given", "approval.refused", "approval.refused",
                                   "approval.given", "request.approved", "grant.applying", "grant.active",
                                   "grant.revoking", "request.released"]
    with store.transaction() as s:
        assert audit.verify(s).ok


def test_audit_records_each_decision_in_order(lifecycle, store):
    rid = prod(lifecycle)
    lifecycle.approve("bob", rid)
    with pytest.raises(Refused):
        lifecycle.approve("alice", rid)
    lifecycle.approve("carol", rid)
    assert actions(store, rid) == ["request.submitted", "approval.given", "approval.refused", "approval.given",
                                   "request.approved", "grant.applying", "grant.active"]
    with store.transaction() as s:
        submitted = s.exec(select(AuditEvent).where(AuditEvent.action == "request.submitted")).one()
    details = json.loads(submitted.details)
    assert submitted.actor == "alice" and {c["name"] for c in details["checks"]} >= {
        "business_need", "privilege_appropriate", "duration_reasonable", "separation_of_duties",
        "approved_hours", "concurrency"}


def test_dual_needs_both_groups(lifecycle):
    rid = prod(lifecycle)
    lifecycle.approve("bob", rid)
    lifecycle.directory._people["frank"] = frozenset({"managers"})
    with pytest.raises(Refused, match="adds no coverage.*system-owners"):
        lifecycle.approve("frank", rid)
    with pytest.raises(Refused, match="none of the approver groups"):
        lifecycle.approve("erin", rid)
    assert lifecycle.get(rid).state == "pending"


def test_self_service_is_active_at_once(lifecycle, backend):
    view = lifecycle.get(dev(lifecycle))
    assert view.state == "active" and view.approval_model == "self-service"
    assert len(backend.artifacts) == 1


def test_self_service_above_threshold_needs_one_approver(lifecycle):
    rid = dev(lifecycle, minutes=120)
    view = lifecycle.get(rid)
    assert view.state == "pending" and view.approval_model == "single"
    assert lifecycle.approve("bob", rid).request.state == "active"


def test_duration_counts_from_activation(lifecycle, clock):
    rid = dev(lifecycle, minutes=120)
    clock.advance(40 * M)
    view = lifecycle.approve("bob", rid).request
    assert view.expires_at - view.starts_at == 120 * M
    assert view.starts_at == clock()


def test_policy_refusal_names_check_and_writes_no_request(lifecycle, store):
    with pytest.raises(Refused, match="duration_reasonable.*exceeds the 8h maximum"):
        prod(lifecycle, hours=9)
    with pytest.raises(Refused, match="privilege_appropriate"):
        prod(lifecycle, who="erin")
    assert lifecycle.list() == []
    assert actions(store) == ["request.refused", "request.refused"]


def test_deny_rules(lifecycle):
    rid = prod(lifecycle)
    with pytest.raises(Refused, match="cancels their own"):
        lifecycle.deny("alice", rid, "no")
    with pytest.raises(Refused, match="neither an approver"):
        lifecycle.deny("dave", rid, "no")
    view = lifecycle.deny("bob", rid, "no change window").request
    assert view.state == "denied" and view.closed_by == "bob"
    with pytest.raises(Refused, match="it is denied"):
        lifecycle.approve("carol", rid)


def test_cancel_only_by_requester(lifecycle):
    rid = prod(lifecycle)
    with pytest.raises(Refused, match="only the requester"):
        lifecycle.cancel("bob", rid)
    assert lifecycle.cancel("alice", rid).request.state == "cancelled"


def test_revoke_by_operator(lifecycle, backend):
    rid = dev(lifecycle)
    with pytest.raises(Refused, match="not a security operator"):
        lifecycle.revoke("dave", rid, "suspicious")
    view = lifecycle.revoke("erin", rid, "suspicious activity").request
    assert view.state == "revoked" and view.closed_reason == "suspicious activity"
    assert backend.artifacts == {}


def test_release_only_by_requester(lifecycle):
    rid = dev(lifecycle)
    with pytest.raises(Refused, match="only alice can release"):
        lifecycle.release("erin", rid)


def test_not_found(lifecycle):
    with pytest.raises(NotFound):
        lifecycle.approve("bob", 999)


def test_expiry_revokes_and_records_lag(lifecycle, backend, clock, store):
    rid = dev(lifecycle)
    clock.advance(9 * M)
    assert lifecycle.expire_due() == 0
    clock.advance(1 * M + timedelta(milliseconds=300))
    assert lifecycle.expire_due() == 1
    view = lifecycle.get(rid)
    assert view.state == "expired" and view.grant.status == "revoked" and backend.artifacts == {}
    with store.transaction() as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.action == "request.expired")).one()
    assert json.loads(ev.details)["lag_ms"] == 300


def test_escalation_then_lapse(lifecycle, clock, store):
    rid = prod(lifecycle)
    clock.advance(29 * M)
    assert lifecycle.escalate_and_lapse() == (0, 0)
    clock.advance(2 * M)
    assert lifecycle.escalate_and_lapse() == (1, 0)
    assert lifecycle.get(rid).escalated_at == clock()
    assert lifecycle.escalate_and_lapse() == (0, 0)  # escalated once
    clock.advance(24 * H)
    assert lifecycle.escalate_and_lapse() == (0, 1)
    assert lifecycle.get(rid).state == "lapsed"
    assert "request.escalated" in actions(store, rid) and actions(store, rid)[-1] == "request.lapsed"


def test_scheduled_start(lifecycle, backend, clock):
    start = clock() + 2 * H
    rid = dev(lifecycle, start=start)
    view = lifecycle.get(rid)
    assert view.state == "approved" and view.starts_at == start and backend.artifacts == {}
    assert lifecycle.activate_due() == 0
    clock.advance(2 * H)
    assert lifecycle.activate_due() == 1
    view = lifecycle.get(rid)
    assert view.state == "active" and view.expires_at == start + 10 * M


def test_start_needs_offset_and_future(lifecycle, clock):
    with pytest.raises(Refused, match="UTC offset"):
        dev(lifecycle, start=clock().replace(tzinfo=None))
    with pytest.raises(Refused, match="in the past"):
        dev(lifecycle, start=clock() - H)


def test_extend_through_policy(lifecycle, backend, clock):
    rid = dev(lifecycle)
    view = lifecycle.extend("alice", rid, 3 * M, "a little longer").request
    assert view.expires_at - view.starts_at == 13 * M
    assert backend.artifacts[view.grant.id].not_after == view.expires_at
    with pytest.raises(Refused, match="needs single approval"):
        lifecycle.extend("alice", rid, H, "need one more hour")
    view = lifecycle.extend("bob", rid, H, "agreed on a call").request
    assert backend.artifacts[view.grant.id].not_after == view.expires_at
    with pytest.raises(Refused, match="duration_reasonable"):
        lifecycle.extend("bob", rid, 24 * H, "a whole day more please")


def test_bypass_and_review(lifecycle, backend, store):
    with pytest.raises(Refused, match="emergency_group"):
        lifecycle.bypass("alice", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all users")
    with pytest.raises(Refused, match="duration_reasonable"):
        lifecycle.bypass("dave", "web-prod-01", "service-admin", 3 * H, "INC0000042", "nginx down for all users")
    rid = lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all").request.id
    view = lifecycle.get(rid)
    assert view.state == "active" and view.kind == "bypass" and view.review["state"] == "open"
    with pytest.raises(Refused, match="open_review"):
        lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000043", "nginx down again, sorry")
    with pytest.raises(Refused, match="never review their own"):
        lifecycle.review("dave", rid, "justified", "it was fine")
    with pytest.raises(Refused, match="not in the reviewer group"):
        lifecycle.review("bob", rid, "justified", "it was fine")
    grant_id = view.grant.id
    assert grant_id in backend.artifacts
    reviewed = lifecycle.review("erin", rid, "violation", "no outage found")
    assert reviewed.request.review["state"] == "violation"
    assert (reviewed.request.state, reviewed.request.closed_by) == ("revoked", "erin")  # the access ends now
    assert "emergency bypass reviewed as a violation: no outage found" in reviewed.request.closed_reason
    assert grant_id not in backend.artifacts
    assert "its access is revoked" in reviewed.message and "dave cannot bypass again" in reviewed.message
    with pytest.raises(Refused, match="already reviewed"):
        lifecycle.review("erin", rid, "justified", "changed my mind")
    with pytest.raises(Refused, match=f"open_review.*REQ-{rid}.*reviewed as a violation.*must clear it"):
        lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000043", "nginx down again, sorry")
    with pytest.raises(Refused, match="never clear their own violation"):
        lifecycle.clear_violation("dave", rid, "I promise")
    with pytest.raises(Refused, match="not in the reviewer group"):
        lifecycle.clear_violation("bob", rid, "he promised")
    with pytest.raises(BadInput, match="comment"):
        lifecycle.clear_violation("erin", rid, "  ")
    cleared = lifecycle.clear_violation("erin", rid, "retrained on the bypass rules").request.review
    assert (cleared["cleared_by"], cleared["clear_comment"]) == ("erin", "retrained on the bypass rules")
    with pytest.raises(Refused, match="already cleared by erin"):
        lifecycle.clear_violation("erin", rid, "again")
    lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000043", "nginx down again, sorry")
    assert [v.id for v in lifecycle.open_reviews()] == [rid + 1]
    with pytest.raises(Refused, match="not reviewed as a violation \\(open\\)"):
        lifecycle.clear_violation("erin", rid + 1, "nothing to clear")
    assert {"bypass.used", "bypass.reviewed", "grant.revoking", "request.revoked", "bypass.cleared"} <= set(
        actions(store, rid))


def test_a_violation_after_the_bypass_ended_says_so_and_still_holds_the_next(lifecycle, backend, clock):
    rid = lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all").request.id
    lifecycle.release("dave", rid)
    reviewed = lifecycle.review("erin", rid, "violation", "no outage found")
    assert reviewed.request.state == "released" and "had already ended (released)" in reviewed.message
    with pytest.raises(Refused, match="open_review.*violation"):
        lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000043", "nginx down again, sorry")


def test_a_justified_review_leaves_the_bypass_running(lifecycle, backend):
    rid = lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all").request.id
    reviewed = lifecycle.review("erin", rid, "justified", "the outage was real")
    assert reviewed.request.state == "active" and reviewed.request.grant.id in backend.artifacts
    assert reviewed.message == f"REQ-{rid} reviewed: justified"


def test_separation_of_duties_against_active_grants(lifecycle):
    rid = lifecycle.submit("alice", "web-prod-01", "log-auditor", 2 * H, REASON, "CHG0000001").request.id
    lifecycle.approve("bob", rid)
    lifecycle.approve("carol", rid)
    with pytest.raises(Refused, match="separation_of_duties.*conflicts with log-auditor"):
        prod(lifecycle)


def test_concurrency_limit(lifecycle):
    for _ in range(3):
        dev(lifecycle)
    with pytest.raises(Refused, match="concurrency.*limit is 3"):
        dev(lifecycle)


def test_apply_failure_after_retries_marks_failed(lifecycle, backend, store):
    backend.fail_apply = 10
    rid = dev(lifecycle)
    view = lifecycle.get(rid)
    assert view.state == "failed" and view.grant.status == "failed"
    assert backend.calls.count(("apply", view.grant.id)) == 3
    assert "grant.failed" in actions(store, rid)


def test_revoke_failure_never_marks_revoked(lifecycle, backend, clock):
    rid = dev(lifecycle)
    backend.fail_revoke = 100
    outcome = lifecycle.release("alice", rid)
    assert "revocation pending" in outcome.message
    view = lifecycle.get(rid)
    assert view.state == "active" and view.grant.status == "revoking" and len(backend.artifacts) == 1
    backend.fail_revoke = 0
    clock.advance(H)
    assert lifecycle.recover() == 1
    view = lifecycle.get(rid)
    assert view.state == "released" and view.grant.status == "revoked" and backend.artifacts == {}


def test_recover_finishes_an_abandoned_apply(lifecycle, backend, clock, store):
    rid = dev(lifecycle, start=clock() + H)
    clock.advance(H)
    with store.transaction() as s:  # what a process killed mid-apply leaves behind
        s.add(GrantRow(request_id=rid, backend="sudo", person="alice", target="web-dev-01", role="service-admin",
                       params={}, starts_at=clock(), expires_at=clock() + 10 * M, status="applying",
                       owner="elsewhere:1", lease_until=clock() - M, updated_at=clock()))
    assert lifecycle.recover() == 1
    assert lifecycle.get(rid).state == "active" and len(backend.artifacts) == 1


def test_recover_respects_a_live_lease(lifecycle, clock, store):
    rid = dev(lifecycle, start=clock() + H)
    clock.advance(H)
    with store.transaction() as s:
        s.add(GrantRow(request_id=rid, backend="sudo", person="alice", target="web-dev-01", role="service-admin",
                       params={}, starts_at=clock(), expires_at=clock() + 10 * M, status="applying",
                       owner="other-host:1", lease_until=clock() + M, updated_at=clock()))
    assert lifecycle.recover() == 0
    clock.advance(2 * M)
    assert lifecycle.recover() == 1


def test_stale_version_is_a_conflict(lifecycle, store):
    from app.store import RequestRow
    from app.store import requests as request_store
    rid = prod(lifecycle)
    with store.transaction() as s:
        row = s.get(RequestRow, rid)
        stale = RequestRow(**{k: getattr(row, k) for k in RequestRow.model_fields})
    lifecycle.approve("bob", rid)
    with store.transaction() as s, pytest.raises(Conflict):
        request_store.transition(s, stale, "denied", lifecycle.clock())
    assert lifecycle.get(rid).state == "pending"


def test_overlapping_grants_keep_a_shared_artifact_until_the_last_ends(lifecycle, backend, clock, store):
    backend.shared = True  # like one LDAP group membership covered by two grants
    first = dev(lifecycle, minutes=10)
    second = dev(lifecycle, minutes=15)
    key = "fake:web-dev-01|service-admin|alice"
    assert list(backend.artifacts) == [key]
    clock.advance(10 * M)
    assert lifecycle.expire_due() == 1
    assert lifecycle.get(first).state == "expired"
    assert key in backend.artifacts  # the second grant still covers it
    assert backend.artifacts[key].not_after == lifecycle.get(second).expires_at
    with store.transaction() as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.action == "request.expired")).one()
    assert json.loads(ev.details)["kept_for_grant"] == lifecycle.get(second).grant.id
    clock.advance(5 * M)
    assert lifecycle.expire_due() == 1
    assert backend.artifacts == {}


def test_releasing_the_longer_grant_restores_the_shorter_ones_terms(lifecycle, backend, clock):
    backend.shared = True
    short = dev(lifecycle, minutes=10)
    long_ = dev(lifecycle, minutes=15)
    key = "fake:web-dev-01|service-admin|alice"
    assert backend.artifacts[key].not_after == lifecycle.get(long_).expires_at
    lifecycle.release("alice", long_)
    assert backend.artifacts[key].not_after == lifecycle.get(short).expires_at  # e.g. the AD TTL shortened
    lifecycle.release("alice", short)
    assert backend.artifacts == {}


def test_text_check_patterns_match_unicode_categories():
    """The free-text check's two patterns are exactly the Unicode categories they stand for, over
    every code point: Cc (tab allowed), Zl, Zp and the bidi controls; and Cs."""
    import sys
    import unicodedata

    from app.domain.inputs import CONTROL_RE, SURROGATE_RE
    bidi = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        category = unicodedata.category(c)
        assert bool(CONTROL_RE.match(c)) == (c != "\t" and category in ("Cc", "Zl", "Zp") or c in bidi), hex(code)
        assert bool(SURROGATE_RE.match(c)) == (category == "Cs"), hex(code)


@pytest.mark.parametrize("text", ["2026-11-24 09:05:00", "2026-02-29 00:00:00", "2024-02-29 23:59:59",
                                  "2026-1-5 1:02:03", "2026-11-24T09:05:00", "2026-11-24 09:05:00+01:00",
                                  "2026-11-24", "", "２０２６-11-24 09:05:00", "2026-11-24 24:00:00"])
def test_servicenow_time_fast_path_agrees_with_strptime(text):
    from datetime import datetime, timezone

    from integrations.servicenow.tickets import SN_TIME, parse_sn_time
    try:
        expected = datetime.strptime(text, SN_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        expected = None
    assert parse_sn_time(text) == expected

"""The console's read models and actions, without Textual, on the real lifecycle."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.bootstrap import build
from app.clock import FrozenClock
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.domain.errors import Refused
from app.queries.console import ConsoleData
from tests.conftest import T0

H = timedelta(hours=1)


@pytest.fixture
def sv(tmp_path):
    services = build(load_config(write_sandbox(tmp_path / "sb", servicenow_url=None)), clock=FrozenClock(T0))
    yield services
    services.close()


def prod(sv, who="alice"):
    return sv.lifecycle.submit(who, "web-prod-01", "service-admin", 2 * H, "renew the TLS certificate",
                               "CHG0000001").request.id


def test_operator_capabilities(sv):
    assert ConsoleData(sv, "bob").operator.can_approve and not ConsoleData(sv, "bob").operator.can_review
    erin = ConsoleData(sv, "erin").operator
    assert erin.can_review and erin.can_revoke and not erin.can_approve and not erin.can_bypass
    assert ConsoleData(sv, "dave").operator.can_bypass
    alice = ConsoleData(sv, "alice").operator
    assert not (alice.can_approve or alice.can_review or alice.can_bypass or alice.can_revoke)


def test_queue_is_most_urgent_first_with_approvals(sv):
    first, second = prod(sv), prod(sv, "dave")
    sv.lifecycle.approve("bob", second)
    sv.clock.advance(31 * timedelta(minutes=1))
    third = prod(sv)
    sv.lifecycle.escalate_and_lapse()  # the first two have waited 31 minutes
    data = ConsoleData(sv, "carol")
    queue = data.queue()
    assert [q.id for q in queue] == [first, second, third]
    assert [q.escalated for q in queue] == [True, True, False]
    assert (queue[1].approvals, queue[1].needed, queue[1].approvers) == (1, 2, ("bob",))
    assert queue[0].verdict == "pass" and queue[0].duration == 2 * H


def test_actions_refuse_like_the_lifecycle(sv):
    rid = prod(sv)
    with pytest.raises(Refused, match="never approve their own"):
        ConsoleData(sv, "alice").approve(rid)
    assert "1 of 2" in ConsoleData(sv, "bob").approve(rid, "ok")
    assert "approvals complete" in ConsoleData(sv, "carol").approve(rid)
    [item] = ConsoleData(sv, "erin").active()
    assert item.id == rid and item.expires_at == T0 + 2 * H
    assert "revoked" in ConsoleData(sv, "erin").revoke(rid, "suspicious activity")


def test_change_token_moves_with_any_change(sv):
    data = ConsoleData(sv, "bob")
    before = data.change_token()
    prod(sv)
    assert data.change_token() > before


def test_health_sees_a_running_engine_and_exposure(sv):
    data = ConsoleData(sv, "erin")
    assert not data.health().engine_running
    sv.lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for everyone")
    sv.engine.run_once()
    h = data.health()
    assert h.engine_running and h.elevated_now == 1 and h.bypasses_awaiting_review == 1 and h.audit_ok
    sv.clock.advance(timedelta(minutes=5))
    assert not data.health().engine_running  # silent for longer than three polls


def test_audit_filter_and_history(sv):
    rid = prod(sv)
    data = ConsoleData(sv, "bob")
    data.approve(rid, "looks fine")
    assert [e.action for e in data.history(rid)] == ["request.submitted", "approval.given"]
    assert all("bob" in (e.actor + e.summary) for e in data.audit("bob"))
    summary = data.audit("approval.given")[0].summary
    assert "comment: looks fine" in summary and "groups: managers" in summary and "[" not in summary  # words, not reprs

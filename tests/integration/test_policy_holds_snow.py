"""The ticket's checks hold past submission (issue 15): at extension (never past the change
window) and at activation, against the ServiceNow simulator over real HTTP."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.domain.errors import Refused
from integrations.servicenow.tickets import sn_time
from tests.integration.test_servicenow import change, client, now, receiver, sim, tickets, world  # noqa: F401

H = timedelta(hours=1)
M = timedelta(minutes=1)
REASON = "renew the TLS certificate"


def test_an_extension_never_runs_past_the_change_window(world, backend):
    """Reproduction: extensions skipped the ticket checks, so a grant ran past its change window
    while `jit show` still said [pass] change_window. CHG0000001's window ends in 4 h."""
    rid = world.lc.submit("alice", "web-dev-01", "service-admin", 10 * M, REASON, "CHG0000001").request.id
    with pytest.raises(Refused, match="change_window.*outside the change window"):
        world.lc.extend("bob", rid, 5 * H, "the migration runs long")
    view = world.lc.extend("bob", rid, H, "the migration runs long").request
    assert view.expires_at - view.starts_at == H + 10 * M
    window = next(c for c in view.checks if c["name"] == "change_window")
    assert window["passed"] and "inside the change window" in window["message"]
    assert backend.artifacts[view.grant.id].not_after == view.expires_at


def test_a_scheduled_request_whose_change_moved_is_refused_when_it_starts(world, sim, backend, now):
    rid = world.lc.submit("alice", "web-dev-01", "service-admin", 10 * M, REASON, "CHG0000001",
                          start=now + H).request.id
    assert world.lc.get(rid).state == "approved"
    c = change(sim, "CHG0000001")
    world.sync.tickets.client.update("change_request", c["sys_id"], {"end_date": sn_time(now + 30 * M)})
    world.clock.advance(H)
    assert world.lc.activate_due() == 0
    view = world.lc.get(rid)
    assert view.state == "revoked" and view.closed_by == "policy" and "change_window" in view.closed_reason
    assert backend.artifacts == {}


def test_activation_waits_while_servicenow_is_down(world, sim, backend, now):
    rid = world.lc.submit("alice", "web-dev-01", "service-admin", 10 * M, REASON, "CHG0000001",
                          start=now + H).request.id
    world.clock.advance(H)
    sim.faults.update({"down": True})
    assert world.lc.activate_due() == 0
    assert world.lc.get(rid).state == "approved"  # not refused for an outage: the next pass tries again
    sim.faults.update({"down": False})
    assert world.lc.activate_due() == 1
    assert world.lc.get(rid).state == "active"

"""The ticket's checks hold past submission (issue 15): at extension (never past the change
window) and at activation, against the ServiceNow simulator over real HTTP."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlmodel import select

from app.domain.errors import Refused
from app.identity import StaticDirectory
from app.store import AuditEvent, RequestRow
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


# ------------------------------------------- ServiceNow's approval counts only as jit's would
def events_of(world, rid):
    with world.lc.store.transaction() as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.request_id == rid).order_by(AuditEvent.seq)).all()
    return [(e.action, json.loads(e.details)) for e in rows]


def new_change(sim, number, now, person="alice", approval="requested"):
    """A change in its window carrying the JIT fields for the high tier (dual: managers and
    system-owners), assigned to ``person`` in the Web Operations group."""
    seeded = change(sim, "CHG0000001")
    user = next(u for u in sim.records("sys_user") if u["user_name"] == person)
    sim.insert("change_request", {
        "number": number, "state": "-1", "approval": approval, "start_date": sn_time(now - H),
        "end_date": sn_time(now + 4 * H), "assigned_to": user["sys_id"], "assignment_group": seeded["assignment_group"],
        "cmdb_ci": seeded["cmdb_ci"], "u_jit_target": "web-prod-01", "u_jit_role": "service-admin"})


def synced(world, number):
    world.sync.run_once()
    [view] = [v for v in world.lc.list() if v.ticket == number]
    return view


@pytest.mark.parametrize("approvers,why", [
    ((), "nobody who counts gave them"),                                    # approval field alone
    (("bob",), "2 approval\\(s\\) from managers and system-owners are needed and bob gave them"),
    (("bob", "erin"), "erin is in none of the approver groups"),            # a second approver outside the tier
])
def test_an_approved_change_without_the_tiers_approvers_waits_for_jit(world, sim, now, backend, approvers, why):
    """Reproduction: a change whose ``approval`` field said approved was the whole approval of a
    production grant, whoever (if anyone) approved it."""
    new_change(sim, "CHG0000030", now, approval="approved")
    if approvers:
        sim.approve("CHG0000030", *approvers)
    view = synced(world, "CHG0000030")
    assert (view.state, view.approval_model) == ("pending", "dual") and view.grant is None
    submitted = dict(events_of(world, view.id))["request.submitted"]
    assert "does not count" in submitted["servicenow_approval"]
    assert re.search(why, submitted["servicenow_approval"])
    world.lc.approve("bob", view.id)  # the console's approvers can still grant it
    assert world.lc.approve("carol", view.id).request.state == "active"


def test_approvers_an_acl_keeps_unreadable_never_count(world, sim, now, backend):
    """A field-level ACL blanks the approvers' user names for the integration user: ServiceNow's
    approval cannot be weighed, so the request waits for jit's approvers (it never becomes active)."""
    new_change(sim, "CHG0000033", now)
    sim.approve("CHG0000033", "bob", "carol")
    sim.blanked = lambda user, table, name: table == "sysapproval_approver" and name == "approver.user_name"
    view = synced(world, "CHG0000033")
    assert (view.state, view.approval_model) == ("pending", "dual") and view.grant is None
    assert "nobody who counts gave them" in dict(events_of(world, view.id))["request.submitted"]["servicenow_approval"]


def test_an_assignee_an_acl_keeps_unreadable_is_refused_saying_so(world, sim, now, backend):
    new_change(sim, "CHG0000034", now)
    sim.approve("CHG0000034", "bob", "carol")
    sim.blanked = lambda user, table, name: table == "change_request" and name == "assigned_to.user_name"
    assert world.sync.run_once().refused >= 1
    assert not [v for v in world.lc.list() if v.ticket == "CHG0000034"] and backend.artifacts == {}
    assert any("CHG0000034: ticket: CHG0000034 needs an assignee and both JIT fields" in e
               for e in world.sync.status().errors)


def test_the_assignee_approving_their_own_change_does_not_count(world, sim, now, backend):
    """alice is an engineer and, here, a manager too: her approval of the change she is assigned
    (and so requests through) never counts, as in jit."""
    world.lc.directory = StaticDirectory({"alice": frozenset({"engineers", "managers"}),
                                          "bob": frozenset({"managers"}), "carol": frozenset({"system-owners"})})
    new_change(sim, "CHG0000031", now)
    sim.approve("CHG0000031", "alice", "carol")
    view = synced(world, "CHG0000031")
    assert view.state == "pending" and view.grant is None
    reason = dict(events_of(world, view.id))["request.submitted"]["servicenow_approval"]
    assert "a requester can never approve their own request" in reason


def test_the_tiers_approvers_in_servicenow_grant_it_and_are_audited(world, sim, now, backend):
    new_change(sim, "CHG0000032", now)
    sim.options.clock = lambda: now + M  # edited before it was approved: the approval saw the edit
    world.sync.tickets.client.update("change_request", change(sim, "CHG0000032")["sys_id"],
                                     {"end_date": sn_time(now + 3 * H)})
    sim.options.clock = lambda: now + 2 * M
    sim.approve("CHG0000032", "bob", "carol")
    view = synced(world, "CHG0000032")
    assert (view.state, view.approval_model) == ("active", "servicenow") and view.grant.id in backend.artifacts
    approved = dict(events_of(world, view.id))["request.approved"]
    assert approved["approvers"] == [
        {"person": "bob", "groups": ["managers"], "at": (now + 2 * M).isoformat()},
        {"person": "carol", "groups": ["system-owners"], "at": (now + 2 * M).isoformat()}]


def test_a_change_edited_after_its_approval_waits_for_jit(world, sim, now, backend):
    """Reproduction: an approved change for tomorrow (CHG0000002, approved by bob and carol),
    edited to start now with JIT fields added, became an active production grant."""
    sim.options.clock = lambda: now + M
    world.sync.tickets.client.update("change_request", change(sim, "CHG0000002")["sys_id"], {
        "start_date": sn_time(now - H), "end_date": sn_time(now + 3 * H), "u_jit_target": "web-prod-01",
        "u_jit_role": "service-admin"})
    view = synced(world, "CHG0000002")
    assert (view.state, view.approval_model) == ("pending", "dual") and view.grant is None
    reason = dict(events_of(world, view.id))["request.submitted"]["servicenow_approval"]
    assert "was changed at" in reason and "after it was approved at" in reason


# ------------------------------------------------------- tickets linked by sys_id, not number
def test_a_decoy_change_with_a_duplicated_number_revokes_nothing(world, sim, now, backend):
    """Reproduction: requests were linked to tickets by number, which ServiceNow does not keep
    unique; a closed decoy carrying CHG0000001's number revoked alice's grant on the real one."""
    world.sync.run_once()  # the seeded CHG0000001 becomes alice's active grant (ticket-driven)
    cli = world.lc.submit("dave", "web-dev-01", "service-admin", 10 * M, REASON, "CHG0000001").request
    assert cli.state == "active"
    [driven] = [v for v in world.lc.list() if v.ticket == "CHG0000001" and v.requester == "alice"]
    real = change(sim, "CHG0000001")
    with world.lc.store.transaction() as s:
        links = {r.requester: r.ticket_sys_id for r in s.exec(select(RequestRow)).all()}
    assert links == {"alice": real["sys_id"], "dave": real["sys_id"]}
    sim.options.clock = lambda: now + M
    for fields in ({"u_jit_target": "web-dev-01", "u_jit_role": "service-admin"}, {}):  # read by the sync, or not
        sim.insert("change_request", {"number": "CHG0000001", "state": "3", "approval": "approved", **fields})
    assert [c["number"] for c in sim.records("change_request")].count("CHG0000001") == 3
    report = world.sync.run_once()
    assert report.ended == 0
    assert {world.lc.get(driven.id).state, world.lc.get(cli.id).state} == {"active"}
    world.sync.tickets.client.update("change_request", real["sys_id"], {"state": "3"})  # the real one closes
    assert world.sync.run_once().ended == 2
    assert {world.lc.get(driven.id).state, world.lc.get(cli.id).state} == {"revoked"}

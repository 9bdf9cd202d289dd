"""Ticket-driven requests a page at a time (``Lifecycle.submit_from_tickets``), on SQLite and PostgreSQL.

A page is one transaction. What a request made earlier in the page holds counts for the later
ones, as it would had they been submitted one by one; a change is turned into a request once,
even when another engine's sync got there first.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.domain.errors import Refused
from app.lifecycle import OutboxSettings
from app.store import AuditEvent, OutboxRow, RequestRow, audit
from integrations.servicenow.model import ChangeApprovals, Ticket
from policies.decision import TicketFacts
from tests.conftest import T0

H = timedelta(hours=1)
# ServiceNow's record of a dual approval: bob (managers) and carol (system-owners), before T0
APPROVED = ChangeApprovals(approvers=(("bob", T0 - 2 * H), ("carol", T0 - 2 * H)))
_numbers = iter(range(1, 10**6))


def change(person: str = "alice", start=T0 + H, hours: int = 2, role: str = "service-admin",
           sys_id: str | None = None) -> tuple[Ticket, TicketFacts]:
    """An approved, scheduled change carrying JIT fields, and ServiceNow's facts about it."""
    number = f"CHG{next(_numbers):07d}"
    end = start + hours * H
    ticket = Ticket(number=number, table="change_request", sys_id=sys_id or uuid.uuid4().hex, state="-2",
                    approval="approved", type="normal", start=start, end=end, assignee=person, group=None,
                    group_name=None, cmdb_ci="web-prod-01", jit_target="web-prod-01", jit_role=role,
                    updated_on=T0, approvals=APPROVED)
    facts = TicketFacts(number=number, status="found", kind="change", state="-2", approval="approved",
                        start=start, end=end, assignee=person)
    return ticket, facts


def events(store) -> list[tuple[str, int | None, dict]]:
    with store.transaction() as s:
        rows = s.exec(sa.select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
        assert audit.verify(s).ok
    return [(r.action, r.request_id, json.loads(r.details)) for r in rows]


def requests(store) -> list[RequestRow]:
    with store.transaction() as s:
        return s.exec(sa.select(RequestRow).order_by(RequestRow.id)).scalars().all()


def test_a_page_becomes_requests_with_their_events_in_order(lifecycle, store):
    page = [change("alice"), change("bob"), change("dave")]  # bob is not eligible for service-admin
    first, refused, third = lifecycle.submit_from_tickets(page)
    assert isinstance(first, int) and isinstance(third, int)
    assert isinstance(refused, Refused) and refused.rule == "policy" and "privilege_appropriate" in refused.message
    rows = requests(store)
    assert [(r.id, r.requester, r.state, r.approval_model, r.ticket, r.source_ref) for r in rows] == [
        (first, "alice", "approved", "servicenow", page[0][0].number, f"change_request:{page[0][0].sys_id}"),
        (third, "dave", "approved", "servicenow", page[2][0].number, f"change_request:{page[2][0].sys_id}")]
    assert rows[0].starts_at == T0 + H and rows[0].expires_at == T0 + 3 * H and rows[0].scheduled
    assert rows[0].checks and all(c["passed"] for c in rows[0].checks)
    assert [(action, rid) for action, rid, _ in events(store)] == [
        ("request.submitted", first), ("request.approved", first), ("request.refused", None),
        ("request.submitted", third), ("request.approved", third)]
    refusal = events(store)[2][2]
    assert refusal["requester"] == "bob" and refusal["ticket"] == page[1][0].number
    with store.transaction() as s:  # the same actors as a request submitted on its own
        actors = s.exec(sa.select(AuditEvent.actor).order_by(AuditEvent.seq)).scalars().all()
    assert actors == ["servicenow", "policy", "servicenow", "servicenow", "policy"]
    number = page[0][0].number
    assert events(store)[1][2] == {  # who approved in ServiceNow, in which of the tier's groups, when
        "model": "servicenow", "authenticated": "ServiceNow sysapproval_approver and sys_audit",
        "reason": f"approved in ServiceNow by bob, carol: the approval of {number} covers this tier's dual approval",
        "approvers": [{"person": "bob", "groups": ["managers"], "at": (T0 - 2 * H).isoformat()},
                      {"person": "carol", "groups": ["system-owners"], "at": (T0 - 2 * H).isoformat()}]}
    assert lifecycle.get(first).checks == tuple(rows[0].checks)


def test_the_concurrency_limit_counts_requests_made_earlier_in_the_page(lifecycle, store):
    """max_concurrent is 3: alice already holds one, so of three more overlapping changes in one
    page the third is refused; one outside the others' windows is not."""
    [held] = lifecycle.submit_from_tickets([change("alice")])
    page = [change("alice"), change("alice"), change("alice"), change("alice", start=T0 + 10 * H)]
    results = lifecycle.submit_from_tickets(page)
    assert [type(r).__name__ for r in results] == ["int", "int", "Refused", "int"]
    assert "concurrency" in results[2].message and "would hold 4 elevations" in results[2].message
    assert len([r for r in requests(store) if r.state == "approved"]) == 4


def test_separation_of_duties_sees_a_role_granted_earlier_in_the_page(lifecycle):
    results = lifecycle.submit_from_tickets([change("alice"), change("alice", role="log-auditor")])
    assert isinstance(results[0], int) and isinstance(results[1], Refused)
    assert "separation_of_duties" in results[1].message


def test_a_change_read_twice_becomes_one_request(lifecycle, store):
    item = change("alice")
    first, again = lifecycle.submit_from_tickets([item, item])
    assert isinstance(first, int) and again is None
    assert lifecycle.submit_from_tickets([item]) == [None]
    assert len(requests(store)) == 1
    assert [a for a, _, _ in events(store)].count("request.submitted") == 1


def test_a_change_another_engine_turned_into_a_request_first_is_skipped(lifecycle, store, monkeypatch):
    """Another engine's sync inserts the second change between this page's check and its insert:
    the page falls back to one change at a time and nothing is recorded twice. (PostgreSQL only:
    on SQLite the page's BEGIN IMMEDIATE makes the other engine wait, so this cannot happen.)"""
    if store.dialect == "sqlite":
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): no other engine can insert mid-page")
    page = [change("alice"), change("dave"), change("carol")]  # carol: not eligible, refused
    real = lifecycle._ticket_request
    raced: list = []

    def racing(ticket, now):
        if not raced:
            raced.append("racing")
            raced.append(lifecycle.submit_from_tickets([page[1]])[0])  # the other engine, committed first
        return real(ticket, now)

    monkeypatch.setattr(lifecycle, "_ticket_request", racing)
    results = lifecycle.submit_from_tickets(page)
    assert isinstance(raced[1], int) and isinstance(results[0], int)
    assert results[1] is None and isinstance(results[2], Refused)
    assert sorted(r.requester for r in requests(store)) == ["alice", "dave"]
    actions = [(a, d.get("requester")) for a, _, d in events(store)]
    assert [a for a, _ in actions].count("request.submitted") == 2
    assert actions.count(("request.refused", "carol")) == 1  # the failed page's refusal was rolled back


def test_a_page_that_fails_writes_nothing(lifecycle, store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(audit, "append_many", broken)
    with pytest.raises(RuntimeError):
        lifecycle.submit_from_tickets([change("alice"), change("dave")])
    assert requests(store) == [] and events(store) == []
    monkeypatch.undo()
    assert all(isinstance(r, int) for r in lifecycle.submit_from_tickets([change("alice"), change("dave")]))


def test_bad_changes_in_a_page_are_refused_each_with_its_reason(lifecycle, store):
    no_role = change("alice")
    no_role = (Ticket(**{**no_role[0].__dict__, "jit_role": None}), no_role[1])
    bad_id = change("alice", sys_id="not-hex")
    ended = change("alice", start=T0 - 3 * H, hours=1)
    good = change("dave")
    results = lifecycle.submit_from_tickets([no_role, bad_id, ended, good])
    assert [r.rule if isinstance(r, Refused) else "ok" for r in results] == ["ticket", "ticket", "change_window", "ok"]
    assert [r.requester for r in requests(store)] == ["dave"]


def test_a_page_owes_its_work_notes_and_webhooks_once(lifecycle, store):
    """The notes and webhooks a page's events owe go into the outbox with the page, pending."""
    lifecycle.outbox = OutboxSettings(servicenow=True, webhook=True, create_change=False)
    page = [change("alice"), change("bob")]  # bob is not eligible: refused, noted on his ticket
    lifecycle.submit_from_tickets(page)
    with store.transaction() as s:
        owed = s.exec(sa.select(OutboxRow).order_by(OutboxRow.id)).scalars().all()
    assert [(o.channel, o.ticket, o.state, o.attempts, o.next_attempt_at) for o in owed] == [
        ("servicenow", page[1][0].number, "pending", 0, T0)]
    assert "was refused by policy. Failing checks: privilege_appropriate" in owed[0].payload["text"]
    assert owed[0].payload["marker"].startswith("[jit:ev-")


@pytest.mark.parametrize("approvals,counts,why", [
    (ChangeApprovals(approvers=(("bob", None), ("carol", T0 - 2 * H)), edits=(("end_date", T0 - 3 * H),)), False,
     "ServiceNow keeps no audit record of when bob approved"),  # edited: when each approved matters
    (ChangeApprovals(approvers=(("bob", None), ("carol", None))), True, None),  # never edited: it does not
    (ChangeApprovals(approvers=APPROVED.approvers, edits=(("u_jit_role", T0 - 2 * H),)), False,
     "u_jit_role was changed at"),  # the same second as the approval: it may have come after it
    (ChangeApprovals(approvers=APPROVED.approvers, edits=(("u_jit_role", T0 - 3 * H),)), True, None),  # before
    (ChangeApprovals(approvers=(("carol", T0 - 2 * H), ("carol", T0 - H))), False, "one person counts once"),
])
def test_servicenow_approval_binds_to_what_was_approved(lifecycle, store, approvals, counts, why):
    ticket, facts = change()
    [rid] = lifecycle.submit_from_tickets([(replace(ticket, approvals=approvals), facts)])
    assert lifecycle.get(rid).state == ("approved" if counts else "pending")
    submitted = next(d for action, r, d in events(store) if action == "request.submitted" and r == rid)
    assert (why is None) == ("servicenow_approval" not in submitted)
    assert why is None or why in submitted["servicenow_approval"]

"""What every use-case shares: the collaborators, loading and viewing a request, the context the
policy weighs, the audit of each decision (with the messages it owes), and the state check that
tells a lost race (``Conflict``, exit 4) from a refused action."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlmodel import Session, select

from app.clock import Clock
from app.config import EngineSettings
from app.domain.errors import Conflict, Refused
from app.domain.states import HOLDING_STATES, NEXT_STATES
from app.domain.views import ApprovalView, GrantView, RequestView
from app.identity import Directory
from app.lifecycle import activity, messages
from app.lifecycle.ticket_facts import TicketGateway
from app.store import ApprovalRow, GrantRow, OutboxRow, RequestRow, ReviewRow, Store, audit, insert_rows
from app.store import grants as grant_store
from app.store import requests as request_store
from app.store.leases import Leases
from integrations.base import Backend, BackendError, GrantSpec
from policies import authority
from policies.decision import AccessRequest, Context, Decision, Holding, TicketFacts
from policies.evaluate import evaluate
from policies.model import PolicySet

log = logging.getLogger("jit.lifecycle")
AUTO_APPROVED = "self-service within the auto-approval threshold"


@dataclass(frozen=True)
class OutboxSettings:
    """Which messages events owe: notes to ServiceNow, webhooks, change records for ticketless requests."""

    servicenow: bool = False
    webhook: bool = False
    create_change: bool = False


def linked_sys_id(facts: TicketFacts | None) -> str | None:
    """The sys_id a request is linked to its ticket by: ServiceNow's, when it found the ticket."""
    return facts.sys_id or None if facts is not None and facts.status == "found" else None


def checks_of(decision: Decision) -> list[dict[str, Any]]:
    """The decision's checks as the request row and the audit keep them."""
    return [{"name": c.name, "passed": c.passed, "message": c.message} for c in decision.checks]


def row_values(row: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """A request read as a result row (``select(*RequestRow.__table__.c)``), with ``changes``
    applied: its new values, as ``_record_many`` shows them to the outbox."""
    return {**row._mapping, **changes}


class LifecycleBase:

    def __init__(self, store: Store, policy: PolicySet, directory: Directory,
                 backends: Mapping[str, Backend], clock: Clock, settings: EngineSettings | None = None, *,
                 tickets: TicketGateway | None = None, outbox: OutboxSettings | None = None,
                 owner: str | None = None) -> None:
        self.store = store
        self.tickets = tickets
        self.outbox = outbox or OutboxSettings()
        self.policy = policy
        self.directory = directory
        self.backends = dict(backends)
        self.clock = clock
        self.settings = settings or EngineSettings()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"  # whose claims: host:pid
        self.leases = Leases(store, self.owner, self.settings.lease, clock)

    def get(self, request_id: int) -> RequestView:
        with self.store.transaction() as s:
            return self._view(s, self._load(s, request_id))

    def list(self, *, state: str | None = None, requester: str | None = None,
             limit: int = 500, before: int | None = None) -> list[RequestView]:
        """Newest first; ``before`` an id pages back from there."""
        with self.store.transaction() as s:
            q = select(RequestRow).order_by(RequestRow.id.desc()).limit(limit)
            if before is not None:
                q = q.where(RequestRow.id < before)
            if state:
                q = q.where(RequestRow.state == state)
            if requester:
                q = q.where(RequestRow.requester == requester)
            return [self._view(s, r) for r in s.exec(q).all()]

    def _view(self, s: Session, row: RequestRow) -> RequestView:
        approvals = s.exec(select(ApprovalRow).where(ApprovalRow.request_id == row.id)
                           .order_by(ApprovalRow.id)).all()
        grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
        review = s.exec(select(ReviewRow).where(ReviewRow.request_id == row.id)).first()
        return RequestView(
            id=row.id, kind=row.kind, state=row.state, requester=row.requester, target=row.target,
            role=row.role, environment=row.environment, tier=row.tier, reason=row.reason, ticket=row.ticket,
            approval_model=row.approval_model, approver_groups=tuple(row.approver_groups),
            starts_at=row.starts_at, expires_at=row.expires_at, created_at=row.created_at,
            escalated_at=row.escalated_at, closed_by=row.closed_by, closed_reason=row.closed_reason,
            checks=tuple(row.checks), version=row.version,
            approvals=tuple(ApprovalView(a.approver, tuple(a.groups), a.comment, a.at) for a in approvals),
            grant=GrantView(grant.id, grant.status, grant.backend, grant.ref, grant.starts_at, grant.expires_at,
                            grant.applied_at, grant.revoked_at, grant.last_error) if grant else None,
            review=({"state": review.state, "reviewer": review.reviewer, "comment": review.comment,
                     "reviewed_at": review.reviewed_at, "cleared_by": review.cleared_by,
                     "cleared_at": review.cleared_at, "clear_comment": review.clear_comment}
                    if review else None),
        )

    def _context(self, s: Session, person: str, exclude: int | None = None,
                 counting: Iterable[str] = HOLDING_STATES) -> Context:
        """The requester's groups, their requests in ``counting`` states (``exclude`` aside) as
        holdings, and their open bypass reviews. A new request counts the pending ones too
        (``OPEN_STATES``): what is queued cannot add up past the limits once approved. The approval
        that completes a request, its activation and an extension count what is approved or
        active: of two queued requests that conflict, the first to be approved wins."""
        rows = s.exec(select(RequestRow.id, RequestRow.target, RequestRow.role, RequestRow.starts_at,
                             RequestRow.expires_at).where(RequestRow.requester == person,
                                                          RequestRow.state.in_(tuple(counting)))).all()
        holdings = tuple(Holding(r.target, r.role, r.starts_at, r.expires_at) for r in rows if r.id != exclude)
        open_reviews = s.exec(select(sa.func.count()).select_from(ReviewRow)
                              .where(ReviewRow.bypasser == person, ReviewRow.state == "open")).one()
        violations = s.exec(select(ReviewRow.request_id).where(
            ReviewRow.bypasser == person, ReviewRow.state == "violation", ReviewRow.cleared_at.is_(None))
            .order_by(ReviewRow.request_id)).all()
        return Context(groups=self.directory.groups_of(person), holdings=holdings,
                       unreviewed_bypasses=int(open_reviews), uncleared_violations=tuple(violations))

    def _record(self, s: Session, *, at: datetime, actor: str, action: str, request_id: int | None = None,
                **details: Any) -> None:
        """Append the audit event and, in the same transaction, the messages it owes the outside
        (and, for a grant's outcome, the activity log's line once it commits)."""
        event = audit.append(s, at=at, actor=actor, action=action, request_id=request_id, **details)
        if activity.wanted(action, details):
            activity.after_commit(s, action, actor, request_id,
                                  s.get(RequestRow, request_id) if request_id is not None else None, details)
        o = self.outbox
        if o.servicenow or o.webhook:
            row = s.get(RequestRow, request_id) if request_id is not None else None
            for item in messages.entries(event, row, details, servicenow=o.servicenow, webhook=o.webhook,
                                       create_change=o.create_change):
                s.add(OutboxRow(**item))

    def _record_many(self, s: Session, at: datetime,
                     events: Iterable[tuple[str, str, dict | None, int | None, dict[str, Any]]]) -> None:
        """``_record`` for many events ``(actor, action, the request's new row values or None,
        request id, details)``: one INSERT of events and one of the messages they owe, without
        loading the rows back."""
        events = list(events)
        written = audit.append_many(s, ((at, actor, action, rid, d) for actor, action, _, rid, d in events))
        for actor, action, row, rid, d in events:
            if activity.wanted(action, d):
                activity.after_commit(s, action, actor, rid, row, d)
        o = self.outbox
        if o.servicenow or o.webhook:
            views = {id(row): SimpleNamespace(**row) for _, _, row, _, _ in events if row}  # one per row
            owed = [item for event, (_, _, row, _, details) in zip(written, events)
                    for item in messages.entries(event, views[id(row)] if row else None, details,
                                               servicenow=o.servicenow, webhook=o.webhook,
                                               create_change=o.create_change)]
            insert_rows(s, OutboxRow.__table__, [{**item, "state": "pending", "attempts": 0} for item in owed])

    @staticmethod
    def _as_it_starts(row: Any, now: datetime) -> AccessRequest:
        """The request a row asks for, as it would start now: a scheduled one over its own window,
        another from now, for its duration."""
        start = row.starts_at if row.scheduled else max(now, row.starts_at)
        return AccessRequest(row.requester, row.target, row.role, start, timedelta(seconds=row.duration_s),
                             row.reason, row.ticket)

    def _recheck(self, s: Session, row: Any, req: AccessRequest, facts: TicketFacts | None) -> Decision:
        """The whole policy again for a request about to be approved, activated or extended
        (``req``: what it asks for now): the person's groups as the directory has them now, their
        other approved and active requests, the hours and the ticket as they are for its period.
        The caller holds the person's lock (``lock_people``) where the outcome adds a holding."""
        return evaluate(self.policy, req, replace(self._context(s, row.requester, exclude=row.id), ticket=facts))

    @staticmethod
    def _servicenow_down(decision: Decision, facts: TicketFacts | None) -> bool:
        """Whether the decision fails only because ServiceNow did not answer: the step waits and
        is tried again, rather than refusing a request for an outage."""
        return (facts is not None and facts.status == "unavailable"
                and all(c.name == "ticket_exists" for c in decision.failures))

    def _policy_refusal(self, row: Any, stage: str, decision: Decision,
                        **details: Any) -> tuple[str, dict[str, Any], tuple[str, str, dict[str, Any]]]:
        """A request refused by the policy when it was looked at again (``stage``: approval or
        activation): its new state (a pending one denied, an approved one revoked before its
        start, both closed by "policy"), the row's changes and the ``request.refused`` event,
        with the failing checks (ServiceNow hears of it through the ticket's work note)."""
        state = "denied" if row.state == "pending" else "revoked"
        reason = f"refused by policy at {stage}: {decision.refusal()}"
        changes = {"state": state, "closed_by": "policy", "closed_reason": reason, "checks": checks_of(decision)}
        event = ("policy", "request.refused", dict(stage=stage, state=state, target=row.target, role=row.role,
                                                   requester=row.requester, ticket=row.ticket,
                                                   checks=checks_of(decision), **details))
        return reason, changes, event

    def _ticket_facts(self, number: str | None, start: datetime, end: datetime) -> TicketFacts | None:
        """ServiceNow's facts for the ticket (fetched outside any transaction), when configured."""
        if self.tickets is None or not number:
            return None
        return self.tickets.facts(number, start, end)

    def _operators(self) -> str:
        return authority.operators(self.policy)

    def _load(self, s: Session, request_id: int) -> RequestRow:
        return request_store.load(s, request_id)

    @staticmethod
    def _expect(row: RequestRow, states: str | Iterable[str], action: str) -> None:
        states = (states,) if isinstance(states, str) else tuple(states)
        if row.state in states:
            return
        if any(row.state in NEXT_STATES.get(state, ()) for state in states):
            raise Conflict("state", f"cannot {action} REQ-{row.id}: it is {row.state} now, not {' or '.join(states)}: "
                                    "someone else changed it first; nothing was done")
        raise Refused("state", f"cannot {action} REQ-{row.id}: it is {row.state}, not {' or '.join(states)}")

    @staticmethod
    def _no_activation_running(s: Session, row: RequestRow) -> None:
        if s.exec(select(GrantRow.id).where(GrantRow.request_id == row.id)).first() is not None:
            raise Conflict("state", f"REQ-{row.id} is being activated right now; try again in a moment")

    def _spec(self, g: GrantRow) -> GrantSpec:
        return grant_store.spec_of(g)

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise BackendError(f"no backend {name!r} is configured", transient=False)
        return backend

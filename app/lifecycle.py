"""The use-cases: submit, approve, deny, cancel, activate, extend, release, revoke, expire,
escalate, lapse, bypass, review; the state machine; the audit of every decision.

Request: pending -> approved -> active -> expired | released | revoked;
         pending -> denied | cancelled | lapsed;  approved -> cancelled | lapsed | revoked;
         approved -> failed (the backend refused after retries).  (``NEXT_STATES``)
Grant:   applying -> active -> revoking -> revoked;  applying -> failed.

Every transition is one transaction with an optimistic version check: the UPDATE names the
version it read, so of two concurrent transitions exactly one changes the row. The grant's
intent is committed before the backend is called and its outcome after, so a crash in
between is finished by ``recover()`` on the next pass.

One winner per race, by construction: the approval that completes a request (and a submit or
bypass approved at once) claims its activation, the grant row in 'applying', in the same
transaction, so a cancel, deny or revoke racing it finds either the request still pending (and
then exactly one of the two version-checked UPDATEs succeeds) or an activation running; the
loser gets ``Conflict`` (exit 4) with nothing done. A grant's claim is kept by ``Leases`` while
its backend call runs; an outcome is written only while the claim is still this process's.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from app import audit, failpoints, outbox
from app.clock import Clock
from app.config import PERSON, EngineSettings
from app.identity import Directory
from app.leases import Leases
from app.tickets import TicketGateway
from app.store import ApprovalRow, GrantRow, OutboxRow, RequestRow, ReviewRow, Store, among, insert_rows, next_ids
from integrations.servicenow.tickets import SYS_ID_RE, Ticket
from integrations.base import Backend, BackendError, GrantSpec, InvalidGrant
from policies.approvals import Approver, judge
from policies.decision import AccessRequest, Context, Decision, Holding, TicketFacts
from policies.durations import format_duration
from policies.evaluate import evaluate, evaluate_bypass
from policies.model import PolicySet

log = logging.getLogger("jit.lifecycle")

OPEN_STATES = ("pending", "approved", "active")
HOLDING_STATES = ("approved", "active")
FINAL_STATES = ("expired", "released", "revoked", "denied", "cancelled", "lapsed", "failed")
# Where each open state may go next. An action finding the request moved one step on from a state
# it accepts lost a race (or acted on what it saw before someone else did): Conflict, exit 4.
NEXT_STATES = {"pending": ("approved", "denied", "cancelled", "lapsed"),
               "approved": ("active", "cancelled", "lapsed", "revoked", "failed"),
               "active": ("expired", "released", "revoked")}
TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_TEXT = 2000
AUTO_APPROVED = "self-service within the auto-approval threshold"
MAX_LEAD = timedelta(days=366)  # how far ahead a request may be scheduled
MAX_ID = 2**31 - 1  # request ids are INTEGER keys: PostgreSQL refuses to even compare a larger one
# Unicode's Cc (C0, DEL, C1) but tab, Zl, Zp, and the bidi embeddings, overrides and isolates
CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SURROGATE_RE = re.compile("[\ud800-\udfff]")  # Unicode's Cs


class Refused(Exception):
    """A rule refused the action. ``rule`` names the check or rule, ``message`` says why."""

    exit_code = 1

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


class NotFound(Refused):
    exit_code = 3


class Conflict(Refused):
    """Someone else changed the request first; nothing was done."""

    exit_code = 4


@dataclass(frozen=True)
class ApprovalView:
    approver: str
    groups: tuple[str, ...]
    comment: str
    at: datetime


@dataclass(frozen=True)
class GrantView:
    id: int
    status: str
    backend: str
    ref: str | None
    starts_at: datetime
    expires_at: datetime
    applied_at: datetime | None
    revoked_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class RequestView:
    """A snapshot of one request, for the CLI, the console and the tests."""

    id: int
    kind: str
    state: str
    requester: str
    target: str
    role: str
    environment: str | None
    tier: str | None
    reason: str
    ticket: str | None
    approval_model: str
    approver_groups: tuple[str, ...]
    starts_at: datetime
    expires_at: datetime
    created_at: datetime
    escalated_at: datetime | None
    closed_by: str | None
    closed_reason: str | None
    checks: tuple[dict, ...]
    approvals: tuple[ApprovalView, ...] = ()
    grant: GrantView | None = None
    review: dict | None = None
    version: int = 1

    @property
    def label(self) -> str:
        return f"REQ-{self.id}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class OutboxSettings:
    """Which messages events owe: notes to ServiceNow, webhooks, change records for ticketless requests."""

    servicenow: bool = False
    webhook: bool = False
    create_change: bool = False


@dataclass
class Outcome:
    """What an action did, for the caller to print."""

    request: RequestView
    message: str
    notes: list[str] = field(default_factory=list)


def _committed(obj: Any, values: Mapping[str, Any]) -> None:
    """Show on ``obj`` what an UPDATE statement just wrote, without marking it to be written again.

    (The ORM's own synchronisation evaluates every object in the session for every UPDATE,
    which made a batch of N transitions cost O(N^2).)"""
    for key, value in values.items():
        set_committed_value(obj, key, value)


def _source_ref(ticket: Ticket) -> str:
    """A ticket-driven request's unique reference to the change it came from."""
    return f"change_request:{ticket.sys_id}"


def _checks(decision: Decision) -> list[dict[str, Any]]:
    return [{"name": c.name, "passed": c.passed, "message": c.message} for c in decision.checks]


def _check_text(field_name: str, value: str | None, *, required: bool, limit: int = MAX_TEXT) -> str | None:
    if value is None or not value.strip():
        if required:
            raise Refused(field_name, "is required")
        return None
    if len(value) > limit:
        raise Refused(field_name, f"is longer than {limit} characters")
    if CONTROL_RE.search(value):
        raise Refused(field_name, "must not contain control characters, line breaks or bidi overrides")
    if SURROGATE_RE.search(value):  # undecodable bytes from argv; not storable as UTF-8
        raise Refused(field_name, "must be valid Unicode text (it holds an unpaired surrogate)")
    return value.strip()


def _check_names(target: str, role: str) -> None:
    if not TARGET_RE.fullmatch(target or ""):
        raise Refused("target", f"{target!r} is not a valid target name (letters, digits, '.' and '-')")
    if not ROLE_RE.fullmatch(role or ""):
        raise Refused("role", f"{role!r} is not a valid role name (lower-case letters, digits and '-')")


class Lifecycle:
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

    # ----------------------------------------------------------------- queries
    def get(self, request_id: int) -> RequestView:
        with self.store.transaction() as s:
            return self._view(s, self._load(s, request_id))

    def list(self, *, state: str | None = None, requester: str | None = None,
             limit: int = 500) -> list[RequestView]:
        with self.store.transaction() as s:
            q = select(RequestRow).order_by(RequestRow.id.desc()).limit(limit)
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
                     "reviewed_at": review.reviewed_at} if review else None),
        )

    # ------------------------------------------------------------ evaluation
    def _context(self, s: Session, person: str, exclude: int | None = None) -> Context:
        rows = s.exec(select(RequestRow).where(RequestRow.requester == person,
                                               RequestRow.state.in_(HOLDING_STATES))).all()
        holdings = tuple(Holding(r.target, r.role, r.starts_at, r.expires_at) for r in rows if r.id != exclude)
        open_reviews = s.exec(select(sa.func.count()).select_from(ReviewRow)
                              .where(ReviewRow.bypasser == person, ReviewRow.state == "open")).one()
        return Context(groups=self.directory.groups_of(person), holdings=holdings,
                       unreviewed_bypasses=int(open_reviews))

    def _resolve_start(self, start: datetime | None) -> tuple[datetime, bool]:
        now = self.clock()
        if start is None:
            return now, False
        if start.tzinfo is None:
            raise Refused("start", "needs a UTC offset, e.g. 2026-11-24T09:00:00Z")
        try:
            start = start.astimezone(now.tzinfo)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 lies before the first representable UTC instant
            raise Refused("start", "is out of the representable date range") from None
        if start < now - timedelta(minutes=1):
            raise Refused("start", f"{start:%Y-%m-%d %H:%M} UTC is in the past")
        if start > now + MAX_LEAD:
            raise Refused("start", f"{start:%Y-%m-%d} is more than a year ahead")
        return max(start, now), True

    def _access_request(self, person: str, target: str, role: str, duration: timedelta, reason: str,
                        ticket: str | None, start: datetime | None) -> tuple[AccessRequest, bool]:
        if not re.fullmatch(PERSON, person or ""):
            raise Refused("requester", f"{person!r} is not a valid account name")
        _check_names(target, role)
        reason = _check_text("reason", reason, required=True) or ""
        ticket = _check_text("ticket", ticket, required=False, limit=64)
        if duration <= timedelta(0):
            raise Refused("duration", "must be longer than zero")
        starts_at, scheduled = self._resolve_start(start)
        return AccessRequest(person, target, role, starts_at, duration, reason, ticket), scheduled

    def preview(self, person: str, target: str, role: str, duration: timedelta, reason: str = "(preview only)",
                ticket: str | None = None, start: datetime | None = None) -> Decision:
        """The whole decision, without submitting anything."""
        req, _ = self._access_request(person, target, role, duration, reason, ticket, start)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        with self.store.transaction() as s:
            return evaluate(self.policy, req, replace(self._context(s, person), ticket=facts))

    # ------------------------------------------------------------- use-cases
    def submit(self, person: str, target: str, role: str, duration: timedelta, reason: str,
               ticket: str | None = None, start: datetime | None = None) -> Outcome:
        """Evaluate and record a request; apply it if approved and due."""
        req, scheduled = self._access_request(person, target, role, duration, reason, ticket, start)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        now = self.clock()
        with self.store.transaction() as s:
            ctx = self._context(s, person)
            decision = evaluate(self.policy, req, replace(ctx, ticket=facts))
            checks = _checks(decision)
            approved = decision.auto_approved
            if not decision.allowed:
                self._record(s, at=now, actor=person, action="request.refused", target=target, role=role,
                             requester=person, duration=format_duration(duration), ticket=req.ticket, checks=checks)
                refused = Refused("policy", decision.refusal())
            else:
                refused = None
                model = decision.approval
                row = RequestRow(
                    requester=person, target=target, role=role, environment=decision.environment,
                    tier=decision.tier, backend=decision.backend, params=decision.params, reason=req.reason,
                    ticket=req.ticket, state="approved" if approved else "pending",
                    approval_model=model, approver_groups=list(decision.approver_groups),
                    checks=checks, scheduled=scheduled, duration_s=int(duration.total_seconds()),
                    starts_at=req.starts_at, expires_at=req.expires_at, created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                self._record(s, at=now, actor=person, action="request.submitted", request_id=row.id,
                             target=target, role=role, duration=format_duration(duration), ticket=req.ticket,
                             approval=decision.approval, checks=checks)
                grant_id = None
                if approved:
                    self._record(s, at=now, actor="policy", action="request.approved", request_id=row.id,
                                 model=model, reason=AUTO_APPROVED)
                    grant_id = self._intend_apply(s, row, now)
                request_id = row.id
        if refused:  # raised after the commit: the refusal itself stays audited
            raise refused
        notes = []
        if approved:
            notes.append(self._apply(grant_id) if grant_id is not None else  # scheduled: the engine applies it
                         f"REQ-{request_id} starts at {req.starts_at:%Y-%m-%d %H:%M} UTC")
            message = f"REQ-{request_id} approved at once ({model})"
        else:
            message = (f"REQ-{request_id} submitted; needs {decision.approval} approval from "
                       f"{' and '.join(decision.approver_groups)}")
        return Outcome(self.get(request_id), message, [n for n in notes if n])


    def submit_from_tickets(self, items: Sequence[tuple[Ticket, TicketFacts]]) -> list[int | Refused | None]:
        """Ticket-driven elevation for a page of changes at once: each approved change carrying JIT
        fields becomes a request scheduled over its change window, clipped to policy.

        Per change, in order: the new request's id; None when that change was already turned into
        a request; or the Refused (a policy refusal is audited, as for any request). One transaction
        for the page: one query for the changes already handled and one for the requesters'
        holdings, which then also count the requests made earlier in the same page."""
        results: list[int | Refused | None] = [None] * len(items)
        due: list[int] = []
        try:
            with self.store.transaction() as s:
                due = self._submit_tickets(s, items, results)
        except IntegrityError:  # another engine's sync turned one of these changes into a request first?
            if len(items) > 1:
                return [self.submit_from_tickets([item])[0] for item in items]
            with self.store.transaction() as s:
                source = _source_ref(items[0][0])
                if s.exec(select(RequestRow.id).where(RequestRow.source_ref == source)).first() is None:
                    raise  # some other constraint: not a race to swallow
            return [None]
        for request_id in due:  # approved and already started: apply now
            self._activate_if_due(request_id)
        return results

    def _ticket_request(self, ticket: Ticket, now: datetime) -> tuple[AccessRequest, bool]:
        """The request a change asks for, and whether ServiceNow's approval counts for its tier."""
        if not (ticket.assignee and ticket.jit_target and ticket.jit_role):
            raise Refused("ticket", f"{ticket.number} needs an assignee and both JIT fields")
        if ticket.start is None or ticket.end is None:
            raise Refused("change_window", f"{ticket.number} has no planned start and end dates")
        start, end = max(now, ticket.start), ticket.end
        if end <= start:
            raise Refused("change_window", f"the window of {ticket.number} ended at {end:%Y-%m-%d %H:%M} UTC")
        target = self.policy.targets.get(ticket.jit_target)
        env = self.policy.environments.get(target.environment) if target else None
        reason = f"ServiceNow change {ticket.number}: work inside its approved window"
        req, _ = self._access_request(ticket.assignee, ticket.jit_target, ticket.jit_role, end - start, reason,
                                      ticket.number, start)
        window = end - req.starts_at  # from the start as resolved, to the end of the change
        duration = min(window, env.max_duration) if env else window  # clipped to policy
        if duration != req.duration:
            req = replace(req, duration=duration)
        tier = self.policy.tiers.get(target.tier) if target else None
        return req, bool(tier and tier.servicenow_approval_counts)

    def _submit_tickets(self, s: Session, items: Sequence[tuple[Ticket, TicketFacts]],
                        results: list[int | Refused | None]) -> list[int]:
        """The page's decisions and rows in ``s``; fills ``results``; returns the requests due now."""
        now = self.clock()
        sources = {}  # index -> source_ref
        for i, (ticket, _) in enumerate(items):
            if SYS_ID_RE.fullmatch(ticket.sys_id or ""):  # it becomes the unique source_ref: 32 hex digits only
                sources[i] = _source_ref(ticket)
            else:
                results[i] = Refused("ticket", f"{ticket.number!r} has an invalid sys_id {ticket.sys_id[:40]!r}")
        handled = set(s.exec(select(RequestRow.source_ref)
                             .where(among(s, RequestRow.source_ref, set(sources.values())))).all()) if sources else set()
        wanted = []  # (index, request, servicenow approves, facts)
        for i, source in sources.items():
            if source in handled:
                continue  # this change was turned into a request before (or earlier in this page)
            handled.add(source)
            try:
                wanted.append((i, *self._ticket_request(items[i][0], now), items[i][1]))
            except Refused as exc:
                results[i] = exc
        people = {req.requester for _, req, _, _ in wanted}
        holdings: dict[str, list[Holding]] = {p: [] for p in people}
        if people:  # (open bypass reviews are not read: only evaluate_bypass() weighs them)
            for r in s.exec(select(RequestRow.requester, RequestRow.target, RequestRow.role, RequestRow.starts_at,
                                   RequestRow.expires_at).where(among(s, RequestRow.requester, people),
                                                                RequestRow.state.in_(HOLDING_STATES))):
                holdings[r.requester].append(Holding(r.target, r.role, r.starts_at, r.expires_at))
        decided, rows = [], []
        for i, req, servicenow_approves, facts in wanted:
            person = req.requester
            ctx = Context(groups=self.directory.groups_of(person), holdings=tuple(holdings[person]), ticket=facts)
            decision = evaluate(self.policy, req, ctx)
            allowed = decision.allowed
            approved = allowed and (servicenow_approves or decision.auto_approved)
            row = None
            if allowed:
                row = dict(
                    kind="request", requester=person, target=req.target, role=req.role,
                    environment=decision.environment, tier=decision.tier, backend=decision.backend,
                    params=decision.params, reason=req.reason, ticket=req.ticket,
                    state="approved" if approved else "pending", source_ref=sources[i],
                    approval_model="servicenow" if approved and not decision.auto_approved else decision.approval,
                    approver_groups=list(decision.approver_groups), checks=audit.canonical_plain(_checks(decision)),
                    scheduled=True,
                    duration_s=int(req.duration.total_seconds()), starts_at=req.starts_at,
                    expires_at=req.expires_at, created_at=now, updated_at=now, escalated_at=None,
                    closed_by=None, closed_reason=None, version=1)
                rows.append(row)
                if approved:  # later requests in this page see it, as they would see it committed
                    holdings[person].append(Holding(req.target, req.role, req.starts_at, req.expires_at))
            decided.append((i, req, decision, approved, row))
        if rows:  # ids first, then one insert (RETURNING over many rows is slow on psycopg)
            for row, request_id in zip(rows, next_ids(s, RequestRow.__table__, len(rows))):
                row["id"] = request_id
            insert_rows(s, RequestRow.__table__, rows)
        events = []
        for i, req, decision, approved, row in decided:
            duration = format_duration(req.duration)
            if row is None:
                events.append(("servicenow", "request.refused", None, None, dict(
                    target=req.target, role=req.role, requester=req.requester, duration=duration,
                    ticket=req.ticket, checks=_checks(decision))))
                results[i] = Refused("policy", decision.refusal())
                continue
            events.append(("servicenow", "request.submitted", row, row["id"], dict(
                target=req.target, role=req.role, duration=duration, ticket=req.ticket,
                approval=decision.approval, checks=row["checks"])))
            if approved:
                why = (AUTO_APPROVED if decision.auto_approved
                       else f"the approved change {req.ticket} counts as the approval for this tier")
                events.append(("policy", "request.approved", row, row["id"], dict(model=row["approval_model"],
                                                                                  reason=why)))
            results[i] = row["id"]
        self._record_many(s, now, events)
        return [row["id"] for _, req, _, approved, row in decided if approved and req.starts_at <= now]

    def approve(self, actor: str, request_id: int, comment: str = "") -> Outcome:
        comment = _check_text("comment", comment, required=False) or ""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, "pending", "approve")
            prior = [Approver(a.approver, frozenset(a.groups)) for a in
                     s.exec(select(ApprovalRow).where(ApprovalRow.request_id == row.id)).all()]
            me = Approver(actor, self.directory.groups_of(actor))
            verdict = judge(row.approval_model, tuple(row.approver_groups), row.requester, prior, me)
            if not verdict.allowed:
                self._record(s, at=now, actor=actor, action="approval.refused", request_id=row.id,
                             reason=verdict.message)
                refusal = Refused("approval", verdict.message)
            else:
                refusal = None
                groups = sorted(me.groups & set(row.approver_groups))
                self._bump(s, row, "approved" if verdict.complete else "pending", now)
                s.add(ApprovalRow(request_id=row.id, approver=actor, groups=groups, comment=comment, at=now))
                self._record(s, at=now, actor=actor, action="approval.given", request_id=row.id,
                             groups=groups, comment=comment, complete=verdict.complete)
                grant_id = None
                if verdict.complete:  # the approval and the activation it causes: one transaction
                    self._record(s, at=now, actor=actor, action="request.approved", request_id=row.id,
                                 model=row.approval_model)
                    grant_id = self._intend_apply(s, row, now)
                starts_at = row.starts_at
        if refusal:
            raise refusal
        notes = []
        if grant_id is not None:
            notes.append(self._apply(grant_id))
        elif verdict.complete:
            notes.append(f"REQ-{request_id} starts at {starts_at:%Y-%m-%d %H:%M} UTC")
        return Outcome(self.get(request_id), f"REQ-{request_id}: {verdict.message}", [n for n in notes if n])

    def deny(self, actor: str, request_id: int, reason: str) -> Outcome:
        reason = _check_text("reason", reason, required=True) or ""

        def allowed(row: RequestRow) -> None:
            if actor == row.requester:
                raise Refused("deny", "a requester cancels their own request ('jit cancel'), not denies it")
            if not (self.directory.groups_of(actor) & (set(row.approver_groups) | {self._operators()})):
                raise Refused("deny", f"{actor} is neither an approver ({', '.join(row.approver_groups)}) "
                                      f"nor a security operator")
        return self._close(actor, request_id, ("pending",), "denied", "deny", reason, allowed)

    def cancel(self, actor: str, request_id: int, reason: str = "cancelled by requester") -> Outcome:
        def allowed(row: RequestRow) -> None:
            if actor != row.requester:
                raise Refused("cancel", f"only the requester ({row.requester}) can cancel REQ-{row.id}")
        return self._close(actor, request_id, ("pending", "approved"), "cancelled", "cancel", reason, allowed)

    def release(self, actor: str, request_id: int) -> Outcome:
        """Task done: de-elevate now."""
        def allowed(row: RequestRow) -> None:
            if actor != row.requester:
                raise Refused("release", f"only {row.requester} can release REQ-{row.id}; operators revoke")
        return self._end(actor, request_id, "released", "release", "task completed", allowed)

    def revoke(self, actor: str, request_id: int, reason: str) -> Outcome:
        reason = _check_text("reason", reason, required=True) or ""

        def allowed(row: RequestRow) -> None:
            if not (self.directory.groups_of(actor) & {self._operators(), *row.approver_groups}):
                raise Refused("revoke", f"{actor} is not a security operator or an approver of this tier")
        return self._end(actor, request_id, "revoked", "revoke", reason, allowed)

    def extend(self, actor: str, request_id: int, by: timedelta, reason: str) -> Outcome:
        """Extend an active or approved request, through every policy check again."""
        reason = _check_text("reason", reason, required=True) or ""
        if by <= timedelta(0):
            raise Refused("by", "must be longer than zero")
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, ("approved", "active"), "extend")
            if row.kind == "bypass":
                raise Refused("extend", "an emergency bypass cannot be extended; request access normally")
            new_expiry = row.expires_at + by
            req = AccessRequest(row.requester, row.target, row.role, row.starts_at, new_expiry - row.starts_at,
                                reason, row.ticket)
            decision = evaluate(self.policy, req, self._context(s, row.requester, exclude=row.id))
            if not decision.allowed:
                self._record(s, at=now, actor=actor, action="extension.refused", request_id=row.id,
                             by=format_duration(by), checks=_checks(decision))
                refusal = Refused("policy", decision.refusal())
            elif actor == row.requester and not decision.auto_approved:
                refusal = Refused("approval", f"extending to {format_duration(req.duration)} needs "
                                  f"{decision.approval} approval: an approver from "
                                  f"{' or '.join(decision.approver_groups)} must extend it")
            elif actor != row.requester and not (self.directory.groups_of(actor) & set(decision.approver_groups)):
                refusal = Refused("approval", f"{actor} is not an approver for this request "
                                  f"({', '.join(decision.approver_groups)})")
            else:
                refusal = None
                self._bump(s, row, row.state, now, expires_at=new_expiry, duration_s=row.duration_s + int(by.total_seconds()))
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if grant is not None and grant.status == "active":
                    grant.expires_at, grant.version, grant.updated_at = new_expiry, grant.version + 1, now
                    s.add(grant)
                self._record(s, at=now, actor=actor, action="request.extended", request_id=row.id,
                             by=format_duration(by), expires_at=new_expiry.isoformat(), reason=reason,
                             checks=_checks(decision))
                grant_id = grant.id if grant is not None and grant.status == "active" else None
        if refusal:
            raise refusal
        notes = []
        if grant_id is not None:
            notes.append(self._reapply(grant_id))
        return Outcome(self.get(request_id), f"REQ-{request_id} extended by {format_duration(by)} "
                                             f"until {new_expiry:%Y-%m-%d %H:%M:%S} UTC", [n for n in notes if n])

    def bypass(self, person: str, target: str, role: str, duration: timedelta, incident: str,
               reason: str) -> Outcome:
        """Emergency: active at once for the on-call group, reviewed afterwards."""
        req, _ = self._access_request(person, target, role, duration, reason, incident, None)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        now = self.clock()
        with self.store.transaction() as s:
            decision = evaluate_bypass(self.policy, req, replace(self._context(s, person), ticket=facts))
            checks = _checks(decision)
            if not decision.allowed:
                self._record(s, at=now, actor=person, action="bypass.refused", target=target, role=role,
                             checks=checks)
                refusal = Refused("policy", decision.refusal())
            else:
                refusal = None
                row = RequestRow(
                    kind="bypass", requester=person, target=target, role=role, environment=decision.environment,
                    tier=decision.tier, backend=decision.backend, params=decision.params, reason=req.reason,
                    ticket=req.ticket, state="approved", approval_model="emergency", checks=checks,
                    duration_s=int(duration.total_seconds()), starts_at=now, expires_at=now + duration,
                    created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                s.add(ReviewRow(request_id=row.id, bypasser=person, opened_at=now))
                self._record(s, at=now, actor=person, action="bypass.used", request_id=row.id, target=target,
                             role=role, incident=req.ticket, reason=req.reason, checks=checks,
                             duration=format_duration(duration))
                request_id, grant_id = row.id, self._intend_apply(s, row, now)
        if refusal:
            raise refusal
        note = self._apply(grant_id) if grant_id is not None else None
        return Outcome(self.get(request_id), f"REQ-{request_id}: emergency bypass; post-hoc review opened",
                       [note] if note else [])

    def review(self, actor: str, request_id: int, outcome: str, comment: str) -> Outcome:
        comment = _check_text("comment", comment, required=True) or ""
        if outcome not in ("justified", "violation"):
            raise Refused("outcome", "must be 'justified' or 'violation'")
        now = self.clock()
        reviewers = self.policy.emergency.reviewer_group if self.policy.emergency else self._operators()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            rev = s.exec(select(ReviewRow).where(ReviewRow.request_id == row.id)).first()
            if rev is None:
                raise Refused("review", f"REQ-{request_id} is not an emergency bypass")
            if rev.state != "open":
                raise Refused("review", f"REQ-{request_id} was already reviewed ({rev.state} by {rev.reviewer})")
            if actor == rev.bypasser:
                raise Refused("review", "the person who bypassed can never review their own bypass")
            if reviewers not in self.directory.groups_of(actor):
                raise Refused("review", f"{actor} is not in the reviewer group {reviewers!r}")
            done = s.execute(sa.update(ReviewRow).where(ReviewRow.id == rev.id, ReviewRow.version == rev.version)
                             .values(state=outcome, reviewer=actor, comment=comment, reviewed_at=now,
                                     version=rev.version + 1))
            if done.rowcount != 1:
                raise Conflict("review", f"REQ-{request_id} was reviewed by someone else just now")
            self._record(s, at=now, actor=actor, action="bypass.reviewed", request_id=row.id, outcome=outcome,
                         comment=comment, bypasser=rev.bypasser)
        return Outcome(self.get(request_id), f"REQ-{request_id} reviewed: {outcome}")

    def aws_credentials(self, actor: str, request_id: int) -> dict[str, Any]:
        """Short-lived STS credentials for the grantee of an active AWS role grant
        (AWS CLI ``credential_process`` shape); never longer than what remains of the grant."""
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
            if actor != row.requester:
                raise Refused("credentials", f"only {row.requester} may take credentials for REQ-{row.id}")
            if row.state != "active" or grant is None or grant.status != "active":
                raise Refused("state", f"REQ-{row.id} is {row.state}, not active")
            spec = self._spec(grant)
        backend = self.backends.get(grant.backend)
        if not hasattr(backend, "credentials"):
            raise Refused("credentials", f"REQ-{row.id} is a {grant.backend} grant; credentials are for AWS role grants")
        try:
            creds = backend.credentials(spec)
        except BackendError as exc:
            raise Refused("aws", str(exc)) from None
        with self.store.transaction() as s:  # the secret is never recorded, only that it was issued
            self._record(s, at=self.clock(), actor=actor, action="credentials.issued", request_id=row.id,
                         grant_id=grant.id, expiration=creds.get("Expiration"))
        return creds

    def open_reviews(self) -> list[RequestView]:
        with self.store.transaction() as s:
            ids = s.exec(select(ReviewRow.request_id).where(ReviewRow.state == "open")).all()
            return [self._view(s, s.get(RequestRow, i)) for i in ids]

    # ------------------------------------------------------------ internals
    def _record(self, s: Session, *, at: datetime, actor: str, action: str, request_id: int | None = None,
                **details: Any) -> None:
        """Append the audit event and, in the same transaction, the messages it owes the outside."""
        event = audit.append(s, at=at, actor=actor, action=action, request_id=request_id, **details)
        o = self.outbox
        if o.servicenow or o.webhook:
            row = s.get(RequestRow, request_id) if request_id is not None else None
            for item in outbox.entries(event, row, details, servicenow=o.servicenow, webhook=o.webhook,
                                       create_change=o.create_change):
                s.add(OutboxRow(**item))

    def _record_many(self, s: Session, at: datetime,
                     events: Iterable[tuple[str, str, dict | None, int | None, dict[str, Any]]]) -> None:
        """``_record`` for many events ``(actor, action, the request's new row values or None,
        request id, details)``: one INSERT of events and one of the messages they owe, without
        loading the rows back."""
        events = list(events)
        written = audit.append_many(s, ((at, actor, action, rid, d) for actor, action, _, rid, d in events))
        o = self.outbox
        if o.servicenow or o.webhook:
            views = {id(row): SimpleNamespace(**row) for _, _, row, _, _ in events if row}  # one per row
            owed = [item for event, (_, _, row, _, details) in zip(written, events)
                    for item in outbox.entries(event, views[id(row)] if row else None, details,
                                               servicenow=o.servicenow, webhook=o.webhook,
                                               create_change=o.create_change)]
            insert_rows(s, OutboxRow.__table__, [{**item, "state": "pending", "attempts": 0} for item in owed])

    def _ticket_facts(self, number: str | None, start: datetime, end: datetime) -> TicketFacts | None:
        """ServiceNow's facts for the ticket (fetched outside any transaction), when configured."""
        if self.tickets is None or not number:
            return None
        return self.tickets.facts(number, start, end)

    def _operators(self) -> str:
        return self.policy.emergency.reviewer_group if self.policy.emergency else "security"

    def _load(self, s: Session, request_id: int) -> RequestRow:
        row = s.get(RequestRow, request_id) if 0 < request_id <= MAX_ID else None
        if row is None:
            raise NotFound("request", f"REQ-{request_id} does not exist")
        return row

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
    def _bump(s: Session, row: RequestRow, state: str, now: datetime, **values: Any) -> None:
        """The optimistic transition: changes the row only if nobody changed it since it was read."""
        changes = dict(state=state, version=row.version + 1, updated_at=now, **values)
        done = s.execute(sa.update(RequestRow)
                         .where(RequestRow.id == row.id, RequestRow.version == row.version,
                                RequestRow.state == row.state)
                         .values(**changes).execution_options(synchronize_session=False))
        if done.rowcount != 1:
            raise Conflict("conflict", f"REQ-{row.id} was changed by someone else; nothing was done, reload it")
        _committed(row, changes)

    @staticmethod
    def _no_activation_running(s: Session, row: RequestRow) -> None:
        if s.exec(select(GrantRow.id).where(GrantRow.request_id == row.id)).first() is not None:
            raise Conflict("state", f"REQ-{row.id} is being activated right now; try again in a moment")

    def _close(self, actor: str, request_id: int, states: tuple[str, ...], new_state: str, verb: str,
               reason: str, allowed: Any) -> Outcome:
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, states, verb)
            allowed(row)
            self._no_activation_running(s, row)
            self._bump(s, row, new_state, now, closed_by=actor, closed_reason=reason)
            self._record(s, at=now, actor=actor, action=f"request.{new_state}", request_id=row.id, reason=reason)
        return Outcome(self.get(request_id), f"REQ-{request_id} {new_state}")

    # --------------------------------------------------------- grant steps
    def _spec(self, g: GrantRow) -> GrantSpec:
        return GrantSpec(grant_id=g.id, request_id=g.request_id, person=g.person, target=g.target, role=g.role,
                         starts_at=g.starts_at, expires_at=g.expires_at, params=dict(g.params))

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise BackendError(f"no backend {name!r} is configured", transient=False)
        return backend

    def _activate_if_due(self, request_id: int) -> str | None:
        """Apply the grant now if the request is approved and its start has come."""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            grant_id = self._intend_apply(s, row, now)
            state, starts_at = row.state, row.starts_at
        if grant_id is not None:
            return self._apply(grant_id)
        return f"REQ-{request_id} starts at {starts_at:%Y-%m-%d %H:%M} UTC" if state == "approved" \
            and starts_at > now else None

    def _intend_apply(self, s: Session, row: RequestRow, now: datetime) -> int | None:
        """In ``s``: when the approved request's start has come, its grant as 'applying', claimed by
        this process; the grant's id, or None (not approved, not due, its window has passed, or
        another process is activating it)."""
        if row.state != "approved" or row.starts_at > now:
            return None
        if row.expires_at <= now and row.scheduled:
            return None  # its window has passed; the engine lapses it
        starts = row.starts_at if row.scheduled else now
        expires = row.expires_at if row.scheduled else now + timedelta(seconds=row.duration_s)
        grant = GrantRow(request_id=row.id, backend=row.backend or "", person=row.requester, target=row.target,
                         role=row.role, params=row.params, starts_at=starts, expires_at=expires,
                         status="applying", owner=self.owner, lease_until=now + self.settings.lease,
                         updated_at=now)
        try:
            with s.begin_nested():
                s.add(grant)
                s.flush()
        except IntegrityError:
            return None  # another process is activating it
        backend = self.backends.get(grant.backend)
        grant.shared_key = backend.shared_key(self._spec(grant)) if backend is not None else None
        s.add(grant)
        self._bump(s, row, "approved", now, starts_at=starts, expires_at=expires)
        self._record(s, at=now, actor="engine", action="grant.applying", request_id=row.id, grant_id=grant.id,
                     backend=grant.backend, expires_at=expires.isoformat())
        return grant.id

    def _claim_of(self, grant_id: int) -> tuple[GrantSpec, str, datetime | None]:
        """A grant's spec, backend, and the end of this process's claim on it (None: not ours)."""
        with self.store.transaction() as s:
            g = s.get(GrantRow, grant_id)
            return self._spec(g), g.backend, g.lease_until if g.owner == self.owner else None

    def _ours(self, grant: GrantRow) -> bool:
        """Whether this process still holds its claim on ``grant`` (read, and locked, just now)."""
        if grant.owner == self.owner and self.leases.holds(grant.id):
            return True
        log.warning("REQ-%s: the claim on grant %s was lost (now %s, owner %s); its outcome is left to its "
                    "new owner", grant.request_id, grant.id, grant.status, grant.owner)
        return False

    def _apply(self, grant_id: int) -> str:
        """Call the backend for a grant in 'applying' and record the outcome, while its claim holds."""
        spec, backend, until = self._claim_of(grant_id)
        with self.leases.hold([grant_id], until):
            if not self.leases.holds(grant_id):
                return f"grant {grant_id} is being applied by another engine"
            result = self._with_backend(spec, backend, "apply")
            now = self.clock()
            with self.store.transaction() as s:
                return self._apply_outcome(s, grant_id, result, now)

    def _apply_outcome(self, s: Session, grant_id: int, result: Any, now: datetime) -> str:
        """Record what the backend call for a grant in 'applying' did: active, or failed."""
        grant = s.get(GrantRow, grant_id, with_for_update=True)
        if grant.status != "applying" or not self._ours(grant):  # the lease ran out: another engine has it
            return f"grant {grant_id} was taken over by another engine: {grant.status}"
        row = s.get(RequestRow, grant.request_id)
        if not isinstance(result, BackendError):
            ref = result
            grant.status, grant.ref, grant.applied_at, grant.updated_at = "active", ref, now, now
            grant.owner, grant.lease_until, grant.last_error = None, None, None
            grant.version += 1
            s.add(grant)
            if row.state == "approved":
                self._bump(s, row, "active", now)
            self._record(s, at=now, actor="engine", action="grant.active", request_id=row.id, grant_id=grant.id,
                         ref=ref, expires_at=grant.expires_at.isoformat())
            return f"active: {grant.backend} grant until {grant.expires_at:%Y-%m-%d %H:%M:%S} UTC ({ref})"
        grant.status, grant.last_error, grant.updated_at = "failed", str(result), now
        grant.owner, grant.lease_until, grant.version = None, None, grant.version + 1
        s.add(grant)
        if row.state == "approved":
            self._bump(s, row, "failed", now, closed_by="engine", closed_reason=str(result))
        self._record(s, at=now, actor="engine", action="grant.failed", request_id=row.id, grant_id=grant.id,
                     error=str(result))
        return f"failed: {result}"

    def _call_backend(self, grant_id: int, method: str) -> Any:
        """Run ``apply`` or ``revoke`` for a grant, between its crash points; see ``_with_retries``."""
        with self.store.transaction() as s:
            grant = s.get(GrantRow, grant_id)
            spec, backend = self._spec(grant), grant.backend
        return self._with_backend(spec, backend, method)

    def _with_backend(self, spec: GrantSpec, backend: str, method: str) -> Any:
        failpoints.hit(f"{method}.before_backend")
        result = self._with_retries(lambda: getattr(self._backend(backend), method)(spec))
        failpoints.hit(f"{method}.after_backend")
        return result

    def _with_retries(self, call: Any) -> Any:
        """Run a backend call; return its result, or the BackendError once retries are spent."""
        delay = self.settings.retry_backoff.total_seconds()
        for attempt in range(1, self.settings.apply_attempts + 1):
            try:
                return call()
            except InvalidGrant as exc:
                return exc
            except BackendError as exc:
                if not exc.transient or attempt == self.settings.apply_attempts:
                    return exc
                log.warning("backend call failed (attempt %d): %s", attempt, exc)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _reapply(self, grant_id: int) -> str | None:
        result = self._call_backend(grant_id, "apply")
        if isinstance(result, BackendError):
            with self.store.transaction() as s:
                grant = s.get(GrantRow, grant_id)
                self._record(s, at=self.clock(), actor="engine", action="grant.refresh_failed",
                             request_id=grant.request_id, grant_id=grant_id, error=str(result))
            return f"warning: the new expiry was not written to {grant.backend}: {result}"
        return None

    def _end(self, actor: str, request_id: int, end_state: str, verb: str, reason: str, allowed: Any) -> Outcome:
        """Release or revoke: write the intent, remove the artifact, record the outcome."""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            allowed(row)
            if row.state == "approved":  # approved but not started: nothing applied yet
                self._no_activation_running(s, row)
                self._bump(s, row, "cancelled" if end_state == "released" else "revoked", now,
                           closed_by=actor, closed_reason=reason)
                self._record(s, at=now, actor=actor, action=f"request.{row.state}", request_id=row.id, reason=reason)
                grant_id = None
            else:
                self._expect(row, "active", verb)
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if grant is None or grant.status != "active":
                    raise Conflict("state", f"REQ-{request_id}'s grant is {grant.status if grant else 'missing'}; "
                                            "it is already being revoked")
                self._intend_revoke(s, grant, end_state, actor, reason, now)
                self._bump(s, row, "active", now)  # bumps the version: a concurrent action loses
                grant_id = grant.id
        note = self._revoke(grant_id) if grant_id else None
        view = self.get(request_id)
        return Outcome(view, f"REQ-{request_id} {view.state}" if view.state != "active"
                       else f"REQ-{request_id}: revocation pending ({note})", [note] if note else [])

    def _intend_revoke(self, s: Session, grant: GrantRow, end_state: str, actor: str, reason: str,
                       now: datetime) -> None:
        values = dict(status="revoking", end_state=end_state, end_actor=actor, end_reason=reason,
                      owner=self.owner, lease_until=now + self.settings.lease, updated_at=now,
                      version=grant.version + 1)
        done = s.execute(sa.update(GrantRow)
                         .where(GrantRow.id == grant.id, GrantRow.version == grant.version,
                                GrantRow.status == "active")
                         .values(**values).execution_options(synchronize_session=False))
        if done.rowcount != 1:
            raise Conflict("conflict", f"grant {grant.id} was changed by someone else; nothing was done")
        _committed(grant, values)
        self._record(s, at=now, actor=actor, action="grant.revoking", request_id=grant.request_id,
                     grant_id=grant.id, end_state=end_state, reason=reason)

    def _still_covered(self, grant_id: int) -> GrantRow | None:
        """Another live grant that shares this grant's artifact, if any (locked while we decide)."""
        with self.store.transaction() as s:
            grant = s.get(GrantRow, grant_id)
            if not grant.shared_key:
                return None
            return s.exec(select(GrantRow).where(GrantRow.shared_key == grant.shared_key, GrantRow.id != grant.id,
                                                 GrantRow.status.in_(("active", "applying")))
                          .order_by(GrantRow.expires_at.desc()).with_for_update()).first()

    def _revoke(self, grant_id: int) -> str | None:
        """Remove the artifact of a grant in 'revoking'; mark it revoked only once it is gone.

        When another live grant shares the artifact, it stays, and that grant is applied again
        so its own terms (e.g. an AD membership TTL) are the ones in force. Only while this
        process holds its claim on the grant: a lost claim is left to its new owner."""
        spec, backend, until = self._claim_of(grant_id)
        with self.leases.hold([grant_id], until):
            if not self.leases.holds(grant_id):
                return f"grant {grant_id} is being revoked by another engine"
            other = self._still_covered(grant_id)
            if other is not None:
                error = self._call_backend(other.id, "apply")
                kept = other.id
            else:
                error = self._with_backend(spec, backend, "revoke")
                kept = None
            now = self.clock()
            with self.store.transaction() as s:
                return self._revoke_outcome(s, grant_id, error, kept, now)

    def _revoke_outcome(self, s: Session, grant_id: int, error: Any, kept: int | None, now: datetime) -> str | None:
        """Record what the backend call for a grant in 'revoking' did: revoked, or a retry later."""
        grant = s.get(GrantRow, grant_id, with_for_update=True)  # two finishers: the second sees it done
        if grant.status != "revoking" or not self._ours(grant):
            return None
        if isinstance(error, BackendError):
            grant.attempts += 1
            grant.last_error = str(error)
            grant.next_attempt_at = now + self.settings.retry_backoff * min(2 ** grant.attempts, 64)
            grant.owner, grant.lease_until, grant.version = None, None, grant.version + 1
            s.add(grant)
            self._record(s, at=now, actor="engine", action="grant.revoke_failed", request_id=grant.request_id,
                         grant_id=grant.id, error=str(error), attempts=grant.attempts)
            log.error("REQ-%s: revoking grant %s failed (attempt %d), it is still on %s; retry after %s: %s",
                      grant.request_id, grant.id, grant.attempts, grant.backend,
                      f"{grant.next_attempt_at:%H:%M:%S} UTC", error)
            return f"the backend still holds it, will retry: {error}"
        row = s.get(RequestRow, grant.request_id)
        grant.status, grant.revoked_at, grant.updated_at = "revoked", now, now
        grant.owner, grant.lease_until, grant.last_error, grant.version = None, None, None, grant.version + 1
        s.add(grant)
        if row.state == "active":
            self._bump(s, row, grant.end_state or "revoked", now, closed_by=grant.end_actor,
                       closed_reason=grant.end_reason)
        self._record(s, at=now, actor=grant.end_actor or "engine", action=f"request.{grant.end_state}",
                     request_id=row.id, grant_id=grant.id, reason=grant.end_reason, kept_for_grant=kept,
                     lag_ms=round((now - grant.expires_at).total_seconds() * 1000)
                     if grant.end_state == "expired" else None)
        return None

    # ------------------------------------------------------------- engine
    def expire_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Revoke every active grant whose expiry has come. Returns how many were ended.

        A batch at a time: one transaction commits the intent ('revoking') of every grant due,
        the backend removes each artifact, one transaction records the outcomes. A crash in
        between leaves grants in 'revoking' for ``recover()``, as with a single grant."""
        now = now or self.clock()
        ended, skip_locked = 0, True
        while True:
            found, batch, until = self._intend_expiry(now, limit, skip_locked)
            done = {}
            with self.leases.hold([g.id for g in batch], until):  # renewed while the backend works through it
                for g in batch:
                    if not self.leases.holds(g.id):
                        continue  # the claim was lost (frozen, database gone): its new owner finishes it
                    if g.shared_key:  # another grant may still cover the artifact: the careful path
                        self._revoke(g.id)
                    else:
                        done[g.id] = (self._with_backend(self._spec(g), g.backend, "revoke"), self.clock())
                if done:
                    self._expiry_outcomes(done)
            ended += len(batch)
            if found < limit:
                if not skip_locked or self.store.dialect != "postgresql":
                    return ended
                # Rows skipped as locked: most are another engine's claims (now 'revoking', so no longer
                # due); any other holder is waited for here, not left to the next sweep.
                skip_locked = False

    def _expiry_outcomes(self, done: dict[int, tuple[Any, datetime]]) -> None:
        """Record the backend's answers for a batch of expiring grants in one transaction: the removed
        ones revoked (one UPDATE per table, each grant with the instant its artifact went), the others
        left for a retry, each with its audit event."""
        pg = self.store.dialect == "postgresql"
        with self.store.transaction() as s:
            q = select(GrantRow).where(GrantRow.id.in_(list(done))).order_by(GrantRow.id)  # the renewals' order
            grants = {g.id: g for g in s.exec(q.with_for_update() if pg else q).all()}
            q = select(RequestRow).where(RequestRow.id.in_([g.request_id for g in grants.values()]))
            rows = {r.id: r for r in s.exec(q.with_for_update() if pg else q).all()}
            revoked, ended = [], []
            for grant_id, (error, at) in done.items():
                g = grants[grant_id]
                if g.status != "revoking" or not self._ours(g):
                    continue  # finished by, or left to, whoever took the claim over
                if isinstance(error, BackendError):
                    self._revoke_outcome(s, grant_id, error, None, at)
                    continue
                revoked.append({"id": g.id, "status": "revoked", "revoked_at": at, "updated_at": at, "owner": None,
                                "lease_until": None, "last_error": None, "version": g.version + 1})
                row = rows[g.request_id]
                if row.state == "active":
                    ended.append({"id": row.id, "state": g.end_state or "revoked", "version": row.version + 1,
                                  "updated_at": at, "closed_by": g.end_actor, "closed_reason": g.end_reason})
                self._record(s, at=at, actor=g.end_actor or "engine", action=f"request.{g.end_state}",
                             request_id=row.id, grant_id=g.id, reason=g.end_reason, kept_for_grant=None,
                             lag_ms=round((at - g.expires_at).total_seconds() * 1000)
                             if g.end_state == "expired" else None)
            if revoked:  # by primary key, rows read (and on PostgreSQL locked) above
                s.execute(sa.update(GrantRow).execution_options(synchronize_session=False), revoked)
            if ended:
                s.execute(sa.update(RequestRow).execution_options(synchronize_session=False), ended)

    def _intend_expiry(self, now: datetime, limit: int,
                       skip_locked: bool) -> tuple[int, list[GrantRow], datetime | None]:
        """Commit 'revoking' for up to ``limit`` due grants, in one statement per table plus the audit
        events; how many were due, and those now ours. The rows are locked (SQLite: the database) while
        the intent is written, so the version checks of the one-at-a-time path cannot fail here."""
        pg = self.store.dialect == "postgresql"
        with self.store.transaction() as s:
            q = (select(GrantRow).where(GrantRow.status == "active", GrantRow.expires_at <= now)
                 .order_by(GrantRow.expires_at).limit(limit))
            grants = s.exec(q.with_for_update(skip_locked=skip_locked) if pg else q).all()  # skipped: another engine's
            if not grants:
                return 0, [], None
            q = select(RequestRow).where(RequestRow.id.in_([g.request_id for g in grants]))
            active = [r.id for r in s.exec(q.with_for_update() if pg else q).all() if r.state == "active"]
            at = self.clock()
            done = s.execute(sa.update(GrantRow).where(GrantRow.id.in_([g.id for g in grants]),
                                                       GrantRow.status == "active")
                             .values(status="revoking", end_state="expired", end_actor="engine", end_reason="expired",
                                     owner=self.owner, lease_until=at + self.settings.lease, updated_at=at,
                                     version=GrantRow.version + 1).execution_options(synchronize_session=False))
            bumped = s.execute(sa.update(RequestRow).where(RequestRow.id.in_(active), RequestRow.state == "active")
                               .values(version=RequestRow.version + 1, updated_at=at)
                               .execution_options(synchronize_session=False)) if active else None
            if done.rowcount != len(grants) or (bumped is not None and bumped.rowcount != len(active)):
                raise Conflict("conflict", "grants due for expiry changed while locked; nothing was done")
            for g in grants:
                self._record(s, at=at, actor="engine", action="grant.revoking", request_id=g.request_id,
                             grant_id=g.id, end_state="expired", reason="expired")
        return len(grants), list(grants), at + self.settings.lease

    def activate_due(self, now: datetime | None = None) -> int:
        """Apply grants for approved requests whose start has come."""
        now = now or self.clock()
        with self.store.transaction() as s:
            ids = s.exec(select(RequestRow.id).where(RequestRow.state == "approved", RequestRow.starts_at <= now)
                         .order_by(RequestRow.starts_at)).all()
            taken = set(s.exec(select(GrantRow.request_id).where(GrantRow.request_id.in_(ids))).all()) if ids else set()
        count = 0
        for request_id in ids:
            if request_id in taken:
                continue
            if self._activate_if_due(request_id):
                count += 1
        return count

    def recover(self, now: datetime | None = None) -> int:
        """Finish what a crashed process left: grants stuck in 'applying' or 'revoking'."""
        now = now or self.clock()
        with self.store.transaction() as s:
            stuck = s.exec(select(GrantRow).where(GrantRow.status.in_(("applying", "revoking")))).all()
        fixed = 0
        for g in stuck:
            if not self._abandoned(g, now):
                continue
            if g.status == "revoking":
                if g.next_attempt_at and g.next_attempt_at > now:
                    continue
                if self._claim(g, now):
                    self._revoke(g.id)
                    fixed += 1
                continue
            with self.store.transaction() as s:  # applying
                row = s.get(RequestRow, g.request_id)
                still_wanted = row.state == "approved" and g.expires_at > now
            if still_wanted:
                if self._claim(g, now):
                    self._apply(g.id)
                    fixed += 1
            else:
                # The request ended or expired while the grant was half-applied: make sure nothing remains.
                with self.store.transaction() as s:
                    grant = s.get(GrantRow, g.id)
                    if grant.version != g.version:
                        continue
                    grant.status, grant.end_state = "revoking", "expired" if row.state == "approved" else row.state
                    grant.end_actor, grant.end_reason = "engine", "recovered after a crash during apply"
                    grant.owner, grant.lease_until = self.owner, now + self.settings.lease
                    grant.version += 1
                    s.add(grant)
                    self._record(s, at=now, actor="engine", action="grant.revoking", request_id=row.id,
                                 grant_id=grant.id, end_state=grant.end_state, reason=grant.end_reason)
                    if row.state == "approved":
                        self._bump(s, row, "active", now)
                self._revoke(g.id)
                fixed += 1
        return fixed

    def _abandoned(self, g: GrantRow, now: datetime) -> bool:
        """Nobody is working on it: no owner, lease over, or the owner was a dead process on this host."""
        if g.owner is None or g.lease_until is None or g.lease_until <= now:
            return True
        host, _, pid = g.owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            if int(pid) == os.getpid():
                return False
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def _claim(self, g: GrantRow, now: datetime) -> bool:
        with self.store.transaction() as s:
            done = s.execute(sa.update(GrantRow).where(GrantRow.id == g.id, GrantRow.version == g.version)
                             .values(owner=self.owner, lease_until=now + self.settings.lease,
                                     version=g.version + 1))
            if done.rowcount != 1:
                return False
            # Who took over from whom, and when the old claim ran out: a takeover is worth an audit line.
            self._record(s, at=now, actor="engine", action="grant.recovered", request_id=g.request_id,
                         grant_id=g.id, status=g.status, owner=self.owner, previous_owner=g.owner,
                         previous_lease_until=g.lease_until.isoformat() if g.lease_until else None)
            return True

    def escalate_and_lapse(self, now: datetime | None = None) -> tuple[int, int]:
        """Mark unanswered requests escalated; lapse those past their time."""
        now = now or self.clock()
        d = self.policy.defaults
        escalated = lapsed = 0
        with self.store.transaction() as s:
            rows = s.exec(select(RequestRow).where(RequestRow.state.in_(("pending", "approved")))).all()
        for r in rows:
            try:
                with self.store.transaction() as s:
                    row = s.get(RequestRow, r.id)
                    pending_too_long = row.state == "pending" and row.created_at + d.lapse_after <= now
                    window_gone = row.expires_at <= now and (row.scheduled or row.state == "pending")
                    if row.state in ("pending", "approved") and (pending_too_long or window_gone):
                        if row.state == "approved" and s.exec(select(GrantRow.id)
                                                              .where(GrantRow.request_id == row.id)).first():
                            continue  # a grant exists: expiry handles it
                        why = ("no decision within " + format_duration(d.lapse_after)) if pending_too_long \
                            else "its requested window passed before it could start"
                        self._bump(s, row, "lapsed", now, closed_by="engine", closed_reason=why)
                        self._record(s, at=now, actor="engine", action="request.lapsed", request_id=row.id, reason=why)
                        lapsed += 1
                    elif row.state == "pending" and row.escalated_at is None and row.created_at + d.escalate_after <= now:
                        self._bump(s, row, "pending", now, escalated_at=now)
                        self._record(s, at=now, actor="engine", action="request.escalated", request_id=row.id,
                                     waited=format_duration(now - row.created_at),
                                     approver_groups=list(row.approver_groups))
                        escalated += 1
            except Conflict:
                continue
        return escalated, lapsed

    def end_for_closed_tickets(self, numbers: Iterable[str], why: str) -> list[int]:
        """The linked tickets were closed or cancelled: end their open requests now, each with the
        note "<number> <why>". One query for the lot; the ids ended."""
        numbers = sorted(set(numbers))
        rows = []
        with self.store.transaction() as s:
            for i in range(0, len(numbers), 500):
                rows += s.exec(select(RequestRow).where(RequestRow.ticket.in_(numbers[i:i + 500]),
                                                        RequestRow.state.in_(OPEN_STATES))).all()
        ended = []
        for r in sorted(rows, key=lambda r: r.id):
            reason = f"{r.ticket} {why}"
            try:
                if r.state == "active":
                    self._end("servicenow", r.id, "revoked", "revoke", reason, lambda row: None)
                else:
                    self._close("servicenow", r.id, OPEN_STATES[:2], "cancelled", "cancel", reason, lambda row: None)
                ended.append(r.id)
            except Refused as exc:
                log.warning("REQ-%s not ended for closed ticket %s: %s", r.id, r.ticket, exc)
        return ended

    def open_tickets(self) -> list[str]:
        """Ticket numbers that open requests depend on."""
        with self.store.transaction() as s:
            return sorted(set(s.exec(select(RequestRow.ticket).where(RequestRow.state.in_(OPEN_STATES),
                                                                     RequestRow.ticket.is_not(None))).all()))

    def warn_expiring(self, within: timedelta, now: datetime | None = None, limit: int = 200) -> int:
        """Record "expires soon" once per grant (the webhook hears of it through the outbox).

        ``limit`` grants per transaction: thousands entering the horizon at once must not hold the
        database (on SQLite, every writer) for seconds while revocations wait."""
        now = now or self.clock()
        warned = 0
        while True:
            with self.store.transaction() as s:
                grants = s.exec(select(GrantRow).where(GrantRow.status == "active", GrantRow.warned_at.is_(None),
                                                       GrantRow.expires_at <= now + within,
                                                       GrantRow.expires_at > now)
                                .order_by(GrantRow.expires_at).limit(limit)).all()
                for g in grants:
                    g.warned_at = now
                    s.add(g)
                    self._record(s, at=now, actor="engine", action="grant.expiring", request_id=g.request_id,
                                 grant_id=g.id, expires_at=g.expires_at.isoformat())
            warned += len(grants)
            if len(grants) < limit:
                return warned

    def next_deadlines(self, until: datetime) -> list[datetime]:
        """Expiry and start instants before ``until``, for the precise scheduler."""
        with self.store.transaction() as s:
            ends = s.exec(select(GrantRow.expires_at).where(GrantRow.status == "active",
                                                            GrantRow.expires_at <= until).distinct()).all()
            starts = s.exec(select(RequestRow.starts_at).where(RequestRow.state == "approved",
                                                               RequestRow.starts_at <= until).distinct()).all()
        return sorted(set(ends) | set(starts))

"""Where a ServiceNow change becomes a request (ticket-driven elevation, a page at a time), and
where a closed ticket ends the requests that depend on it."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.domain.errors import Refused
from app.domain.states import OPEN_STATES, UNSTARTED
from app.lifecycle.base import AUTO_APPROVED, LifecycleBase, checks_of, log
from app.store import RequestRow, among, audit, next_ids
from app.store import requests as request_store
from integrations.servicenow.model import SYS_ID_RE, Ticket
from policies.decision import AccessRequest, Context, Holding, TicketFacts
from policies.durations import format_duration
from policies.evaluate import evaluate


def source_ref(ticket: Ticket) -> str:
    """A ticket-driven request's unique reference to the change it came from."""
    return f"change_request:{ticket.sys_id}"


class Tickets(LifecycleBase):
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
                source = source_ref(items[0][0])
                if s.exec(select(RequestRow.id).where(RequestRow.source_ref == source)).first() is None:
                    raise  # some other constraint: not a race to swallow
            return [None]
        if due:  # approved and already started: apply now, a batch at a time
            self.activate_due(only=due)
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
                sources[i] = source_ref(ticket)
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
        request_store.lock_people(s, people)  # as for any submission: racing decisions see each other
        if people:  # what is queued counts too; (open bypass reviews are not read: only evaluate_bypass() weighs them)
            for r in s.exec(select(RequestRow.requester, RequestRow.target, RequestRow.role, RequestRow.starts_at,
                                   RequestRow.expires_at).where(among(s, RequestRow.requester, people),
                                                                RequestRow.state.in_(OPEN_STATES))):
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
                    approver_groups=list(decision.approver_groups), checks=audit.canonical_plain(checks_of(decision)),
                    scheduled=True,
                    duration_s=int(req.duration.total_seconds()), starts_at=req.starts_at,
                    expires_at=req.expires_at, created_at=now, updated_at=now, escalated_at=None,
                    closed_by=None, closed_reason=None, version=1)
                rows.append(row)
                # later requests in this page see it, as they would see it committed
                holdings[person].append(Holding(req.target, req.role, req.starts_at, req.expires_at))
            decided.append((i, req, decision, approved, row))
        if rows:  # ids first, then one insert (RETURNING over many rows is slow on psycopg)
            for row, request_id in zip(rows, next_ids(s, RequestRow.__table__, len(rows))):
                row["id"] = request_id
            request_store.create_many(s, rows)
        events = []
        for i, req, decision, approved, row in decided:
            duration = format_duration(req.duration)
            if row is None:
                events.append(("servicenow", "request.refused", None, None, dict(
                    target=req.target, role=req.role, requester=req.requester, duration=duration,
                    ticket=req.ticket, checks=checks_of(decision))))
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
                    self._close("servicenow", r.id, UNSTARTED, "cancelled", "cancel", reason, lambda row: None)
                ended.append(r.id)
            except Refused as exc:
                log.warning("REQ-%s not ended for closed ticket %s: %s", r.id, r.ticket, exc)
        return ended

    def open_tickets(self) -> list[str]:
        """Ticket numbers that open requests depend on."""
        with self.store.transaction() as s:
            return sorted(set(s.exec(select(RequestRow.ticket).where(RequestRow.state.in_(OPEN_STATES),
                                                                     RequestRow.ticket.is_not(None))).all()))

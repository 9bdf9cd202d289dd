"""Asking for access: the checks of what was typed, the decision, submit and preview, cancel."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from app.domain.errors import BadInput, Refused
from app.domain.inputs import check_names, check_person, check_text
from app.domain.views import Outcome
from app.lifecycle.base import AUTO_APPROVED, LifecycleBase, checks_of, linked_sys_id
from app.store import RequestRow
from app.store import requests as request_store
from app.domain.states import OPEN_STATES, UNSTARTED
from policies import authority
from policies.decision import AccessRequest, Decision
from policies.durations import format_duration
from policies.evaluate import evaluate

MAX_LEAD = timedelta(days=366)  # how far ahead a request may be scheduled


class Requests(LifecycleBase):
    def _resolve_start(self, start: datetime | None) -> tuple[datetime, bool]:
        now = self.clock()
        if start is None:
            return now, False
        if start.tzinfo is None:
            raise BadInput("start", "needs a UTC offset, e.g. 2026-11-24T09:00:00Z")
        try:
            start = start.astimezone(now.tzinfo)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 lies before the first representable UTC instant
            raise BadInput("start", "is out of the representable date range") from None
        if start < now - timedelta(minutes=1):
            raise BadInput("start", f"{start:%Y-%m-%d %H:%M} UTC is in the past")
        if start > now + MAX_LEAD:
            raise BadInput("start", f"{start:%Y-%m-%d} is more than a year ahead")
        return max(start, now), True

    def _access_request(self, person: str, target: str, role: str, duration: timedelta, reason: str,
                        ticket: str | None, start: datetime | None) -> tuple[AccessRequest, bool]:
        check_person("requester", person)
        check_names(target, role)
        reason = check_text("reason", reason, required=True) or ""
        ticket = check_text("ticket", ticket, required=False, limit=64)
        if duration <= timedelta(0):
            raise BadInput("duration", "must be longer than zero")
        starts_at, scheduled = self._resolve_start(start)
        return AccessRequest(person, target, role, starts_at, duration, reason, ticket), scheduled

    def preview(self, person: str, target: str, role: str, duration: timedelta, reason: str = "(preview only)",
                ticket: str | None = None, start: datetime | None = None) -> Decision:
        """The whole decision, without submitting anything."""
        req, _ = self._access_request(person, target, role, duration, reason, ticket, start)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        with self.store.transaction() as s:
            return evaluate(self.policy, req, replace(self._context(s, person, counting=OPEN_STATES), ticket=facts))

    def submit(self, person: str, target: str, role: str, duration: timedelta, reason: str,
               ticket: str | None = None, start: datetime | None = None) -> Outcome:
        """Evaluate and record a request; apply it if approved and due."""
        req, scheduled = self._access_request(person, target, role, duration, reason, ticket, start)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        now = self.clock()
        with self.store.transaction() as s:
            request_store.lock_people(s, [person])
            ctx = self._context(s, person, counting=OPEN_STATES)
            decision = evaluate(self.policy, req, replace(ctx, ticket=facts))
            checks = checks_of(decision)
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
                    ticket=req.ticket, ticket_sys_id=linked_sys_id(facts),
                    state="approved" if approved else "pending",
                    approval_model=model, approver_groups=list(decision.approver_groups),
                    checks=checks, scheduled=scheduled, duration_s=int(duration.total_seconds()),
                    starts_at=req.starts_at, expires_at=req.expires_at, created_at=now, updated_at=now)
                request_store.create(s, row)
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

    def cancel(self, actor: str, request_id: int, reason: str = "cancelled by requester") -> Outcome:
        def allowed(row: RequestRow) -> None:
            refusal = authority.may_cancel(actor, row.requester, f"REQ-{row.id}")
            if refusal:
                raise Refused("cancel", refusal)
        return self._close(actor, request_id, UNSTARTED, "cancelled", "cancel", reason, allowed)

    def _close(self, actor: str, request_id: int, states: tuple[str, ...], new_state: str, verb: str,
               reason: str, allowed: Any) -> Outcome:
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, states, verb)
            allowed(row)
            self._no_activation_running(s, row)
            request_store.transition(s, row, new_state, now, closed_by=actor, closed_reason=reason)
            self._record(s, at=now, actor=actor, action=f"request.{new_state}", request_id=row.id, reason=reason)
        return Outcome(self.get(request_id), f"REQ-{request_id} {new_state}")

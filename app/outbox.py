"""Messages owed to the outside world: ServiceNow work notes, change records, webhooks.

``entries()`` turns an audit event into outbox rows inside the event's own transaction, so
a message is owed exactly when its event happened. ``Deliverer`` sends them later with
retries; each ServiceNow note carries a marker so a retry after a timeout never writes it
twice, and each created change carries one in its description for the same reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from app import audit
from app.clock import Clock
from app.store import AuditEvent, OutboxRow, RequestRow, Store
from integrations.notify import NotifyError, Webhook
from integrations.servicenow.client import NotFound, ServiceNowError
from integrations.servicenow.tickets import NUMBER_RE, Tickets

log = logging.getLogger("jit.outbox")
MAX_ATTEMPTS = 20


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if isinstance(value, datetime) else str(value)


def _note(event: AuditEvent, row: RequestRow | None, d: dict[str, Any]) -> str | None:
    """The work note for an event, or None when the event is not reported to the ticket."""
    if row is None:
        if event.action == "request.refused" and d.get("ticket"):
            failed = "; ".join(f"{c['name']}: {c['message']}" for c in d.get("checks", []) if not c["passed"])
            return (f"JIT access request by {d.get('requester') or event.actor} for {d.get('role')} on "
                    f"{d.get('target')} was refused "
                    f"by policy. Failing checks: {failed}")
        return None
    who = f"{row.requester} on {row.target} ({row.role})"
    label = f"JIT REQ-{row.id}"
    if event.action == "grant.active":
        return (f"{label}: Access granted to {who} until {_when(row.expires_at)}; session recorded "
                f"(sudo I/O log).")
    if event.action == "request.denied":
        return f"{label}: Access request for {who} denied by {event.actor}: {d.get('reason')}"
    if event.action in ("request.revoked", "request.expired", "request.released"):
        verb = {"request.revoked": f"revoked by {event.actor}: {d.get('reason')}",
                "request.expired": "expired and was removed", "request.released": "released by the requester "
                "(task completed) and was removed"}[event.action]
        return f"{label}: Access for {who} {verb}."
    if event.action == "bypass.reviewed":
        return (f"{label}: Emergency bypass by {row.requester} reviewed by {event.actor}: "
                f"{d.get('outcome')} ({d.get('comment')}).")
    if event.action == "ticket.linked":
        if row.kind == "bypass":
            return f"{label}: Change {d.get('change')} opened for the emergency bypass by {row.requester}."
        return (f"{label}: Change opened by JIT for access by {who}; the request is {row.state}, "
                f"window {_when(row.starts_at)} .. {_when(row.expires_at)}.")
    return None


def _webhook(event: AuditEvent, row: RequestRow | None, d: dict[str, Any]) -> str | None:
    if row is None:
        return None
    what = f"REQ-{row.id} {row.requester} -> {row.role} on {row.target}"
    if event.action == "request.submitted" and row.state == "pending":
        return (f":lock: {what} needs {row.approval_model} approval from {' and '.join(row.approver_groups)} "
                f"(reason: {row.reason})")
    if event.action == "request.escalated":
        return f":warning: {what} has waited {d.get('waited')} for approval: escalated"
    if event.action == "bypass.used":
        return f":rotating_light: EMERGENCY BYPASS {what} for incident {row.ticket}: {row.reason}"
    if event.action == "grant.expiring":
        return f":hourglass: {what} expires at {_when(row.expires_at)}"
    if event.action == "grant.revoke_failed" and _power_of_two(d.get("attempts")):  # 1, 2, 4, 8...: no flood
        return (f":rotating_light: REVOKE FAILING {what}: still present on {row.backend} after "
                f"{d.get('attempts')} attempt(s), retrying: {d.get('error')}")
    if event.action == "grant.failed":
        return f":x: {what} could not be applied on {row.backend}: {d.get('error')}"
    return None


def _power_of_two(n: Any) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def entries(event: AuditEvent | audit.Appended, row: RequestRow | None, details: dict[str, Any], *,
            servicenow: bool, webhook: bool, create_change: bool) -> list[dict[str, Any]]:
    """The outbox rows an audit event owes, as column values (``OutboxRow(**values)``)."""
    out = []

    def owed(key: str, channel: str, request_id: int | None, payload: dict, ticket: str | None = None) -> None:
        out.append({"key": key, "channel": channel, "request_id": request_id, "ticket": ticket,
                    "payload": payload, "next_attempt_at": event.at, "created_at": event.at})
    ticket = (row.ticket if row is not None else details.get("ticket")) or None
    if servicenow and ticket and NUMBER_RE.fullmatch(ticket):
        text = _note(event, row, details)
        if text:
            marker = f"[jit:{'req-%d.' % row.id if row else ''}ev-{event.seq}]"
            owed(f"sn:{event.seq}", "servicenow", event.request_id, {"text": text, "marker": marker}, ticket)
    if servicenow and create_change and row is not None and event.action in ("request.submitted", "bypass.used") \
            and (row.kind == "bypass" or not row.ticket):
        owed(f"chg:{row.id}", "create_change", row.id, {"marker": f"[jit:req-{row.id}.change]"})
    if webhook:
        text = _webhook(event, row, details)
        if text:
            owed(f"wh:{event.seq}", "webhook", event.request_id,
                 {"text": text, "event": event.action, "request_id": event.request_id})
    return out


@dataclass(frozen=True)
class DeliveryReport:
    sent: int
    retried: int
    failed: int


class Deliverer:
    def __init__(self, store: Store, clock: Clock, *, tickets: Tickets | None, webhook: Webhook | None,
                 lease: timedelta = timedelta(seconds=60)) -> None:
        self.store, self.clock, self.tickets, self.webhook, self.lease = store, clock, tickets, webhook, lease

    def run_once(self, limit: int = 200) -> DeliveryReport:
        now = self.clock()
        with self.store.transaction() as s:
            due = s.exec(select(OutboxRow.id).where(OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now)
                         .order_by(OutboxRow.id).limit(limit)).all()
        sent = retried = failed = 0
        for oid in due:
            row = self._claim(oid, now)
            if row is None:
                continue
            try:
                self._send(row)
            except (ServiceNowError, NotifyError) as exc:
                permanent = not getattr(exc, "transient", False) or row.attempts + 1 >= MAX_ATTEMPTS
                self._finish(row, error=str(exc), permanent=permanent)
                failed += permanent
                retried += not permanent
                continue
            self._finish(row)
            sent += 1
        return DeliveryReport(sent, retried, failed)

    def _claim(self, oid: int, now: datetime) -> OutboxRow | None:
        with self.store.transaction() as s:
            done = s.execute(sa.update(OutboxRow).where(
                OutboxRow.id == oid, OutboxRow.state == "pending",
                sa.or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now))
                .values(claimed_until=now + self.lease))
            return s.get(OutboxRow, oid) if done.rowcount == 1 else None

    def _send(self, row: OutboxRow) -> None:
        if row.channel == "webhook":
            if self.webhook is None:
                raise NotifyError("no webhook is configured", transient=False)
            self.webhook.send({"text": row.payload["text"], "event": row.payload.get("event"),
                               "request_id": row.payload.get("request_id")})
        elif self.tickets is None:
            raise ServiceNowError("ServiceNow is not configured")
        elif row.channel == "servicenow":
            ticket = self.tickets.find(row.ticket)
            if ticket is None:
                raise NotFound(f"{row.ticket} no longer exists in ServiceNow")
            self.tickets.add_work_note(ticket.table, ticket.sys_id, row.payload["text"], row.payload["marker"])
        elif row.channel == "create_change":
            self._create_change(row)
        else:
            raise ServiceNowError(f"unknown outbox channel {row.channel!r}")

    def _create_change(self, row: OutboxRow) -> None:
        with self.store.transaction() as s:
            req = s.get(RequestRow, row.request_id)
        marker = row.payload["marker"]
        existing = self.tickets.find_change_by_marker(marker)  # created before a lost answer?
        bypass = req.kind == "bypass"
        change = existing or self.tickets.create_change(
            short_description=f"JIT {'emergency bypass' if bypass else 'access'} REQ-{req.id}: "
                              f"{req.role} on {req.target} for {req.requester}",
            description=f"{req.reason}\n{marker}", emergency=bypass, assignee=req.requester,
            start=req.starts_at, end=req.expires_at, cmdb_ci=req.target)
        with self.store.transaction() as s:
            req = s.get(RequestRow, row.request_id)
            if not req.ticket:
                req.ticket = change.number
                s.add(req)
            event = audit.append(s, at=self.clock(), actor="servicenow", action="ticket.linked",
                                 request_id=req.id, change=change.number)
            for item in entries(event, req, {"change": change.number}, servicenow=True, webhook=False,
                                create_change=False):
                s.add(OutboxRow(**item))

    def _finish(self, row: OutboxRow, *, error: str | None = None, permanent: bool = False) -> None:
        now = self.clock()
        with self.store.transaction() as s:
            current = s.get(OutboxRow, row.id)
            current.claimed_until = None
            if error is None:
                current.state, current.sent_at, current.last_error = "sent", now, None
            else:
                current.attempts += 1
                current.last_error = error
                if permanent:
                    current.state = "failed"
                    audit.append(s, at=now, actor="engine", action="outbox.failed", request_id=current.request_id,
                                 channel=current.channel, key=current.key, error=error)
                else:
                    current.next_attempt_at = now + timedelta(seconds=min(600, 5 * 2 ** min(current.attempts, 7)))
                log.warning("outbox %s (%s) %s: %s", current.key, current.channel,
                            "failed for good" if permanent else "will retry", error)
            s.add(current)

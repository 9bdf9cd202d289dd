"""Delivery of the messages owed to the outside world: ServiceNow work notes, change records,
webhooks. Which messages an event owes is decided in ``app/lifecycle/messages.py``, in the
event's own transaction, so a message is owed exactly when its event happened. ``Deliverer``
sends them later with retries; each ServiceNow note carries a marker so a retry after a timeout never writes it
twice, and each created change carries one in its description for the same reason.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from app.clock import Clock
from app.lifecycle.messages import entries
from app.store import OutboxRow, RequestRow, Store, audit
from app.store import requests as request_store
from integrations.notify import NotifyError, Webhook
from integrations.servicenow.errors import NotFound, ServiceNowError
from integrations.servicenow.model import Ticket

if TYPE_CHECKING:
    from integrations.servicenow.tickets import Tickets

log = logging.getLogger("jit.outbox")
MAX_ATTEMPTS = 20


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
            ticket = self._linked_ticket(row)
            if ticket is None:
                raise NotFound(f"{row.ticket} no longer exists in ServiceNow")
            self.tickets.add_work_note(ticket.table, ticket.sys_id, row.payload["text"], row.payload["marker"])
        elif row.channel == "create_change":
            self._create_change(row)
        else:
            raise ServiceNowError(f"unknown outbox channel {row.channel!r}")

    def _linked_ticket(self, row: OutboxRow) -> Ticket | None:
        """The ticket a note goes to: the one its request is linked to by sys_id (never another
        ticket that carries the same number), else the one with that number."""
        sys_id = None
        if row.request_id is not None:
            with self.store.transaction() as s:
                req = s.get(RequestRow, row.request_id)
            sys_id = req.ticket_sys_id if req is not None and req.ticket == row.ticket else None
        if sys_id:
            return self.tickets.find_many_by_sys_id([(row.ticket, sys_id)]).get(sys_id)
        return self.tickets.find(row.ticket)

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
            req = s.get(RequestRow, row.request_id, with_for_update=True)  # locked: the version check holds
            now = self.clock()
            if not req.ticket:
                request_store.amend(s, req, now, ticket=change.number, ticket_sys_id=change.sys_id)
            event = audit.append(s, at=now, actor="servicenow", action="ticket.linked",
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

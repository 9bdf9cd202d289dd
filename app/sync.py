"""The ServiceNow sync: ticket-driven elevation and early revocation for closed tickets.

Each run reads change requests updated since the watermark that carry JIT fields, oldest
first, and turns each into a request (once: the change's sys_id is the request's unique
``source_ref``). The watermark only moves past tickets that were fully handled, so an
outage mid-run loses nothing; re-reading the same second again is harmless.

The first good run after failed ones says how far behind it was: an audit event
``sync.caught_up`` and a log line with how long ServiceNow could not be read (since the
last good run), the age of the oldest change it picked up late, and how many new changes it read.
``jit sync status`` shows the latest one.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import select

from app import audit
from app.clock import Clock
from app.lifecycle import Lifecycle, Refused
from app.store import AuditEvent, Store, SyncState
from app.tickets import TicketGateway
from integrations.servicenow.client import ServiceNowError
from integrations.servicenow.tickets import Tickets

log = logging.getLogger("jit.sync")
NAME = "servicenow"
KEEP_ERRORS = 10


@dataclass(frozen=True)
class SyncReport:
    read: int
    created: int
    refused: int
    ended: int
    behind_s: float
    error: str | None = None
    down_s: float | None = None  # set on the first good run after failed ones: since the last good run

    def __str__(self) -> str:
        text = (f"read {self.read} change(s), created {self.created} request(s), refused {self.refused}, "
                f"ended {self.ended} for closed tickets; was {self.behind_s:.0f}s behind")
        if self.down_s is not None:
            text += f"; caught up after {self.down_s:.0f}s without ServiceNow"
        return text + (f"; error: {self.error}" if self.error else "")


class TicketSync:
    def __init__(self, store: Store, lifecycle: Lifecycle, tickets: Tickets, gateway: TicketGateway,
                 clock: Clock, initial_lookback: timedelta) -> None:
        self.store, self.lifecycle, self.tickets, self.gateway = store, lifecycle, tickets, gateway
        self.clock, self.initial_lookback = clock, initial_lookback

    def status(self) -> SyncState | None:
        with self.store.transaction() as s:
            return s.get(SyncState, NAME)

    def last_catch_up(self) -> dict | None:
        """The latest ``sync.caught_up`` event: when, ``down_s``, ``behind_s``, ``caught_up``."""
        with self.store.transaction() as s:
            event = s.exec(select(AuditEvent).where(AuditEvent.action == "sync.caught_up")
                           .order_by(AuditEvent.seq.desc()).limit(1)).first()
        return {"at": event.at, **json.loads(event.details)} if event else None

    def run_once(self) -> SyncReport:
        now = self.clock()
        state = self.status()
        watermark = (state.watermark if state and state.watermark else now - self.initial_lookback)
        behind = 0.0  # how old the oldest change this run had to catch up on was
        read = fresh = created = refused = ended = 0
        errors: list[str] = []
        new_mark = watermark
        cache: dict = {"from": now}  # group members and blackouts, read once in this run
        seen: set[str] = set()
        try:
            for ticket in self.tickets.changes_since(watermark):
                read += 1
                seen.add(ticket.number)
                if ticket.updated_on is None or ticket.updated_on > watermark:  # not a re-read of the last second
                    fresh += 1
                    if fresh == 1 and ticket.updated_on:
                        behind = max(0.0, (now - ticket.updated_on).total_seconds())
                if ticket.closed:
                    ended += len(self.lifecycle.end_for_closed_ticket(ticket.number, f"{ticket.number} was closed"))
                else:
                    try:
                        facts = self.gateway.from_ticket(ticket, max(now, ticket.start or now), ticket.end or now,
                                                         cache)
                        if self.lifecycle.submit_from_ticket(ticket, facts) is not None:
                            created += 1
                    except Refused as exc:
                        refused += 1
                        errors.append(f"{ticket.number}: {exc.rule}: {exc.message}")
                if ticket.updated_on and ticket.updated_on > new_mark:
                    new_mark = ticket.updated_on
            unseen = [n for n in self.lifecycle.open_tickets() if n not in seen]  # seen: handled above
            for number, ticket in self.tickets.find_many(unseen).items():  # a query per 200, not one each
                if ticket.closed:
                    ended += len(self.lifecycle.end_for_closed_ticket(
                        number, f"{number} was closed or cancelled in ServiceNow"))
            error = None
        except ServiceNowError as exc:
            error = str(exc)
            errors.append(error)
            log.warning("sync stopped, will resume from %s: %s", new_mark, exc)
        down = self._save(now, new_mark, error, errors, read, fresh, behind)
        return SyncReport(read, created, refused, ended, behind, error, down)

    def _save(self, now: datetime, mark: datetime, error: str | None, errors: list[str], read: int,
              fresh: int, behind: float) -> float | None:
        """Record the run; return how long ServiceNow was unreadable when this run ended an outage."""
        down = None
        with self.store.transaction() as s:
            state = s.get(SyncState, NAME) or SyncState(name=NAME, errors=[])
            if error is None and state.last_error is not None:  # the first good run after failed ones
                since = state.last_ok_at or state.last_run_at or now
                down = max(0.0, (now - since).total_seconds())
                audit.append(s, at=now, actor="servicenow", action="sync.caught_up", down_s=round(down, 3),
                             behind_s=round(behind, 3), caught_up=fresh, last_ok_at=since.isoformat())
                log.warning("sync caught up: ServiceNow unreadable for %.0fs; read %d change(s), the oldest "
                            "%.0fs late", down, fresh, behind)
            state.watermark, state.last_run_at, state.behind_s = mark, now, behind
            state.processed = (state.processed or 0) + read
            if error is None:
                state.last_ok_at = now
            state.last_error = error
            stamped = [f"{now:%Y-%m-%d %H:%M:%S}Z {e}" for e in errors]
            state.errors = (list(state.errors or []) + stamped)[-KEEP_ERRORS:]
            s.add(state)
        return down

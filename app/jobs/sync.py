"""The ServiceNow sync: ticket-driven elevation and early revocation for closed tickets.

Each run reads change requests updated since the watermark that carry JIT fields, oldest
first, and turns each into a request (once: the change's sys_id is the request's unique
``source_ref``). The watermark only moves past tickets that were fully handled, so an
outage mid-run loses nothing; re-reading the same second again is harmless.

Changes are decided a page (``PAGE``) at a time, one transaction per page
(``Lifecycle.submit_from_tickets``), while a thread reads the next page from ServiceNow
(``read_ahead``), which also reads the groups and blackouts the policy needs: a 10,000-change
backlog cost 1.3-1.5 times the bare paged fetch, not 27-47 times, and about 3 times since the
approvers and audit rows of each page are read too (``tests/benchmarks/snow_sync.py``).

The first good run after failed ones says how far behind it was: an audit event
``sync.caught_up`` and a log line with how long ServiceNow could not be read (since the
last good run), the age of the oldest change it picked up late, and how many new changes it read.
``jit sync status`` shows the latest one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import json
import logging
import queue
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Iterator, TypeVar

from sqlmodel import select

from app.clock import Clock
from app.domain.errors import Refused
from app.lifecycle import Lifecycle, activity
from app.lifecycle.ticket_facts import TicketGateway
from app.store import AuditEvent, Store, SyncState, audit
from integrations.servicenow.errors import ServiceNowError
from integrations.servicenow.model import Ticket
from policies.decision import TicketFacts

if TYPE_CHECKING:
    from integrations.servicenow.tickets import Tickets

log = logging.getLogger("jit.sync")
NAME = "servicenow"
KEEP_ERRORS = 10
PAGE = 500  # changes decided in one transaction
# Each run reads again this far behind its watermark: an instance stamps sys_updated_on when an
# update starts, so a change can become visible after later-stamped ones were read. What was
# decided already is skipped (its request exists, or its refused version is recorded).
REREAD = timedelta(seconds=30)
T = TypeVar("T")


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


@dataclass
class _Run:
    """One run's progress: what it read and did, and how far the watermark may move."""

    now: datetime
    watermark: datetime  # where the run started reading
    mark: datetime = field(init=False)  # the watermark moves here: past the pages fully handled
    read: int = 0
    fresh: int = 0
    created: int = 0
    refused: int = 0
    ended: int = 0
    behind: float = 0.0  # how old the oldest change this run had to catch up on was
    errors: list[str] = field(default_factory=list)
    cache: dict = field(init=False)  # group members and blackouts, read once per run
    linked: set[tuple[str, str | None]] = field(default_factory=set)  # (number, sys_id) open requests depended on
    seen: set[str] = field(default_factory=set)  # the sys_ids of the tickets this run read

    def __post_init__(self) -> None:
        self.mark = self.watermark
        self.cache = {"from": self.now}


class TicketSync:
    def __init__(self, store: Store, lifecycle: Lifecycle, tickets: Tickets, gateway: TicketGateway,
                 clock: Clock, initial_lookback: timedelta) -> None:
        self.store, self.lifecycle, self.tickets, self.gateway = store, lifecycle, tickets, gateway
        self.clock, self.initial_lookback = clock, initial_lookback
        self._fields_checked = False

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
        run = _Run(now, state.watermark if state and state.watermark else now - self.initial_lookback)
        run.linked = set(self.lifecycle.open_tickets())
        error = None
        try:
            self._check_fields()
            for page in read_ahead(self._read(run), PAGE):
                self._handle(run, page)
            unseen = [(n, sys_id) for n, sys_id in run.linked if sys_id not in run.seen]  # the rest: 200 per query
            closed = [(t.number, t.sys_id) for t in self.tickets.find_many_by_sys_id(
                          [(n, sys_id) for n, sys_id in unseen if sys_id]).values() if t.closed]
            closed += [(n, t.sys_id) for n, t in self.tickets.find_many(  # requests from before links were kept
                           sorted(n for n, sys_id in unseen if not sys_id)).items() if t.closed]
            run.ended += len(self.lifecycle.end_for_closed_tickets(closed, "was closed or cancelled in ServiceNow"))
        except ServiceNowError as exc:
            error = str(exc)
            run.errors.append(error)
            log.warning("sync stopped, will resume from %s: %s", run.mark, exc)
        down = self._save(now, run.mark, error, run.errors, run.read, run.fresh, run.behind)
        if run.created or run.refused or run.ended:  # a run that changed something: one line (none when idle)
            activity.log.info("%s", activity.line("sync.run", read=run.read, created=run.created,
                                                   refused=run.refused, ended=run.ended,
                                                   behind_s=round(run.behind), error=error))
        return SyncReport(run.read, run.created, run.refused, run.ended, run.behind, error, down)

    def _check_fields(self) -> None:
        """Before the first read: the configured JIT fields exist on the instance, else the sync does
        not run (an instance drops a condition on an unknown field: every change would be read)."""
        if self._fields_checked:
            return
        missing = self.tickets.missing_fields()
        if missing:
            names = {self.tickets.target_field: "target_field", self.tickets.role_field: "role_field"}
            raise ServiceNowError(f"servicenow.{names[missing[0]]}: {missing[0]!r} is not a field of change_request "
                                  "on this instance; the sync does not run until it is (README, least privilege)")
        if missing is None:
            log.warning("cannot tell whether change_request has %s and %s (no change readable, no sys_dictionary "
                        "access); reading on", self.tickets.target_field, self.tickets.role_field)
        self._fields_checked = True

    def _read(self, run: _Run) -> Iterator[tuple[Ticket, TicketFacts | None]]:
        """The changes since the watermark, each with ServiceNow's facts for the policy (None for a
        closed one), a page at a time. Runs in the read-ahead thread, so the group, blackout and
        approver lookups do too."""
        now = run.now
        page: list[Ticket] = []
        try:
            for t in self.tickets.changes_since(run.watermark - REREAD):
                page.append(t)
                if len(page) == PAGE:
                    yield from self._with_facts(run, page, now)
                    page = []
        except ServiceNowError:
            yield from self._with_facts(run, page, now)  # what was read before the error is still decided
            raise
        yield from self._with_facts(run, page, now)

    def _with_facts(self, run: _Run, page: list[Ticket], now: datetime) -> list[tuple[Ticket, TicketFacts | None]]:
        """A page of changes with their facts; those whose approval may count for their tier (approved,
        open, a target whose tier says so) also with who approved them in ServiceNow and what was
        edited since (``Tickets.approvals_many``: a few queries for the page, not one per change)."""
        counting = [t for t in page if t.approval == "approved" and not t.closed and self._approval_may_count(t)]
        found = self.tickets.approvals_many(counting) if counting else {}
        page = [replace(t, approvals=found[t.sys_id]) if t.sys_id in found else t for t in page]
        return [(t, None if t.closed else self.gateway.from_ticket(t, max(now, t.start or now), t.end or now,
                                                                    run.cache)) for t in page]

    def _approval_may_count(self, ticket: Ticket) -> bool:
        target = self.lifecycle.policy.targets.get(ticket.jit_target or "")
        tier = self.lifecycle.policy.tiers.get(target.tier) if target else None
        return bool(tier and tier.servicenow_approval_counts)

    def _handle(self, run: _Run, page: list[tuple[Ticket, TicketFacts | None]]) -> None:
        """Decide a page of changes: end the requests of closed ones, turn the others into requests
        (one transaction for the page); then move the run's watermark past them."""
        for ticket, _ in page:
            run.read += 1
            if ticket.updated_on is None or ticket.updated_on > run.watermark:  # not a re-read of the last second
                run.fresh += 1
                if run.fresh == 1 and ticket.updated_on:
                    run.behind = max(0.0, (run.now - ticket.updated_on).total_seconds())
        run.seen.update(t.sys_id for t, _ in page)
        closed = [(t.number, t.sys_id) for t, facts in page
                  if facts is None and ((t.number, t.sys_id) in run.linked or (t.number, None) in run.linked)]
        if closed:
            run.ended += len(self.lifecycle.end_for_closed_tickets(closed, "was closed"))
        followed = [t for t, facts in page if facts is not None and (t.number, t.sys_id) in run.linked]
        if followed:  # changed after requests were made from them: rejected, moved, shortened
            run.ended += len(self.lifecycle.follow_changed_tickets(followed))
        wanted = [(t, facts) for t, facts in page if facts is not None]
        for (ticket, _), result in zip(wanted, self.lifecycle.submit_from_tickets(wanted)):
            if isinstance(result, Refused):
                run.refused += 1
                run.errors.append(f"{ticket.number}: {result.rule}: {result.message}")
            elif result is not None:
                run.created += 1
        run.mark = max([run.mark] + [t.updated_on for t, _ in page if t.updated_on])

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


def read_ahead(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size``, read by a thread one list ahead of the caller: the sync
    decides a page while the next is on its way from ServiceNow. An error while reading comes
    after the items read before it; a caller that stops early stops the thread."""
    pages: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        page: list[T] = []
        try:
            for item in items:
                page.append(item)
                if len(page) == size:
                    if not put(("page", page)):
                        return
                    page = []
            put(("page", page)) and put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            put(("page", page)) and put(("error", exc))

    reader = threading.Thread(target=read, name="sync-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = pages.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            if value:
                yield value
    finally:
        stop.set()
        reader.join()

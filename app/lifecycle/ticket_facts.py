"""Looks tickets up in ServiceNow and hands the policy plain facts; never raises for an outage."""
from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from datetime import datetime, timedelta
from typing import Iterable

from integrations.servicenow.errors import ServiceNowError
from integrations.servicenow.model import NUMBER_RE, SYS_ID_RE, Ticket
from policies.decision import TicketFacts

if TYPE_CHECKING:
    from integrations.servicenow.tickets import Tickets

log = logging.getLogger("jit.tickets")
BLACKOUT_HORIZON = timedelta(days=400)  # a sync run reads the blackouts this far ahead once
KINDS = {"change_request": "change", "incident": "incident", "sc_req_item": "item"}


class TicketGateway:
    def __init__(self, tickets: Tickets) -> None:
        self.tickets = tickets

    def facts(self, number: str, start: datetime, end: datetime) -> TicketFacts | None:
        """Facts for the policy; None when the number is not even well-formed (the format check says so)."""
        if not NUMBER_RE.fullmatch(number or ""):
            return None
        try:
            ticket = self.tickets.find(number)
            if ticket is None:
                return TicketFacts(number=number, status="missing")
            return self.from_ticket(ticket, start, end)
        except ServiceNowError as exc:
            log.warning("ticket %s not validated: %s", number, exc)
            return TicketFacts(number=number, status="unavailable", error=str(exc))

    def facts_many(self, wanted: Iterable[tuple[str | None, datetime, datetime]]) -> list[TicketFacts | None]:
        """``facts`` for many (number, start, end) at once: one read of the tickets (``find_many``),
        their groups and blackouts read once. ServiceNow not answering makes each "unavailable"."""
        wanted = list(wanted)
        numbers = [n for n, _, _ in wanted if n and NUMBER_RE.fullmatch(n)]
        try:
            found = self.tickets.find_many(numbers) if numbers else {}
            cache: dict = {}
            return [None if not (n and NUMBER_RE.fullmatch(n)) else
                    self.from_ticket(found[n], start, end, cache) if n in found else
                    TicketFacts(number=n, status="missing") for n, start, end in wanted]
        except ServiceNowError as exc:
            log.warning("%d ticket(s) not validated: %s", len(numbers), exc)
            return [TicketFacts(number=n, status="unavailable", error=str(exc)) if n and NUMBER_RE.fullmatch(n)
                    else None for n, _, _ in wanted]

    def from_ticket(self, ticket: Ticket, start: datetime, end: datetime, cache: dict | None = None) -> TicketFacts:
        """The policy's facts for a ticket. With ``cache`` (one dict per sync run) group members and
        blackouts are read from ServiceNow once per run instead of once per ticket."""
        key = ("members", ticket.group)
        members = cache.get(key) if cache is not None else None
        if members is None:
            # a group reference that is no sys_id names no group: no members (asking would raise and stop the sync)
            members = frozenset(self.tickets.group_members(ticket.group)
                                if SYS_ID_RE.fullmatch(ticket.group or "") else ())
            if cache is not None:
                cache[key] = members
        blackouts = tuple((name, s, e) for name, s, e, ci in self._blackouts(start, end, cache)
                          if ci is None or ci == ticket.cmdb_ci) if ticket.table == "change_request" else ()
        return TicketFacts(number=ticket.number, sys_id=ticket.sys_id, status="found", kind=KINDS[ticket.table],
                           state=ticket.state,
                           approval=ticket.approval, start=ticket.start, end=ticket.end, assignee=ticket.assignee,
                           group_name=ticket.group_name, group_members=members, blackouts=blackouts,
                           active=ticket.active)

    def _blackouts(self, start: datetime, end: datetime, cache: dict | None) -> list:
        """Blackouts overlapping [start, end): from the run's one read of every blackout ahead of the
        run's first window, filtered exactly as the query filters, when ``cache`` is given."""
        if cache is None:
            return self.tickets.blackouts(start, end)
        lo, hi, ahead = cache.get("blackouts", (None, None, None))
        if lo is None or start < lo or end > hi:
            lo = min(start, cache.get("from", start))  # the sync puts its run's start here: no window is earlier
            hi = lo + BLACKOUT_HORIZON
            if end > hi:
                return self.tickets.blackouts(start, end)
            ahead = self.tickets.blackouts(lo, hi)
            cache["blackouts"] = (lo, hi, ahead)
        return [b for b in ahead if b[1] < end and start < b[2]]

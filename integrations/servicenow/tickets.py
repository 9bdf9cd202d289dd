"""What the product asks of ServiceNow, in its own terms: tickets, windows, notes, changes.

Queries are built with pysnow's ``QueryBuilder``. It does not escape ``^`` inside values,
so every value is first checked against a strict pattern (ticket numbers, sys_ids, user
names, our own timestamp format) and anything else is refused before a query is built.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import pysnow

from integrations.servicenow.client import ServiceNowClient, ServiceNowError
from integrations.servicenow.model import (CLOSED_CHANGE, CLOSED_INCIDENT, FIELD_RE, NUMBER_RE,  # noqa: F401
                                           SN_TIME, SN_TIME_RE, SYS_ID_RE, TABLES, USER_RE, ChangeApprovals,
                                           Ticket)
from integrations.servicenow.model import LONE_SURROGATE as _LONE_SURROGATE
from integrations.servicenow.schedules import SPAN_FIELDS, ScheduleError, span_of, windows, zone
from policies.names import TARGET

_CI_RE = re.compile(TARGET)  # a configuration item is named as the target it is
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ALL_TIME = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc))


def sn_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(SN_TIME)


def parse_sn_time(value: str) -> datetime | None:
    try:
        if SN_TIME_RE.fullmatch(value):  # the form ServiceNow sends: 6x faster than strptime
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        return datetime.strptime(value, SN_TIME).replace(tzinfo=timezone.utc) if value else None
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    """pysnow formats datetimes itself (as UTC); hand it naive UTC so no offset is misread."""
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ServiceNowError(f"{what} {value!r} is not valid")
    return value


class Tickets:
    """The product's ServiceNow operations over a ``ServiceNowClient``."""

    FIELDS = ["sys_id", "number", "state", "approval", "type", "start_date", "end_date", "assigned_to.user_name",
              "assignment_group", "assignment_group.name", "cmdb_ci.name", "sys_updated_on", "active"]

    def __init__(self, client: ServiceNowClient, *, target_field: str = "u_jit_target",
                 role_field: str = "u_jit_role") -> None:
        self.client = client
        self.target_field = _check(FIELD_RE, target_field, "target field")
        self.role_field = _check(FIELD_RE, role_field, "role field")

    def _ticket(self, table: str, row: dict[str, Any]) -> Ticket:
        def text(key: str) -> str | None:
            value = row.get(key)
            if isinstance(value, dict):
                value = value.get("value")
            if value in (None, ""):
                return None
            value = str(value)
            # JSON may carry lone surrogates ("\ud800"); they cannot be stored, hashed or printed as UTF-8
            return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
        return Ticket(number=text("number") or "", table=table, sys_id=text("sys_id") or "",
                      state=text("state") or "", approval=text("approval") or "", type=text("type") or "",
                      start=parse_sn_time(text("start_date") or ""), end=parse_sn_time(text("end_date") or ""),
                      assignee=text("assigned_to.user_name"), group=text("assignment_group"),
                      group_name=text("assignment_group.name"), cmdb_ci=text("cmdb_ci.name"),
                      jit_target=text(self.target_field), jit_role=text(self.role_field),
                      updated_on=parse_sn_time(text("sys_updated_on") or ""),
                      active=(text("active") or "true").lower() not in ("false", "0"))

    def find(self, number: str) -> Ticket | None:
        """The change, incident or requested item with this number, or None."""
        _check(NUMBER_RE, number, "ticket number")
        table = TABLES[number[:3] if number[:3] in TABLES else number[:4]]
        q = pysnow.QueryBuilder().field("number").equals(number)
        row = self.client.find_one(table, str(q), self.FIELDS + [self.target_field, self.role_field])
        return self._ticket(table, row) if row else None

    def find_many(self, numbers: Iterable[str], chunk: int = 200) -> dict[str, Ticket]:
        """The tickets with these numbers that exist, by number: one query per table and ``chunk``
        numbers (``numberIN...``), not one per ticket. Numbers that are not well-formed are skipped."""
        return self._find_in("number", ((n, n) for n in numbers if isinstance(n, str)), chunk)

    def find_many_by_sys_id(self, tickets: Iterable[tuple[str, str]], chunk: int = 200) -> dict[str, Ticket]:
        """The tickets ((number, sys_id): the number says the table) that exist, by sys_id: one query
        per table and ``chunk`` (``sys_idIN...``). Pairs not well-formed are skipped."""
        return self._find_in("sys_id", ((n, i) for n, i in tickets
                                        if isinstance(i, str) and SYS_ID_RE.fullmatch(i)), chunk)

    def _find_in(self, key: str, wanted: Iterable[tuple[str, str]], chunk: int) -> dict[str, Ticket]:
        """Tickets by ``key`` (number or sys_id) for (number, value) pairs, ``keyIN`` per table and chunk."""
        by_table: dict[str, list[str]] = {}
        for number, value in dict.fromkeys(wanted):
            if isinstance(number, str) and NUMBER_RE.fullmatch(number):
                by_table.setdefault(TABLES[number[:3] if number[:3] in TABLES else number[:4]], []).append(value)
        found: dict[str, Ticket] = {}
        for table, values in by_table.items():
            for i in range(0, len(values), chunk):
                q = pysnow.QueryBuilder().field(key).equals(values[i:i + chunk])
                for row in self.client.query(table, str(q), self.FIELDS + [self.target_field, self.role_field]):
                    ticket = self._ticket(table, row)
                    found[getattr(ticket, key)] = ticket
        return found

    def bound_fields(self) -> tuple[str, ...]:
        """The change's fields an approval is given for: editing one afterwards voids the approval."""
        return (self.target_field, self.role_field, "start_date", "end_date", "assigned_to", "assignment_group",
                "cmdb_ci")

    def approvals_many(self, changes: Iterable[Ticket], chunk: int = 200) -> dict[str, ChangeApprovals]:
        """``ChangeApprovals`` for these changes, by sys_id. Per ``chunk`` changes: one query for
        their approved approvers (``sysapproval_approver``, ``sysapprovalIN``) and one of
        ``sys_audit`` for updates of their bound fields (``documentkeyIN``, after the insert); only
        for the changes that were edited, one more for when each approval was given (its state
        audited). A change never edited after it was created needs no approval times."""
        ids = list(dict.fromkeys(t.sys_id for t in changes if SYS_ID_RE.fullmatch(t.sys_id or "")))
        bound = self.bound_fields()
        out: dict[str, ChangeApprovals] = {}
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            q = pysnow.QueryBuilder().field("sysapproval").equals(part).AND().field("state").equals("approved")
            rows = [(r.get("sys_id", ""), r.get("sysapproval", ""), r.get("approver.user_name", ""))
                    for r in self.client.query("sysapproval_approver", str(q),
                                               ["sys_id", "sysapproval", "approver.user_name"])]
            rows = [(a, c, u) for a, c, u in rows if SYS_ID_RE.fullmatch(a) and SYS_ID_RE.fullmatch(c) and u]
            edits: dict[str, list[tuple[str, datetime]]] = {}
            q = (pysnow.QueryBuilder().field("documentkey").equals(part).AND().field("fieldname").equals(list(bound))
                 .AND().field("record_checkpoint").greater_than(0))  # updates, not the insert
            for key, name, _, at in self._audited(q):
                if key in part and name in bound:
                    edits.setdefault(key, []).append((name, at))
            approved_at: dict[str, datetime] = {}
            asked = [a for a, c, _ in rows if c in edits]
            for k in range(0, len(asked), chunk):
                q = (pysnow.QueryBuilder().field("documentkey").equals(asked[k:k + chunk]).AND()
                     .field("fieldname").equals("state").AND().field("newvalue").equals("approved"))
                for key, _, _, at in self._audited(q):
                    approved_at[key] = max(at, approved_at.get(key, at))  # the latest time it was approved
            by_change: dict[str, list[tuple[str, datetime | None]]] = {}
            for a, c, u in rows:
                by_change.setdefault(c, []).append((u, approved_at.get(a)))
            for change in part:
                out[change] = ChangeApprovals(
                    approvers=tuple(sorted(by_change.get(change, ()), key=lambda p: (p[1] is None, p[1] or _EPOCH,
                                                                                     p[0]))),
                    edits=tuple(sorted(edits.get(change, []), key=lambda e: e[1])))
        return out

    def _audited(self, q: pysnow.QueryBuilder) -> Iterator[tuple[str, str, str, datetime]]:
        """``sys_audit`` rows: (documentkey, fieldname, newvalue, when)."""
        for r in self.client.query("sys_audit", str(q), ["documentkey", "fieldname", "newvalue", "sys_created_on"]):
            at = parse_sn_time(r.get("sys_created_on", ""))
            if at is not None:
                yield r.get("documentkey", ""), r.get("fieldname", ""), r.get("newvalue", ""), at

    def group_members(self, group_sys_id: str) -> set[str]:
        _check(SYS_ID_RE, group_sys_id, "group sys_id")
        q = pysnow.QueryBuilder().field("group").equals(group_sys_id)
        return {r["user.user_name"] for r in self.client.query("sys_user_grmember", str(q), ["user.user_name"])
                if r.get("user.user_name")}

    def blackouts(self, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime, str | None]]:
        """Blackout windows overlapping [start, end): (name, start, end, CI name or None for all), from
        the entries (``cmn_schedule_span``) of every blackout schedule (``cmn_schedule_blackout``),
        in each schedule's time zone, repeats expanded (``schedules.py``). An entry that cannot be
        read for sure (a repeat not understood, fields the instance does not have) becomes one
        window over all time, named with the reason: the blackout check fails closed."""
        schedules = {r.get("sys_id", ""): r for r in self.client.query(
            "cmn_schedule_blackout", "", ["sys_id", "name", "time_zone", "cmdb_ci.name"])}
        schedules = {k: v for k, v in schedules.items() if SYS_ID_RE.fullmatch(k)}
        out: list[tuple[str, datetime, datetime, str | None]] = []
        ids = sorted(schedules)
        for i in range(0, len(ids), 200):
            q = pysnow.QueryBuilder().field("schedule").equals(ids[i:i + 200])
            for row in self.client.query("cmn_schedule_span", str(q), ["sys_id", *SPAN_FIELDS]):
                owner = schedules.get(str(row.get("schedule", "")))
                label = str(owner.get("name") or "blackout") if owner else "blackout"
                try:
                    span = span_of(row)
                    found = windows(span, zone(owner.get("time_zone") if owner else None), start, end)
                except ScheduleError as exc:
                    out.append((f"{label}: {exc}; the blackout check fails closed", _ALL_TIME[0], _ALL_TIME[1], None))
                    continue
                ci = (owner or {}).get("cmdb_ci.name") or None
                out += [(f"{label}" if span.name in ("", "blackout", label) else f"{label}: {span.name}", s, e, ci)
                        for s, e in found]
        return sorted(out, key=lambda b: (b[1], b[0]))

    def missing_fields(self) -> list[str] | None:
        """The configured JIT fields ``change_request`` does not have on the instance (an instance
        drops a condition on an unknown field, so ``ISNOTEMPTY`` on one would read every change):
        read on one change (an instance leaves unknown fields out of a record), else, with no
        change to read, in ``sys_dictionary``; None when neither can tell (no change, no access)."""
        wanted = (self.target_field, self.role_field)
        rows = self.client.page("change_request", "ORDERBYsys_id", ["sys_id", *wanted], 1).rows
        if rows:
            return [f for f in wanted if f not in rows[0]]
        try:
            q = pysnow.QueryBuilder().field("name").equals("change_request").AND().field("element").equals(list(wanted))
            found = {r.get("element") for r in self.client.query("sys_dictionary", str(q), ["element"])}
        except ServiceNowError as exc:
            if exc.transient:
                raise
            return None
        return [f for f in wanted if f not in found]

    def changes_since(self, watermark: datetime) -> Iterator[Ticket]:
        """Change requests updated at or after ``watermark`` that carry JIT fields, oldest first, in
        ``(sys_updated_on, sys_id)`` order, by keyset: each page asks for the rows after the last
        one read (``sys_updated_on`` equal and ``sys_id`` greater, or ``sys_updated_on`` later; one
        query, ``^NQ``), never for an offset, so a change edited while the sync pages moves later
        and is read there, rows equal to the second are ordered by ``sys_id``, and a page an ACL
        made short does not end the read: the instance's count of matches past the page does (or,
        where it sends none, an empty page)."""
        wanted = f"{self.target_field}ISNOTEMPTY"
        order = "ORDERBYsys_updated_on^ORDERBYsys_id"
        fields = self.FIELDS + [self.target_field, self.role_field, "sys_mod_count"]
        query, offset = f"sys_updated_on>={sn_time(watermark)}^{wanted}^{order}", 0
        while True:
            page = self.client.page("change_request", query, fields, self.client.page_size, offset)
            rows = page.rows
            if not rows:
                if not page.more:
                    return
                offset += self.client.page_size  # a whole page hidden by ACLs: past it, from the same row
                continue
            offset = 0
            for row in rows:
                yield self._ticket("change_request", row)
            if page.more is False:
                return  # none match past this page (a change edited since is later: the next run reads it)
            at, last = str(rows[-1].get("sys_updated_on", "")), str(rows[-1].get("sys_id", ""))
            if not (SN_TIME_RE.fullmatch(at) and SYS_ID_RE.fullmatch(last)):
                raise ServiceNowError(f"change_request row without a usable sys_updated_on/sys_id ({at!r}, {last!r})")
            query = f"sys_updated_on={at}^sys_id>{last}^{wanted}^NQsys_updated_on>{at}^{wanted}^{order}"

    def add_work_note(self, table: str, sys_id: str, text: str, marker: str) -> bool:
        """Append a work note once: a note carrying ``marker`` already in the record's work notes is not
        written again. The notes are read on the record itself (its ``work_notes`` display value),
        which any user allowed to note the record may read; ``sys_journal_field`` needs a role the
        integration user need not have, and an ACL there answers 403 or, worse, an empty 200.

        Returns True when written now, False when it was already there (a retry after a timeout)."""
        _check(SYS_ID_RE, sys_id, "sys_id")
        _check(re.compile(r"^\[jit:[a-z0-9.:-]{1,80}\]$"), marker, "note marker")
        for attempt in range(1, self.client.retries + 2):
            notes = self.client.journal(table, sys_id, "work_notes")
            if notes is None:
                raise ServiceNowError(f"{table} {sys_id} cannot be read: the note cannot be written once")
            if marker in notes:
                return attempt > 1  # written by our own earlier attempt whose answer was lost
            try:
                self.client.update(table, sys_id, {"work_notes": f"{text}\n{marker}"}, retry=False)
                return True
            except ServiceNowError as exc:
                if not exc.transient or attempt > self.client.retries:
                    raise
                self.client.pause(attempt)
        raise AssertionError("unreachable")

    def find_change_by_marker(self, marker: str) -> Ticket | None:
        """The change whose description carries ``marker`` (one we created before an answer was lost)."""
        _check(re.compile(r"^\[jit:[a-z0-9.:-]{1,80}\]$"), marker, "change marker")
        q = pysnow.QueryBuilder().field("description").contains(marker)
        row = self.client.find_one("change_request", str(q), self.FIELDS + [self.target_field, self.role_field])
        return self._ticket("change_request", row) if row else None

    def create_change(self, *, short_description: str, description: str, emergency: bool, assignee: str,
                      start: datetime, end: datetime, cmdb_ci: str | None) -> Ticket:
        _check(USER_RE, assignee, "assignee")
        user = self.client.find_one("sys_user", str(pysnow.QueryBuilder().field("user_name").equals(assignee)),
                                    ["sys_id"])
        payload = {"short_description": short_description[:160], "description": description,
                   "type": "emergency" if emergency else "normal", "start_date": sn_time(start),
                   "end_date": sn_time(end), "assigned_to": user["sys_id"] if user else ""}
        if cmdb_ci:
            _check(_CI_RE, cmdb_ci, "configuration item")
            ci = self.client.find_one("cmdb_ci", str(pysnow.QueryBuilder().field("name").equals(cmdb_ci)), ["sys_id"])
            if ci:
                payload["cmdb_ci"] = ci["sys_id"]
        row = self.client.create("change_request", payload, retry=False)  # the outbox retries via the marker
        found = self.find(row["number"])
        if found is None:
            raise ServiceNowError(f"change {row.get('number')} vanished after it was created")
        return found

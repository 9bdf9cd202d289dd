"""What each host's agent last reported it holds, kept in ``host_report`` (one row per host) and in
memory, with a way to wait until a report says what the ``agent`` backend needs to hear.

A report replaces the host's previous one. This process's own reports wake its waiters at once;
one written by another server process on the same database is read within ``REFRESH`` seconds."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from sqlmodel import select

from app.clock import Clock
from app.store import HostReportRow, Store

REFRESH = 1.0  # seconds a report read from the database is trusted before it is read again


@dataclass(frozen=True)
class Held:
    """One drop-in a host says it holds."""

    grant_id: int
    person: str
    not_before: datetime | None
    not_after: datetime | None
    ref: str

    def to_json(self) -> dict[str, Any]:
        return {"grant_id": self.grant_id, "person": self.person, "ref": self.ref,
                "not_before": self.not_before.isoformat() if self.not_before else None,
                "not_after": self.not_after.isoformat() if self.not_after else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Held":
        when = (lambda v: datetime.fromisoformat(v) if v else None)
        return cls(int(d["grant_id"]), str(d["person"]), when(d.get("not_before")), when(d.get("not_after")),
                   str(d.get("ref", "")))


@dataclass(frozen=True)
class Report:
    host: str
    held: dict[int, Held]
    refused: dict[int, str]  # grant id -> why the host would not write it
    reported_at: datetime


def _report(row: HostReportRow) -> Report:
    return Report(row.host, {h.grant_id: h for h in map(Held.from_json, row.held)},
                  {int(r["grant_id"]): str(r["error"]) for r in row.refused}, row.reported_at)


class HostReports:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self._known: dict[str, tuple[float, Report | None]] = {}  # host -> (monotonic read time, report)
        self._changed = threading.Condition()

    def record(self, host: str, held: list[Held], refused: Mapping[int, str]) -> Report:
        """Replace ``host``'s report (committed before this returns) and wake whoever waits on it."""
        now = self.clock()
        with self.store.transaction() as s:
            row = s.get(HostReportRow, host, with_for_update=True)
            if row is None:
                row = HostReportRow(host=host, held=[], refused=[], reported_at=now)
            row.held = [h.to_json() for h in held]
            row.refused = [{"grant_id": g, "error": e} for g, e in sorted(refused.items())]
            row.reported_at = now
            s.add(row)
        report = Report(host, {h.grant_id: h for h in held}, dict(refused), now)
        with self._changed:
            self._known[host] = (time.monotonic(), report)
            self._changed.notify_all()
        return report

    def of(self, host: str) -> Report | None:
        """``host``'s newest report (None: it never reported)."""
        known = self._known.get(host)
        if known is not None and time.monotonic() - known[0] < REFRESH:
            return known[1]
        with self.store.transaction() as s:
            row = s.get(HostReportRow, host)
            report = None if row is None else _report(row)
        with self._changed:
            newer = self._known.get(host)
            if newer is not None and newer[1] is not None and (report is None
                                                                or newer[1].reported_at > report.reported_at):
                report = newer[1]  # recorded here while the row was being read
            self._known[host] = (time.monotonic(), report)
        return report

    def all(self) -> list[Report]:
        with self.store.transaction() as s:
            rows = s.exec(select(HostReportRow).order_by(HostReportRow.host)).all()
            return [_report(r) for r in rows]

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Until ``done()`` (True) or ``timeout`` seconds (False); ``done`` is asked again after
        every report this process records, and at least every quarter second."""
        deadline = time.monotonic() + timeout
        while True:
            if done():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, 0.25))

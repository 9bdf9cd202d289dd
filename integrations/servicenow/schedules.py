"""Blackout windows as a ServiceNow instance keeps them: schedule entries (``cmn_schedule_span``)
under a blackout schedule (``cmn_schedule_blackout``), each a start and end in the schedule's time
zone (GlideScheduleDateTime, ``20261224T180000``), optionally repeated. Pure: the caller reads
the rows; this turns them into UTC windows over a period.

Repeats understood: none, ``daily``, ``weekdays``, ``weekends``, and ``weekly`` on ``days_of_week``
(``1`` Monday .. ``7`` Sunday), every ``repeat_count`` days or weeks, until ``repeat_until`` (a
date, inclusive; none: for ever). Anything else (``monthly``, ``yearly``, ...) raises
``ScheduleError``: the caller then fails the blackout check closed rather than guess."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SPAN_FIELDS = ("schedule", "name", "start_date_time", "end_date_time", "repeat_type", "repeat_count",
               "days_of_week", "repeat_until", "all_day")
_GLIDE = re.compile(r"(\d{8})T(\d{6})(Z?)")
_DAILY = {"daily": frozenset(range(1, 8)), "weekdays": frozenset(range(1, 6)), "weekends": frozenset((6, 7))}


class ScheduleError(ValueError):
    """A schedule entry this module cannot read for sure."""


@dataclass(frozen=True)
class Span:
    name: str
    start: datetime  # naive, in the schedule's zone (aware UTC when the value ended in Z)
    end: datetime
    repeat: str
    every: int
    days: frozenset[int]
    until: date | None


def _glide(value: Any, what: str) -> datetime:
    m = _GLIDE.fullmatch(str(value or ""))
    if not m:
        raise ScheduleError(f"{what} {str(value)[:40]!r} is not a schedule date-time (20261224T180000)")
    parsed = datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")
    return parsed.replace(tzinfo=timezone.utc) if m.group(3) else parsed


def span_of(row: Mapping[str, Any]) -> Span:
    """One ``cmn_schedule_span`` row; ``ScheduleError`` naming what is missing or not understood."""
    missing = [f for f in SPAN_FIELDS if f not in row]
    if missing:
        raise ScheduleError(f"cmn_schedule_span has no {missing[0]} field here (not the schema jit reads)")
    name = str(row.get("name") or "blackout")
    start, end = _glide(row["start_date_time"], "start_date_time"), _glide(row["end_date_time"], "end_date_time")
    if str(row.get("all_day")).lower() == "true":
        start, end = datetime.combine(start.date(), time(), start.tzinfo), \
            datetime.combine(end.date(), time(), end.tzinfo) + timedelta(days=1)
    if end <= start:
        raise ScheduleError(f"entry {name!r} ends before it starts")
    repeat = str(row.get("repeat_type") or "")
    if repeat not in ("", "daily", "weekdays", "weekends", "weekly"):
        raise ScheduleError(f"entry {name!r} repeats {repeat!r}, which jit does not read")
    count = str(row.get("repeat_count") or "1")
    if not count.isdigit() or int(count) < 1:
        raise ScheduleError(f"entry {name!r} has repeat_count {count!r}")
    days = _DAILY.get(repeat) or frozenset(int(d) for d in str(row.get("days_of_week") or "") if d in "1234567")
    if repeat == "weekly" and not days:
        days = frozenset((start.isoweekday(),))
    until = str(row.get("repeat_until") or "")
    if until and not re.fullmatch(r"\d{8}", until):
        raise ScheduleError(f"entry {name!r} has repeat_until {until!r}")
    return Span(name, start, end, repeat, int(count), days, datetime.strptime(until, "%Y%m%d").date() if until else None)


def zone(name: str | None) -> ZoneInfo | timezone:
    if not name or name in ("UTC", "GMT", "Etc/UTC"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"time zone {name[:60]!r} is not known here") from None


def windows(span: Span, tz: ZoneInfo | timezone, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The span's occurrences overlapping [start, end), in UTC."""
    def utc(local: datetime) -> datetime:
        return local.astimezone(timezone.utc) if local.tzinfo else local.replace(tzinfo=tz).astimezone(timezone.utc)

    length = span.end - span.start
    if not span.repeat:
        s, e = utc(span.start), utc(span.end)
        return [(s, e)] if s < end and start < e else []
    out = []
    first = span.start.date()
    day = max(first, (start - length - timedelta(days=1)).astimezone(timezone.utc).date())
    last = (end + timedelta(days=1)).date()
    if span.until is not None:
        last = min(last, span.until)
    while day <= last:
        offset = (day - first).days
        due = (span.days and day.isoweekday() in span.days and
               ((offset // 7) % span.every == 0 if span.repeat == "weekly" else offset % span.every == 0
                if span.repeat == "daily" else True))
        if due:
            local = datetime.combine(day, span.start.timetz().replace(tzinfo=None), span.start.tzinfo)
            s = utc(local)
            e = s + length if span.start.tzinfo else utc(local + length)
            if s < end and start < e:
                out.append((s, e))
        day += timedelta(days=1)
    return out

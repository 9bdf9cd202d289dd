"""How times, durations and countdowns read on screen. Pure functions, no Textual."""
from __future__ import annotations

from datetime import datetime, timedelta

from app.domain.console import clip as words
from policies.durations import format_duration, parse_duration

WARNING_BEFORE = timedelta(minutes=15)
ERROR_BEFORE = timedelta(minutes=5)
COUNTDOWN_WIDTH = 12  # "hhh:mm:ss" right-aligned (9) + space + marker (2): the column never changes width

# Markers say in text what the colours say, so the console reads the same without colour.
MARKERS = {"ok": "  ", "warning": "! ", "error": "!!", "expired": "XX"}


def duration(delta: timedelta) -> str:
    return format_duration(delta)


def duration_error(text: str) -> str | None:
    """None when ``text`` is a duration such as 1h or 90m, else a sentence saying what is wrong."""
    try:
        parse_duration(text)
    except ValueError as exc:
        return str(exc)
    return None


def urgency(left: timedelta) -> str:
    """ok, warning (under 15 minutes), error (under 5 minutes) or expired."""
    if left <= timedelta(0):
        return "expired"
    if left < ERROR_BEFORE:
        return "error"
    if left < WARNING_BEFORE:
        return "warning"
    return "ok"


def countdown(left: timedelta) -> tuple[str, str]:
    """The fixed-width countdown cell for time ``left`` and its urgency, e.g. ``('  0:04:59 !!', 'error')``."""
    level = urgency(left)
    if level == "expired":
        body = "expired"
    else:
        total = int(left.total_seconds())
        hours, rest = divmod(total, 3600)
        minutes, seconds = divmod(rest, 60)
        body = f"{hours}:{minutes:02d}:{seconds:02d}" if hours < 1000 else f"{hours // 24}d"
    return f"{body:>9} {MARKERS[level]}", level


def age(delta: timedelta) -> str:
    """How long ago, to the minute: ``45s``, ``12m``, ``2h05m``, ``3d04h``."""
    total = max(0, int(delta.total_seconds()))
    if total < 60:
        return f"{total}s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def clock_time(at: datetime | None) -> str:
    return at.strftime("%H:%M:%S") if at else "-"


def stamp(at: datetime | None) -> str:
    """An instant in UTC, to the second: ``2026-11-24 10:00:00Z``."""
    return at.strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def table_stamp(at: datetime | None) -> str:
    """An instant in UTC, to the second, without the year (a table's column): ``11-24 10:00:00Z``."""
    return at.strftime("%m-%d %H:%M:%SZ") if at else "-"


def short_stamp(at: datetime | None) -> str:
    """An instant in UTC, to the minute, without the year: ``11-24 09:50Z``."""
    return at.strftime("%m-%d %H:%MZ") if at else "-"


def clip(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters: cut after a whole word where one ends in
    the last third, with an ellipsis."""
    return words(" ".join(text.split()), width)


ENVIRONMENTS = {"production": "prod", "non-production": "nonprod"}


def env_risk(environment: str | None, tier: str | None) -> str:
    env = ENVIRONMENTS.get(environment or "", environment or "?")
    return f"{env}/{tier or '?'}"

"""Durations as people write them: ``90s``, ``15m``, ``2h``, ``1h30m``, ``1d``."""
from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([smhd])")
_WHOLE = re.compile(r"^(?:\d+[smhd])+$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """Parse ``text``; raise ValueError with a sentence saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '2h' or '15m', got {type(text).__name__}")
    value = text.strip().lower()
    if not value or not _WHOLE.match(value):
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '15m', '2h' or '1h30m'")
    seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    result = timedelta(seconds=seconds)
    if result > MAX:
        raise ValueError(f"{text!r} is longer than a year")
    return result


def format_duration(delta: timedelta) -> str:
    """``timedelta(hours=1, minutes=30)`` -> ``1h30m``."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)

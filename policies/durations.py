"""Durations as people write them: ``90s``, ``15m``, ``2h``, ``1h30m``, ``1d``."""
from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

# Units in order, each at most once, ASCII digits only: '1h30m' yes, '1h1h' or '30m1h' no.
_FORMAT = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", re.ASCII)
MAX = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """Parse ``text``; raise ValueError with a sentence saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '2h' or '15m', got {type(text).__name__}")
    value = text.strip().lower()
    match = _FORMAT.fullmatch(value)
    if not value or not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '15m', '2h' or '1h30m'")
    d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if seconds > MAX.total_seconds():
        raise ValueError(f"{text!r} is longer than a year")
    return timedelta(seconds=seconds)


@lru_cache(maxsize=4096)  # pure, and called for every decision with a handful of distinct values
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

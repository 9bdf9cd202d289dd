"""policies.durations: parse_duration and format_duration."""
from __future__ import annotations

from datetime import timedelta

import pytest

from policies.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)),
    ("15m", timedelta(minutes=15)),
    ("2h", timedelta(hours=2)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1d", timedelta(days=1)),
    (" 2H ", timedelta(hours=2)),
    ("366d", timedelta(days=366)),
])
def test_parse_valid(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "is not a duration"),
    ("   ", "is not a duration"),
    ("0m", "must be longer than zero"),
    ("0h0m", "must be longer than zero"),
    ("2x", "is not a duration"),
    ("-1h", "is not a duration"),
    ("h", "is not a duration"),
    ("1.5h", "is not a duration"),
    ("2 h", "is not a duration"),
    ("400d", "longer than a year"),
    ("367d", "longer than a year"),
    (None, "got NoneType"),
    (120, "got int"),
])
def test_parse_invalid(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(value)  # type: ignore[arg-type]


def test_parse_huge_is_value_error() -> None:
    with pytest.raises(ValueError, match="longer than a year"):
        parse_duration("1000000000d")


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=90), "1m30s"),
    (timedelta(minutes=15), "15m"),
    (timedelta(hours=1, minutes=30), "1h30m"),
    (timedelta(days=1, hours=2), "1d2h"),
    (timedelta(days=1, seconds=1), "1d1s"),
    (timedelta(0), "0s"),
    (timedelta(seconds=-5), "0s"),
])
def test_format(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize("delta", [
    timedelta(seconds=1), timedelta(seconds=90), timedelta(hours=8, minutes=1),
    timedelta(days=2, hours=3, minutes=4, seconds=5), timedelta(days=366),
])
def test_round_trip(delta: timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta

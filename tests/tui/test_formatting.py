"""How countdowns, ages and durations read: fixed width, with a text marker wherever colour says something."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.tui import formatting as fmt


@pytest.mark.parametrize(("left", "text", "level"), [
    (timedelta(hours=1, minutes=30), "  1:30:00   ", "ok"),
    (timedelta(minutes=15), "  0:15:00   ", "ok"),
    (timedelta(minutes=14, seconds=59), "  0:14:59 ! ", "warning"),
    (timedelta(minutes=4, seconds=59), "  0:04:59 !!", "error"),
    (timedelta(seconds=1), "  0:00:01 !!", "error"),
    (timedelta(0), "  expired XX", "expired"),
    (timedelta(seconds=-30), "  expired XX", "expired"),
    (timedelta(hours=123, minutes=4, seconds=5), "123:04:05   ", "ok"),
])
def test_countdown(left: timedelta, text: str, level: str) -> None:
    assert fmt.countdown(left) == (text, level)
    assert len(text) == fmt.COUNTDOWN_WIDTH


@pytest.mark.parametrize(("ago", "text"), [
    (timedelta(seconds=-5), "0s"), (timedelta(seconds=59), "59s"), (timedelta(minutes=12), "12m"),
    (timedelta(hours=2, minutes=5), "2h05m"), (timedelta(days=3, hours=4, minutes=9), "3d04h"),
])
def test_age(ago: timedelta, text: str) -> None:
    assert fmt.age(ago) == text


def test_duration_error_says_what_is_wrong() -> None:
    assert fmt.duration_error("90m") is None
    assert "is not a duration" in fmt.duration_error("soon")


def test_env_risk_and_clip() -> None:
    assert fmt.env_risk("production", "high") == "prod/high"
    assert fmt.env_risk("staging", None) == "staging/?"
    assert fmt.clip("nginx   down,\ncustomers affected", 12) == "nginx down…"  # after a whole word


def test_clip_cuts_after_a_whole_word_where_one_ends_late_enough() -> None:
    from app.tui.formatting import clip
    assert clip("restart nginx after the TLS renewal", 22) == "restart nginx after…"
    assert clip("restart nginx after the TLS renewal", 40) == "restart nginx after the TLS renewal"
    assert clip("supercalifragilisticexpialidocious", 10) == "supercali…"  # no word ends late enough
    assert clip("a  b\nc", 10) == "a b c"
    assert all(len(clip("word " * 30, n)) <= n for n in range(2, 60))


def test_history_details_read_as_words_not_python() -> None:
    import json
    from app.queries.console import _summary
    text = _summary(json.dumps({"approver": "bob", "groups": ["managers", "system-owners"],
                                "approvers": [{"person": "bob", "groups": ["managers"]}], "empty": []}))
    assert text == "approver: bob; groups: managers, system-owners; approvers: person bob, groups managers"
    assert "[" not in text and "'" not in text
    long = _summary(json.dumps({"reason": "restart nginx after the TLS renewal " * 10}), width=60)
    assert len(long) <= 60 and long.endswith("…")
    assert long[:-1].split()[-1] in "restart nginx after the TLS renewal".split()  # a whole word last


def test_a_ticket_state_reads_as_its_label_with_its_code() -> None:
    from policies.tickets import state_label
    assert state_label("change", "-1") == "Implement (-1)"
    assert state_label("incident", "6") == "Resolved (6)"
    assert state_label("item", "7") == "Closed Skipped (7)"
    assert state_label("change", "42") == "42" and state_label("", "-1") == "-1"

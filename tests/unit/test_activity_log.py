"""The activity log: one structured line per grant applied, failed or ended, only once committed."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from app.lifecycle.activity import line

H = timedelta(hours=1)
M = timedelta(minutes=1)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jit.activity"]


def test_a_grant_applied_and_released_gives_one_line_each(lifecycle, caplog):
    caplog.set_level(logging.INFO, logger="jit.activity")
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * M, "check the nginx config", None).request.id
    grant = lifecycle.get(rid).grant.id
    lifecycle.release("alice", rid)
    got = lines(caplog)
    assert got[0].startswith(f"grant.active request={rid} actor=engine requester=alice target=web-dev-01 "
                             f"role=service-admin backend=sudo grant={grant} ref=")
    assert got[1] == (f"request.released request={rid} actor=alice requester=alice target=web-dev-01 "
                      f"role=service-admin backend=sudo grant={grant} reason=\"task completed\"")
    assert len(got) == 2


def test_a_failed_apply_is_an_error_line(lifecycle, backend, caplog):
    caplog.set_level(logging.INFO, logger="jit.activity")
    backend.fail_apply = 10
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * M, "check the nginx config", None).request.id
    [record] = [r for r in caplog.records if r.name == "jit.activity"]
    assert record.levelno == logging.ERROR and record.getMessage().startswith(f"grant.failed request={rid} ")
    assert "error=" in record.getMessage()


def test_expiry_logs_each_grant_it_ends(lifecycle, clock, caplog):
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * M, "check the nginx config", None).request.id
    caplog.set_level(logging.INFO, logger="jit.activity")
    clock.advance(11 * M)
    lifecycle.expire_due()
    [got] = lines(caplog)
    assert got.startswith(f"request.expired request={rid} actor=engine requester=alice") and "lag_ms=" in got


def test_nothing_is_logged_for_a_transaction_that_rolls_back(lifecycle, store, caplog):
    from app.lifecycle import activity
    caplog.set_level(logging.INFO, logger="jit.activity")
    with pytest.raises(RuntimeError):
        with store.transaction() as s:
            activity.after_commit(s, "grant.active", "engine", 1, None, {"grant_id": 1})
            raise RuntimeError("rolled back")
    assert lines(caplog) == []


@pytest.mark.parametrize("value,written", [
    ("plain", "plain"), ("two words", '"two words"'), ('a"quote', '"a\\"quote"'),
    ("x=1 forged=yes", '"x=1 forged=yes"'), ("line\nbreak", '"line\\nbreak"'), ("", '""')])
def test_a_value_can_neither_split_the_line_nor_forge_a_key(value, written):
    assert line("grant.active", reason=value) == f"grant.active reason={written}"

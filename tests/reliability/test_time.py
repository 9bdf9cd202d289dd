"""Time: grants across daylight-saving changes, and wall-clock jumps, end at the right UTC instant.

The environment's approved hours are local (Europe/Berlin, America/New_York); the grant, the
sudoers NOTAFTER (real visudo-checked files) and the engine all work in UTC instants, so a
two-hour grant across a change lasts two hours, not one or three, and a clock that jumps
backwards never makes a grant last longer.
"""
from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from fault_rigs import CVTSUDOERS, NO_SUDO, VISUDO

from app.clock import FrozenClock, system_clock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.jobs.engine import Engine
from app.lifecycle import Lifecycle
from integrations.sudo import SudoBackend
from policies.model import PolicySet

pytestmark = pytest.mark.skipif(VISUDO is None or CVTSUDOERS is None, reason=NO_SUDO)

UTC = timezone.utc
DIRECTORY = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})


def zoned(policy: PolicySet, zone: str) -> PolicySet:
    """web-dev-01's environment keeps its hours in ``zone``."""
    data = policy.model_dump(mode="python")
    data["environments"]["non-production"]["timezone"] = zone
    return PolicySet.model_validate(data)


def world(store, policy, tmp_path, clock, zone="UTC", **settings):
    sudoers = tmp_path / "sudoers.d"
    sudoers.mkdir(exist_ok=True)
    backend = SudoBackend(sudoers, visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    engine_settings = EngineSettings(**settings)
    lc = Lifecycle(store, zoned(policy, zone), DIRECTORY, {"sudo": backend}, clock, engine_settings)
    return lc, Engine(lc, engine_settings, clock), sudoers


def notafter(sudoers, grant_id: int) -> str:
    return re.search(r"NOTAFTER=(\d{14}Z)", (sudoers / f"jit_g{grant_id}").read_text()).group(1)


# (zone, start of a 2-hour grant 30 minutes before the change, its local start, the local time at
#  its end, the sudoers NOTAFTER): the local texts are the approved-hours check's own words.
DST = [
    pytest.param("Europe/Berlin", datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "Sun 02:30", "Sun 03:30",
                 "20261025023000Z", id="berlin-autumn"),   # 03:00 CEST -> 02:00 CET
    pytest.param("Europe/Berlin", datetime(2026, 3, 29, 0, 30, tzinfo=UTC), "Sun 01:30", "Sun 04:30",
                 "20260329023000Z", id="berlin-spring"),   # 02:00 CET -> 03:00 CEST
    pytest.param("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "Sun 01:30", "Sun 02:30",
                 "20261101073000Z", id="new-york-autumn"),  # 02:00 EDT -> 01:00 EST
    pytest.param("America/New_York", datetime(2026, 3, 8, 6, 30, tzinfo=UTC), "Sun 01:30", "Sun 04:30",
                 "20260308083000Z", id="new-york-spring"),  # 02:00 EST -> 03:00 EDT
]


@pytest.mark.parametrize("zone,start,local_start,local_end,expected_notafter", DST)
def test_grant_across_a_daylight_saving_change_ends_at_the_right_utc_instant(
        store, policy, tmp_path, zone, start, local_start, local_end, expected_notafter):
    clock = FrozenClock(start)
    lc, engine, sudoers = world(store, policy, tmp_path, clock, zone)
    rid = lc.submit("alice", "web-dev-01", "service-admin", timedelta(hours=2), "patch across the night").request.id
    hours = next(c for c in lc.get(rid).checks if c["name"] == "approved_hours")
    assert f"{local_start} {zone}" in hours["message"]  # the local wall time, on the old offset
    view = lc.approve("bob", rid).request
    assert view.state == "active"
    end = start + timedelta(hours=2)
    assert view.expires_at == end and view.grant.expires_at == end  # two real hours, whatever the wall says
    assert notafter(sudoers, view.grant.id) == expected_notafter

    clock.at = end
    later = lc.preview("dave", "web-dev-01", "service-admin", timedelta(minutes=10))  # on the new offset
    assert f"{local_end} {zone}" in next(c.message for c in later.checks if c.name == "approved_hours")

    clock.at = end - timedelta(milliseconds=1)
    assert engine.run_once().expired == 0 and lc.get(rid).state == "active"
    assert (sudoers / f"jit_g{view.grant.id}").exists()
    clock.at = end
    assert engine.run_once().expired == 1
    after = lc.get(rid)
    assert after.state == "expired" and after.grant.revoked_at == end  # at the instant, not an hour off
    assert not (sudoers / f"jit_g{view.grant.id}").exists()


def test_clock_jumps_with_run_once(store, policy, tmp_path):
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    clock = FrozenClock(t0)
    lc, engine, sudoers = world(store, policy, tmp_path, clock)
    a = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    b = lc.submit("dave", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    end = t0 + timedelta(minutes=10)

    clock.advance(-timedelta(hours=2))  # backwards: nothing moves, nothing ends early
    assert engine.run_once().expired == 0
    for v in (a, b):
        now = lc.get(v.id)
        assert now.state == "active" and now.expires_at == end == now.grant.expires_at
        assert notafter(sudoers, v.grant.id) == "20261124101000Z"
    clock.at = end  # the original instant comes: both end then, not two hours later
    assert engine.run_once().expired == 2
    assert {lc.get(v.id).grant.revoked_at for v in (a, b)} == {end}

    c = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    clock.advance(timedelta(hours=3))  # forwards past the expiry: ended on the first pass
    assert engine.run_once().expired == 1
    assert lc.get(c.id).state == "expired" and not (sudoers / f"jit_g{c.grant.id}").exists()


class JumpClock:
    """The real clock plus an offset that the test moves: a wall clock that jumps."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return system_clock() + self.offset


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


FAST = dict(sweep_interval=timedelta(milliseconds=300), poll_interval=timedelta(milliseconds=500))


def test_continuous_engine_forward_jump_ends_the_grant_at_once(sqlite_store, policy, tmp_path):
    clock = JumpClock()
    lc, engine, sudoers = world(sqlite_store, policy, tmp_path, clock, **FAST)
    view = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    engine.start()
    try:
        time.sleep(0.5)
        assert lc.get(view.id).state == "active"
        clock.offset = timedelta(minutes=10, seconds=1)  # the wall clock leaps past the expiry
        assert wait_for(lambda: lc.get(view.id).state == "expired", 5)
        revoked = lc.get(view.id).grant.revoked_at
        assert view.expires_at <= revoked <= view.expires_at + timedelta(seconds=3)
        assert not (sudoers / f"jit_g{view.grant.id}").exists()
    finally:
        engine.stop()


def test_continuous_engine_backward_jump_never_extends_and_never_stalls(sqlite_store, policy, tmp_path):
    clock = JumpClock()
    lc, engine, sudoers = world(sqlite_store, policy, tmp_path, clock, **FAST)
    view = lc.submit("alice", "web-dev-01", "service-admin", timedelta(seconds=2), "check the nginx config").request
    end, stamp = view.expires_at, notafter(sudoers, view.grant.id)
    engine.start()
    stopped = threading.Event()
    try:
        assert wait_for(lambda: end in engine._planned, 2)  # the planner has put a deadline job at the expiry
        # Then the wall clock goes back 30 s (short, so that a regression fails in ~30 s, not an hour).
        clock.offset = -timedelta(seconds=30)
        time.sleep(max(0.0, (end - system_clock()).total_seconds()) + 0.5)  # the job fired, 30 s "early"
        now = lc.get(view.id)
        assert now.state == "active" and now.expires_at == end == now.grant.expires_at  # not early, not moved
        assert notafter(sudoers, view.grant.id) == stamp
        clock.offset = timedelta(0)  # the clock is set right again: the grant ends now, as it should have
        assert wait_for(lambda: lc.get(view.id).state == "expired", 5)
        assert lc.get(view.id).grant.revoked_at >= end
        assert not (sudoers / f"jit_g{view.grant.id}").exists()
    finally:
        stopper = threading.Thread(target=lambda: (engine.stop(), stopped.set()), daemon=True)
        stopper.start()
        stopper.join(10)
    assert stopped.is_set(), "the engine could not stop: a deadline job is asleep for the jump's length"

"""One lifecycle or engine step in its own process, with a frozen clock, for the kill -9 tests.

usage: crash_driver.py CONFIG ISO_NOW ACTION [ARGS...]
  grant TARGET ROLE MINUTES   alice asks; bob and carol approve when the tier needs it
  schedule TARGET ROLE MINUTES COUNT START
                              alice asks COUNT times for the window from START (ISO 8601), approved
                              as above: nothing applied before START, then one activation batch
  release ID                  alice releases her grant
  revoke ID                   erin (security operator) revokes it
  engine                      one engine pass (recovery, expiry, activation)

The test sets JIT_FAILPOINTS so this process dies with SIGKILL at the chosen step. The same
functions run in the test process for the steps that are not meant to crash.
"""
from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

from app.bootstrap import Services, build
from app.clock import FrozenClock
from app.config import load_config

TICKET = "CHG0000001"  # the high tier (LDAP, AWS targets) needs one; no ServiceNow is configured


def services(config: Path, now: datetime) -> Services:
    return build(load_config(config), clock=FrozenClock(now))


def grant(sv: Services, target: str, role: str, minutes: int) -> int:
    lc = sv.lifecycle
    request = lc.submit("alice", target, role, timedelta(minutes=minutes), "crash test of the apply path",
                        ticket=TICKET).request
    if request.state == "pending":  # dual approval: a manager, then a system owner (the apply runs here)
        lc.approve("bob", request.id)
        lc.approve("carol", request.id)
    return request.id


def schedule(sv: Services, target: str, role: str, minutes: int, count: int, start: datetime) -> list[int]:
    lc, ids = sv.lifecycle, []
    for _ in range(count):
        request = lc.submit("alice", target, role, timedelta(minutes=minutes), "crash test of a batch activation",
                            ticket=TICKET, start=start).request
        if request.state == "pending":
            lc.approve("bob", request.id)
            lc.approve("carol", request.id)
        ids.append(request.id)
    return ids


def step(sv: Services, action: str, args: list[str]) -> object:
    if action == "grant":
        return grant(sv, args[0], args[1], int(args[2]))
    if action == "schedule":
        return schedule(sv, args[0], args[1], int(args[2]), int(args[3]), datetime.fromisoformat(args[4]))
    if action == "release":
        return sv.lifecycle.release("alice", int(args[0])).message
    if action == "revoke":
        return sv.lifecycle.revoke("erin", int(args[0]), "crash test of an operator revoke").message
    if action == "engine":
        return sv.engine.run_once()
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    config, now, action, *rest = sys.argv[1:]
    sv = services(Path(config), datetime.fromisoformat(now))
    try:
        print(step(sv, action, rest))
    finally:
        sv.close()

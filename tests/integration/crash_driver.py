"""Run one lifecycle or engine step in its own process with a given clock, for kill -9 tests.

usage: crash_driver.py CONFIG ISO_NOW ACTION [ARGS...]
The test sets JIT_FAILPOINTS so this process dies with SIGKILL at the chosen step.
"""
import sys
from datetime import datetime, timedelta

from app.bootstrap import build
from app.clock import FrozenClock
from app.config import load_config
from pathlib import Path

config, now, action, *args = sys.argv[1:]
services = build(load_config(Path(config)), clock=FrozenClock(datetime.fromisoformat(now)))
lc = services.lifecycle
if action == "request":
    print(lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=int(args[0])),
                    "crash test of the apply path").request.id)
elif action == "release":
    lc.release("alice", int(args[0]))
elif action == "engine":
    print(services.engine.run_once())
services.close()

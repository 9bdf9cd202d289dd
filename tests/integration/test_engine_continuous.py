"""The continuous engine revokes at the expiry instant (not at the next sweep), with the real sudo backend."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox


def wait_for(predicate, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_revokes_at_the_instant(tmp_path: Path) -> None:
    config_path = write_sandbox(tmp_path / "sb", servicenow_url=None)
    # Sweep only every 10 minutes: a revocation within a second can only come from the precise timer.
    text = config_path.read_text().replace('sweep_interval = "30s"', 'sweep_interval = "10m"')
    config_path.write_text(text.replace('poll_interval = "5s"', 'poll_interval = "1s"'))
    sv = build(load_config(config_path))
    stop = threading.Event()
    runner = threading.Thread(target=sv.engine.run_forever, args=(stop,), daemon=True)
    try:
        runner.start()
        time.sleep(0.5)  # the first sweep has run: everything later is the planner's doing
        rid = sv.lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(seconds=3),
                                  "short check of the nginx config").request.id
        sudoers = tmp_path / "sb" / "sudoers.d"
        assert len(list(sudoers.glob("jit_g*"))) == 1
        assert wait_for(lambda: sv.lifecycle.get(rid).state == "expired", 10), sv.lifecycle.get(rid)
        view = sv.lifecycle.get(rid)
        lag = view.grant.revoked_at - view.expires_at
        assert timedelta(0) <= lag < timedelta(seconds=1), lag
        assert list(sudoers.glob("jit_g*")) == []
    finally:
        stop.set()
        runner.join(timeout=10)
        sv.close()

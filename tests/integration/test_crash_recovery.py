"""kill -9 at every step of apply and revoke: after restart no sudoers file outlives its grant,
and no grant is applied twice."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.sandbox import write_sandbox

DRIVER = Path(__file__).with_name("crash_driver.py")
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def sandbox(tmp_path):
    return write_sandbox(tmp_path / "sb", servicenow_url=None)


def drive(config, now, action, *args, failpoint=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JIT_FAILPOINTS", None)
    if failpoint:
        env["JIT_FAILPOINTS"] = failpoint
    return subprocess.run([sys.executable, str(DRIVER), str(config), now.isoformat(), action, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=60)


def state(config):
    db = sqlite3.connect(config.parent / "data" / "jit.db")
    try:
        grants = db.execute("SELECT id, status, ref, expires_at FROM grant_record").fetchall()
        requests = dict(db.execute("SELECT id, state FROM access_request").fetchall())
        applied = db.execute("SELECT COUNT(*) FROM audit_event WHERE action = 'grant.active'").fetchone()[0]
    finally:
        db.close()
    files = sorted(p.name for p in (config.parent / "sudoers.d").iterdir())
    return grants, requests, files, applied


@pytest.mark.parametrize("failpoint", ["apply.before_backend", "apply.after_backend"])
def test_kill_during_apply(sandbox, failpoint):
    crashed = drive(sandbox, T0, "request", 10, failpoint=failpoint)
    assert crashed.returncode == -signal.SIGKILL
    grants, _, files, _ = state(sandbox)
    assert [g[1] for g in grants] == ["applying"]
    assert files == (["jit_g1"] if failpoint == "apply.after_backend" else [])
    # Restart within the grant: the engine finishes the apply, once.
    assert drive(sandbox, T0 + timedelta(seconds=5), "engine").returncode == 0
    grants, requests, files, applied = state(sandbox)
    assert grants[0][1] == "active" and requests[1] == "active" and files == ["jit_g1"] and applied == 1
    # At expiry the file goes.
    assert drive(sandbox, T0 + timedelta(minutes=10, seconds=1), "engine").returncode == 0
    grants, requests, files, _ = state(sandbox)
    assert grants[0][1] == "revoked" and requests[1] == "expired" and files == []


@pytest.mark.parametrize("failpoint", ["apply.before_backend", "apply.after_backend"])
def test_kill_during_apply_then_restart_after_expiry(sandbox, failpoint):
    assert drive(sandbox, T0, "request", 10, failpoint=failpoint).returncode == -signal.SIGKILL
    assert drive(sandbox, T0 + timedelta(minutes=11), "engine").returncode == 0
    grants, requests, files, applied = state(sandbox)
    assert grants[0][1] == "revoked" and requests[1] == "expired" and files == [] and applied == 0


@pytest.mark.parametrize("failpoint", ["revoke.before_backend", "revoke.after_backend"])
def test_kill_during_release(sandbox, failpoint):
    assert drive(sandbox, T0, "request", 10).returncode == 0
    assert drive(sandbox, T0 + timedelta(minutes=1), "release", 1, failpoint=failpoint).returncode == -signal.SIGKILL
    grants, requests, files, _ = state(sandbox)
    assert grants[0][1] == "revoking" and requests[1] == "active"
    assert files == (["jit_g1"] if failpoint == "revoke.before_backend" else [])
    assert drive(sandbox, T0 + timedelta(minutes=1, seconds=2), "engine").returncode == 0
    grants, requests, files, _ = state(sandbox)
    assert grants[0][1] == "revoked" and requests[1] == "released" and files == []


@pytest.mark.parametrize("failpoint", ["revoke.before_backend", "revoke.after_backend"])
def test_kill_during_expiry(sandbox, failpoint):
    assert drive(sandbox, T0, "request", 10).returncode == 0
    expiry = T0 + timedelta(minutes=10)
    assert drive(sandbox, expiry, "engine", failpoint=failpoint).returncode == -signal.SIGKILL
    grants, requests, files, _ = state(sandbox)
    assert grants[0][1] == "revoking"
    restarted = expiry + timedelta(seconds=2)  # the restarted engine finishes within the 2 s bound
    assert drive(sandbox, restarted, "engine").returncode == 0
    grants, requests, files, _ = state(sandbox)
    assert grants[0][1] == "revoked" and requests[1] == "expired" and files == []
    db = sqlite3.connect(sandbox.parent / "data" / "jit.db")
    revoked_at = db.execute("SELECT revoked_at FROM grant_record").fetchone()[0]
    db.close()
    lag = datetime.fromisoformat(revoked_at).replace(tzinfo=timezone.utc) - expiry
    assert lag <= timedelta(seconds=2)

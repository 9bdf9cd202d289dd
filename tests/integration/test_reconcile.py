"""Drift and exposure on the real sudo backend: `jit reconcile [--fix] [--json]` and `jit stats`."""
from __future__ import annotations

import io
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from app.bootstrap import build
from app.cli.main import main
from app.clock import FrozenClock
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.queries.exposure import exposure
from tests.conftest import T0
from tests.serving import dev_server


@pytest.fixture
def sandbox(tmp_path):
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    with dev_server(config):
        yield _jit(tmp_path, config)


def _jit(tmp_path, config):

    def jit(user, *args, expect=0):
        out, err = io.StringIO(), io.StringIO()
        env = {"JIT_CONFIG": str(config), "HOME": str(tmp_path), **({"JIT_USER": user} if user else {})}
        code = main(list(args), env, out, err)
        assert code == expect, (args, out.getvalue(), err.getvalue())
        return out.getvalue() + err.getvalue()

    jit.dir = tmp_path / "sb" / "sudoers.d"
    jit.config = config
    return jit


def test_no_drift_on_a_clean_system(sandbox):
    sandbox("alice", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    assert "no drift" in sandbox("erin", "reconcile")


def test_standing_outlived_and_missing_are_found_and_fixed(sandbox):
    sandbox("alice", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    sandbox("dave", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    sandbox("alice", "release", "1")
    kept = sandbox.dir / "jit_g1"
    shutil.copy(sandbox.dir / "jit_g2", sandbox.dir / "jit_g99")  # a hand-made standing privilege
    (sandbox.dir / "jit_g2").rename(kept)  # grant 1 ended, yet its file is back; grant 2's file is gone
    findings = json.loads(sandbox("erin", "reconcile", "--json", expect=1))
    kinds = sorted((f["kind"], f["grant_id"]) for f in findings)
    assert kinds == [("missing", 2), ("outlived", 1), ("standing", 99)]
    assert "--fix is for security operators" in sandbox("alice", "reconcile", "--fix", expect=1)
    fixed = json.loads(sandbox("erin", "reconcile", "--fix", "--json"))
    assert sorted(f["action"] for f in fixed) == ["removed", "removed", "restored"]
    assert sorted(p.name for p in sandbox.dir.iterdir()) == ["jit_g2"]
    assert "no drift" in sandbox("erin", "reconcile")
    lines = [json.loads(line) for line in sandbox(None, "audit", "export").splitlines()]
    drift = [e for e in lines if e["action"] == "reconcile.drift"]
    assert {d["details"]["finding"]["action"] for d in drift} >= {"removed", "restored"}
    assert all(d["actor"] == "erin" for d in drift)


def test_engine_start_reconciles(sandbox):
    shutil.copy(Path(__file__).parent / "test_reconcile.py", sandbox.dir / "not_ours")  # not a jit file: ignored
    sandbox("alice", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    (sandbox.dir / "jit_g1").unlink()
    sv = build(load_config(sandbox.config))
    try:
        sv.engine.reconcile()
    finally:
        sv.close()
    assert (sandbox.dir / "jit_g1").exists() and (sandbox.dir / "not_ours").exists()


def test_stats_measure_exposure(sandbox):
    config = load_config(sandbox.config)
    clock = FrozenClock(T0)
    sv = build(config, clock=clock)
    try:
        lc = sv.lifecycle
        a = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check nginx config").request.id
        lc.bypass("dave", "web-prod-01", "service-admin", timedelta(hours=1), "INC0000042", "nginx down for all")
        clock.advance(timedelta(minutes=10))
        lc.expire_due()
        e = exposure(sv.store, sv.policy, sv.directory, clock())
        assert e.elevated_now == 1  # dave; alice's grant has ended
        assert e.eligible == 3  # alice, dave (engineers/oncall) and erin (security: log-auditor)
        assert e.privilege_hours_7d == round((10 + 10) / 60, 2)  # alice 10 min + dave 10 min so far
        assert e.bypasses_awaiting_review == 1
        assert lc.get(a).state == "expired"
    finally:
        sv.close()
    out = json.loads(sandbox(None, "stats", "--json"))
    assert {"elevated_now", "eligible", "privilege_hours_7d", "privilege_hours_30d",
            "bypasses_awaiting_review", "ratio"} <= out.keys()

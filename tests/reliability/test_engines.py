"""Several real ``jit engine`` processes (continuous mode) on one PostgreSQL database, sudo backend.

A batch of scheduled grants starts and expires over a few seconds; the engines race for every
activation and every expiry. One engine carries ``JIT_FAILPOINTS=revoke.before_backend`` in its
own environment only: at its first revocation it commits the intent (the grant is ``revoking``,
claimed by it, the sudoers drop-in still there) and dies by SIGKILL. The survivors must finish
that grant and every later expiry, and nothing may happen twice.

Two ways the survivors learn the claim is dead (app/lifecycle/recovery.py ``_abandoned``):
- ``same-host``: the owner is a dead pid on this host, so the claim is free at once;
- ``other-host``: the dying engine runs in its own UTS namespace (``unshare --uts``) under
  another host name, exactly like an engine on another machine: nothing tells the survivors it
  is dead, so only the lease (3 s here) frees the claim, and they must wait for it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import select

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.store import HEARTBEAT_PREFIX, AuditEvent, GrantRow, SyncState, audit

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
GRANTS = 24
LEASE = timedelta(seconds=3)
BOUND = timedelta(seconds=2)  # an expiry handled by a live engine ends within this
OTHER_HOST = "jit-other-host"



def other_host_prefix() -> list[str]:
    """A command prefix running the engine under another host name, or a skip saying why not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: cannot run an engine under another host name")
    cmd = [unshare, "--uts"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*cmd, "hostname", OTHER_HOST], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a UTS namespace here ({probe.stderr.strip()}): the lease-only case needs one")
    return [*cmd, "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh"]


def sandbox(tmp_path: Path, url: str) -> Path:
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    text = config.read_text().replace('url = ""', f'url = "{url}"')
    text = text.replace('poll_interval = "5s"', 'poll_interval = "1s"').replace('sweep_interval = "30s"',
                                                                                'sweep_interval = "1s"')
    config.write_text(text.replace('lease = "60s"', f'lease = "{int(LEASE.total_seconds())}s"'))
    policy = config.parent / "policy.toml"  # one person holds the whole batch
    policy.write_text(policy.read_text().replace("max_concurrent = 3 ", f"max_concurrent = {GRANTS} "))
    return config


def wait_for(predicate, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline_s} s: {what}")


@pytest.mark.parametrize("dead_owner", ["same-host", "other-host"])
def test_engines_share_the_work_and_take_over_a_dead_ones_claims(tmp_path, pg_url, dead_owner):
    prefix = other_host_prefix() if dead_owner == "other-host" else []
    config = sandbox(tmp_path, pg_url)
    sv = build(load_config(config))  # migrates the schema once, before the engines start
    sudoers = config.parent / "sudoers.d"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    engines: list[subprocess.Popen] = []
    try:
        for n, failpoint in enumerate(["revoke.before_backend", None, None]):
            log = open(tmp_path / f"engine{n}.log", "w")
            engines.append(subprocess.Popen(
                [*(prefix if failpoint else []), sys.executable, "-m", "app", "engine", "--config", str(config)], stdout=log,
                stderr=subprocess.STDOUT, env={**env, **({"JIT_FAILPOINTS": failpoint} if failpoint else {})}))
        doomed, survivors = engines[0], engines[1:]
        host = OTHER_HOST if prefix else os.uname().nodename
        doomed_owner = f"{host}:{doomed.pid}"

        def heartbeats() -> set[str]:
            with sv.store.transaction() as s:
                return {r.name for r in s.exec(select(SyncState).where(SyncState.name.like(f"{HEARTBEAT_PREFIX}%")))}
        wait_for(lambda: f"{HEARTBEAT_PREFIX}{doomed_owner}" in heartbeats() and len(heartbeats()) == 3, 60,
                 "three engines up")

        # The batch: each grant starts 4-6 s from now and lasts 3 s; the engines apply and revoke it.
        first = datetime.now(timezone.utc) + timedelta(seconds=4)
        ids = [sv.lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(seconds=3),
                                   "batch for the several-engines test",
                                   start=first + timedelta(seconds=2) * i / GRANTS).request.id for i in range(GRANTS)]
        assert {sv.lifecycle.get(i).state for i in ids} == {"approved"}  # scheduled: nothing applied yet

        wait_for(lambda: doomed.poll() is not None, 30, "the engine with the crash point reached a revocation")
        assert doomed.returncode == -signal.SIGKILL
        wait_for(lambda: {sv.lifecycle.get(i).state for i in ids} == {"expired"}, 30,
                 "the survivors ended every grant")
        assert all(e.poll() is None for e in survivors), "a surviving engine died"
        assert list(sudoers.iterdir()) == []  # every sudoers drop-in is gone

        with sv.store.transaction() as s:
            events = s.exec(select(AuditEvent).order_by(AuditEvent.seq)).all()
            grants = {g.request_id: g for g in s.exec(select(GrantRow)).all()}
            assert audit.verify(s).ok
        per_request = Counter((e.request_id, e.action) for e in events)
        for rid in ids:  # applied once, revoked once
            counts = {a: per_request[(rid, a)] for a in ("grant.applying", "grant.active", "grant.revoking",
                                                          "request.expired")}
            assert counts == dict.fromkeys(counts, 1), (rid, counts)
        assert sorted(grants) == sorted(ids) and {g.status for g in grants.values()} == {"revoked"}

        # Exactly one takeover, from the dead engine: its claim, freed as its owner's host allows. A
        # live engine renews its leases, so however slow its backend calls, it is never taken over.
        recovered = [e for e in events if e.action == "grant.recovered"]
        assert [json.loads(e.details)["previous_owner"] for e in recovered] == [doomed_owner], \
            [(e.request_id, e.details) for e in recovered]
        details = json.loads(recovered[0].details)
        assert details["status"] == "revoking"
        lease_until = datetime.fromisoformat(details["previous_lease_until"])
        claimed_at = lease_until - LEASE  # when the dead engine committed its intent
        taken = grants[recovered[0].request_id]
        if dead_owner == "same-host":
            assert recovered[0].at < lease_until  # a dead pid here: no need to wait for the lease
        else:
            assert recovered[0].at >= lease_until  # another host: only the lease frees it
        assert taken.revoked_at <= lease_until + timedelta(seconds=1.5), (taken.revoked_at, lease_until)
        for rid, g in grants.items():
            if rid != recovered[0].request_id:
                assert g.revoked_at - g.expires_at <= BOUND, (rid, g.revoked_at - g.expires_at)
        print(f"\n{dead_owner}: dead engine's claim at {claimed_at:%H:%M:%S.%f}, lease until "
              f"{lease_until:%H:%M:%S.%f}, taken over at {recovered[0].at:%H:%M:%S.%f}, "
              f"revoked {(taken.revoked_at - claimed_at).total_seconds():.2f} s after the claim")
    finally:
        for e in engines:
            if e.poll() is None:
                e.send_signal(signal.SIGTERM)
        for e in engines:
            try:
                e.wait(timeout=20)
            except subprocess.TimeoutExpired:
                e.kill()
                e.wait()
        sv.close()
    assert [e.returncode for e in survivors] == [0, 0], "the survivors did not stop cleanly on SIGTERM"

"""The issue's acceptance scenario, run as a person would: `jit` processes on a fresh sandbox."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev.sandbox import write_sandbox
from integrations.servicenow.simulator import Simulator, SimulatorOptions
from tests.serving import dev_server

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/visudo").exists() and not
                                subprocess.run(["which", "visudo"], capture_output=True).returncode == 0,
                                reason="visudo not installed (.ci/run installs the sudo package)")


@pytest.fixture
def sim():
    simulator = Simulator(SimulatorOptions(seed="demo")).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def jit(tmp_path, sim):
    config = write_sandbox(tmp_path / "sandbox", servicenow_url=sim.base_url)
    with dev_server(config):  # the API on the sandbox's socket; each `jit` below is a client process
        yield _runner(tmp_path, config)


def _runner(tmp_path, config):
    def run(user, *args, expect=0):
        env = {**os.environ, "JIT_CONFIG": str(config)}
        env.pop("JIT_USER", None)
        if user:
            env["JIT_USER"] = user
        proc = subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == expect, (args, proc.stdout, proc.stderr)
        return proc.stdout + proc.stderr

    run.sudoers = tmp_path / "sandbox" / "sudoers.d"
    return run


def test_acceptance_scenario(jit):
    out = jit("alice", "request", "web-prod-01", "service-admin", "--duration", "2h",
              "--reason", "restart nginx after the TLS renewal", "--ticket", "CHG0000001")
    assert "REQ-1 submitted" in out and "dual approval" in out
    out = jit("bob", "approve", "1")
    assert "1 of 2 approvals" in out
    assert json.loads(jit(None, "show", "1", "--json"))["state"] == "pending"
    out = jit("alice", "approve", "1", expect=1)
    assert "never approve their own request" in out
    jit("carol", "approve", "1")
    shown = json.loads(jit(None, "show", "REQ-1", "--json"))
    assert shown["state"] == "active"
    assert {"id", "state", "requester", "target", "role", "starts_at", "expires_at"} <= shown.keys()
    files = list(jit.sudoers.glob("jit_g*"))
    assert len(files) == 1
    [active] = [e for e in map(json.loads, jit(None, "audit", "export").splitlines()) if e["action"] == "grant.active"]
    granted = active["details"]["granted"]  # what the drop-in grants, in the audit (issue 15)
    assert granted["noexec"] is True and granted["commands"] and all(c in files[0].read_text()
                                                                     for c in granted["commands"])
    check = subprocess.run(["visudo", "-cf", str(files[0])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    parsed = json.loads(subprocess.run(["cvtsudoers", "-f", "json", str(files[0])], capture_output=True,
                                       text=True, check=True).stdout)
    options = {k: v for o in parsed["User_Specs"][0]["Cmnd_Specs"][0]["Options"] for k, v in o.items()}
    expires = shown["expires_at"].replace("-", "").replace(":", "").replace("T", "")[:14] + "Z"
    assert options["notafter"] == expires and options["log_output"] is True
    jit("alice", "release", "1")
    assert list(jit.sudoers.glob("jit_g*")) == []
    assert json.loads(jit(None, "show", "1", "--json"))["state"] == "released"

    out = jit("alice", "request", "web-dev-01", "service-admin", "--duration", "10m",
              "--reason", "check the nginx config on dev")
    assert "approved at once" in out
    assert json.loads(jit(None, "show", "2", "--json"))["state"] == "active"

    jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000042",
        "--reason", "nginx down, customers affected")
    assert json.loads(jit(None, "show", "3", "--json"))["state"] == "active"
    out = jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000043",
              "--reason", "nginx down again after restart", expect=1)
    assert "open_review" in out
    out = jit("dave", "review", "3", "--outcome", "justified", "--comment", "it was needed", expect=1)
    assert "never review their own" in out
    jit("erin", "review", "3", "--outcome", "justified", "--comment", "outage confirmed")
    jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000043",
        "--reason", "nginx down again after restart")

    mine = json.loads(jit("alice", "list", "--mine", "--json"))
    assert sorted(r["id"] for r in mine) == [1, 2]
    assert "chain intact" in jit(None, "audit", "verify")
    lines = jit(None, "audit", "export", "--format", "jsonl").splitlines()
    assert all(json.loads(line)["hash"] for line in lines) and len(lines) > 15


def test_a_violation_review_revokes_the_bypass_and_holds_the_next_until_cleared(jit):
    """Through the server, as the CLI's users: a bypass reviewed as a violation ends at once (its
    drop-in removed), the bypasser cannot bypass again, and a security operator clears it."""
    jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000042",
        "--reason", "nginx down, customers affected")
    assert len(list(jit.sudoers.glob("jit_g*"))) == 1
    out = jit("erin", "review", "1", "--outcome", "violation", "--comment", "no outage in the monitoring")
    assert "REQ-1 reviewed: violation; its access is revoked" in out and "dave cannot bypass again" in out
    assert list(jit.sudoers.glob("jit_g*")) == []
    shown = json.loads(jit(None, "show", "1", "--json"))
    assert shown["state"] == "revoked" and shown["review"]["state"] == "violation"
    assert shown["review"]["cleared_by"] is None
    assert "jit review 1 --clear" in jit(None, "show", "1")
    out = jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000043",
              "--reason", "nginx down again after restart", expect=1)
    assert "open_review" in out and "REQ-1) was reviewed as a violation" in out
    assert "never clear their own violation" in jit("dave", "review", "1", "--clear", "--comment", "sorry",
                                                   expect=1)
    assert "REQ-1: violation cleared; dave may bypass again" in jit("erin", "review", "1", "--clear", "--comment",
                                                                    "talked it through")
    assert "cleared by erin: talked it through" in jit(None, "show", "1")
    jit("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000043",
        "--reason", "nginx down again after restart")
    actions = [json.loads(line)["action"] for line in jit(None, "audit", "export").splitlines()]
    assert actions.count("bypass.cleared") == 1 and "request.revoked" in actions


def test_audit_verify_fails_after_tampering(jit, tmp_path):
    jit("alice", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    import sqlite3
    db = sqlite3.connect(tmp_path / "sandbox" / "data" / "jit.db")
    db.execute("UPDATE audit_event SET actor = 'mallory' WHERE seq = 2")
    db.commit()
    db.close()
    out = jit(None, "audit", "verify", expect=1)
    assert "event 2 was altered" in out


def test_the_dev_server_records_every_impersonation(jit):
    jit("alice", "request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    [event] = [json.loads(line) for line in jit(None, "audit", "export").splitlines()
               if json.loads(line)["action"] == "request.submitted"]
    assert event["actor"] == "alice"
    assert event["details"]["authenticated"] == f"dev-impersonation:alice by peer-uid:{os.getuid()}"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_servicenow_acceptance_with_snow_sim_process(tmp_path):
    """`jit snow-sim --seed demo` in its own process; `jit engine --once` turns the demo change
    into an active grant with a work note; a change outside its window is refused, check named."""
    import httpx
    port = free_port()
    env = {**os.environ}
    env.pop("JIT_USER", None)
    sim = subprocess.Popen([sys.executable, "-m", "app", "snow-sim", "--seed", "demo", "--port", str(port)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "ServiceNow simulator on" in sim.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        config = write_sandbox(tmp_path / "sb", servicenow_url=url)
        run_env = {**env, "JIT_CONFIG": str(config)}

        def jit(*args, user=None, expect=0):
            proc = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=60,
                                  env={**run_env, **({"JIT_USER": user} if user else {})})
            assert proc.returncode == expect, (args, proc.stdout, proc.stderr)
            return proc.stdout + proc.stderr

        out = jit("engine", "--once", "--config", str(config))
        assert "created 1 request(s)" in out and "outbox: sent 1" in out
        served = dev_server(config)
        served.__enter__()
        [grant] = json.loads(jit("list", "--json", user="erin"))
        assert (grant["state"], grant["requester"], grant["ticket"], grant["approval_model"]) == (
            "active", "alice", "CHG0000001", "servicenow")
        assert len(list((tmp_path / "sb" / "sudoers.d").glob("jit_g*"))) == 1
        auth = ("admin", "admin")
        change = httpx.get(f"{url}/api/now/table/change_request", auth=auth,
                           params={"sysparm_query": "number=CHG0000001", "sysparm_fields": "sys_id"}).json()
        sys_id = change["result"][0]["sys_id"]
        notes = httpx.get(f"{url}/api/now/table/sys_journal_field", auth=auth,
                          params={"sysparm_query": f"element_id={sys_id}^element=work_notes"}).json()["result"]
        assert len(notes) == 1 and "Access granted to alice on web-prod-01 (service-admin)" in notes[0]["value"]
        out = jit("request", "web-prod-01", "service-admin", "--duration", "1h", "--ticket", "CHG0000002",
                  "--reason", "start the TLS renewal early", user="alice", expect=1)
        assert "change_window" in out and "outside the change window" in out
        assert "no recent errors" in jit("sync", "status")
        served.__exit__(None, None, None)
    finally:
        sim.terminate()
        sim.wait(timeout=10)

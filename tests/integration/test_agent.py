"""Issue 16: ``jit agent`` on each host, against a real ``jit server --dev`` over its Unix socket.

Each agent is a real process in its own UTS namespace (``unshare --uts``), so the host name the
kernel gives it is ``web-prod-01`` or ``web-dev-01``; each writes its own drop-in directory with
the real ``visudo``. The live-session proof runs real ``sudo`` as a local account in the agent's
mount namespace, with its directory bind-mounted over ``/etc/sudoers.d``."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from agents import CAN_RUN, WHY_NOT, AgentProcess, agent_sandbox, wait_for
from serving import dev_server

from app.client.connection import Client, ClientSettings
from app.domain.errors import Refused
from app.store import AuditEvent
from sqlmodel import select

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
REASON = "restart nginx after the deploy"


def events(sv, action: str) -> list[AuditEvent]:
    with sv.store.transaction() as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


@pytest.fixture
def world(tmp_path: Path):
    config = agent_sandbox(tmp_path / "sb")
    with dev_server(config) as sv:
        agents: list[AgentProcess] = []

        def agent(host: str, **kw) -> AgentProcess:
            a = AgentProcess(host, sv.config.path(sv.config.settings.server.socket), tmp_path / host, **kw)
            agents.append(a)
            return a
        try:
            yield sv, agent
        finally:
            for a in agents:
                a.stop()


def request(sv, target: str = "web-prod-01", duration: str = "10m", person: str = "alice", role: str = "service-admin"):
    from policies.durations import parse_duration
    return sv.lifecycle.submit(person, target, role, parse_duration(duration), REASON, None, None)


def test_a_grant_reaches_its_host_only_and_a_revoke_removes_it_within_a_second(world) -> None:
    sv, agent = world
    prod, dev = agent("web-prod-01").start(), agent("web-dev-01").start()
    prod.wait_reported(sv.host_reports)
    dev.wait_reported(sv.host_reports)
    out = request(sv)
    assert out.request.state == "active", out.notes  # active only once its host has written it
    assert prod.files() == [f"jit_g{out.request.grant.id}"]
    assert dev.files() == []
    text = (prod.sudoers / prod.files()[0]).read_text()
    assert "alice web-prod-01 = (root) NOTBEFORE=" in text and "LOG_INPUT: LOG_OUTPUT:" in text
    start = time.monotonic()
    done = sv.lifecycle.revoke("erin", out.request.id, "the change was rolled back")
    took = time.monotonic() - start
    assert done.request.state == "revoked"
    assert prod.files() == [] and took <= 1.0, took
    # web-dev-01's agent asking for web-prod-01's grants: 403, audited
    settings = ClientSettings(server=f"unix://{sv.config.path(sv.config.settings.server.socket)}",
                              agent_host="web-dev-01")
    with Client(settings) as api, pytest.raises(Refused, match="not web-prod-01's agent"):
        api.get("/v1/agent/hosts/web-prod-01/grants")
    with Client(settings) as api, pytest.raises(Refused, match="not web-prod-01's agent"):
        api.put("/v1/agent/hosts/web-prod-01/held", {"held": []})
    refused = events(sv, "agent.refused")
    assert [e.actor for e in refused] == ["agent:web-dev-01", "agent:web-dev-01"]
    assert '"host":"web-prod-01"' in refused[0].details
    assert [e.actor for e in events(sv, "agent.removed")] == ["agent:web-prod-01"]


def test_the_second_agent_asks_from_its_own_namespace_and_is_refused(world, tmp_path: Path) -> None:
    """The same 403 with the host name coming from the kernel of a web-dev-01 namespace."""
    sv, _ = world
    sock = sv.config.path(sv.config.settings.server.socket)
    probe = ("from app.client.connection import Client, ClientSettings\n"
             "from app.fleet.agent import host_name\n"
             "from app.domain.errors import Refused\n"
             f"c = Client(ClientSettings(server='unix://{sock}', agent_host=host_name()))\n"
             "try:\n    c.get('/v1/agent/hosts/web-prod-01/grants')\nexcept Refused as e:\n    print('403', e)\n"
             "print(c.get('/v1/agent/hosts/' + host_name() + '/grants')['host'])\n")
    import sys
    r = subprocess.run(["unshare", "--uts", "/bin/sh", "-c", 'hostname web-dev-01 && exec "$@"', "sh", sys.executable,
                        "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["403 agent: agent:web-dev-01 is not web-prod-01's agent: a host sees and "
                                     "reports only its own grants", "web-dev-01"]


def test_an_agent_may_not_use_a_persons_routes_nor_a_person_the_agents(world) -> None:
    sv, _ = world
    sock = f"unix://{sv.config.path(sv.config.settings.server.socket)}"
    with Client(ClientSettings(server=sock, agent_host="web-prod-01")) as api, pytest.raises(Refused, match="agent"):
        api.get("/v1/requests")
    with Client(ClientSettings(server=sock, impersonate="erin")) as api, \
            pytest.raises(Refused, match="only a host's agent"):
        api.get("/v1/agent/hosts/web-prod-01/grants")


def test_a_host_that_does_not_write_the_grant_fails_it_and_never_keeps_it(world) -> None:
    sv, agent = world
    out = request(sv)  # no agent runs for web-prod-01: nobody writes it within [backends.agent] wait
    assert out.request.state == "failed"
    assert "has not written grant" in out.notes[0] and "never reported" in out.notes[0]
    prod = agent("web-prod-01").start()
    prod.wait_reported(sv.host_reports)
    time.sleep(0.3)
    assert prod.files() == []  # a failed grant is not written later


def test_an_extension_rewrites_the_drop_in_before_it_counts(world) -> None:
    sv, agent = world
    prod = agent("web-prod-01").start()
    prod.wait_reported(sv.host_reports)
    out = request(sv, duration="10m")
    from datetime import timedelta
    ext = sv.lifecycle.extend("alice", out.request.id, timedelta(minutes=4), "the deploy takes longer")
    assert not [n for n in ext.notes if n], ext.notes
    text = (prod.sudoers / prod.files()[0]).read_text()
    assert f"NOTAFTER={ext.request.expires_at:%Y%m%d%H%M%S}Z" in text


def test_a_killed_agent_finishes_a_write_without_writing_twice(world) -> None:
    sv, agent = world
    prod = agent("web-prod-01", failpoints="agent.apply.after_write").start()
    prod.wait_reported(sv.host_reports)
    result: list = []
    t = threading.Thread(target=lambda: result.append(request(sv)))
    t.start()
    assert prod.died() == -9  # written, not yet reported
    [name] = prod.files()
    first = os.stat(prod.sudoers / name)
    prod.start(failpoints="")
    t.join(30)
    assert result[0].request.state == "active", result[0].notes
    again = os.stat(prod.sudoers / name)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # found in place, not rewritten


@pytest.mark.parametrize("step", ["agent.revoke.after_intent", "agent.revoke.after_unlink"])
def test_a_killed_agent_finishes_a_removal_within_two_seconds(world, step: str) -> None:
    sv, agent = world
    prod = agent("web-prod-01").start()
    prod.wait_reported(sv.host_reports)
    out = request(sv)
    assert out.request.state == "active"
    prod.stop()
    prod.start(failpoints=step)
    prod.wait_reported(sv.host_reports, since=sv.host_reports.of("web-prod-01").reported_at)
    result: list = []
    start = time.monotonic()
    t = threading.Thread(target=lambda: result.append(sv.lifecycle.revoke("erin", out.request.id, "rolled back")))
    t.start()
    assert prod.died() == -9
    prod.start(failpoints="")  # as systemd's Restart=always would
    wait_for(lambda: not prod.files(), 5)
    gone = time.monotonic() - start
    t.join(30)
    assert gone <= 2.0, gone
    assert result[0].request.state == "revoked", result[0].notes
    wait_for(lambda: not list(prod.state.glob("revoking-*")) and not list(prod.state.glob("done-*")), 5)
    assert len(events(sv, "agent.removed")) == 1  # reported once, from the note the killed agent left


def test_with_the_server_down_the_drop_in_is_gone_at_its_end_and_the_agent_catches_up(tmp_path: Path) -> None:
    from datetime import datetime, timezone
    config = agent_sandbox(tmp_path / "sb")
    prod = None
    try:
        with dev_server(config) as sv:
            prod = AgentProcess("web-prod-01", sv.config.path(sv.config.settings.server.socket), tmp_path / "prod")
            prod.start()
            prod.wait_reported(sv.host_reports)
            out = request(sv, duration="4s")
            assert out.request.state == "active"
            ends = out.request.expires_at
            assert len(prod.files()) == 1
        # the server is gone for the grant's whole end
        wait_for(lambda: not prod.files(), 10)
        late = (datetime.now(timezone.utc) - ends.replace(microsecond=0)).total_seconds()
        assert late <= 1.0, late
        assert "server unreachable" in prod.log.read_text()
        with dev_server(config) as sv:  # back: the agent follows it again, and reports what it did meanwhile
            wait_for(lambda: prod.log.read_text().count("server reachable") == 2, 15)
            prod.wait_reported(sv.host_reports)
            wait_for(lambda: [e for e in events(sv, "agent.removed") if '"why":"expired"' in e.details], 5)
            again = request(sv)
            assert again.request.state == "active" and prod.files() == [f"jit_g{again.request.grant.id}"]
    finally:
        if prod is not None:
            prod.stop()


SESSION_ACCOUNT = "jitt-agent"
SLEEPER = '''
[targets.web-prod-01.roles.sleeper]
description = "A long-running command, for the live-session proof"
eligible_groups = ["engineers"]
commands = ["/usr/bin/sleep 600"]
'''


def test_a_live_sudo_session_ends_within_a_second_of_the_revoke(tmp_path: Path) -> None:
    import pwd
    import shutil

    from accounts import local_accounts, sudo_box

    from app.fleet import sessions
    if not shutil.which("sudo") or not shutil.which("setpriv"):
        pytest.skip("the live-session proof needs sudo and setpriv")
    with sudo_box(SESSION_ACCOUNT) as box:
        with local_accounts(SESSION_ACCOUNT) as made:
            who: pwd.struct_passwd = made[SESSION_ACCOUNT]
            config = agent_sandbox(tmp_path / "sb", people={SESSION_ACCOUNT: ["engineers"]}, extra_roles=SLEEPER)
            with dev_server(config) as sv:
                prod = AgentProcess("web-prod-01", sv.config.path(sv.config.settings.server.socket), box, mount=True)
                prod.start()
                try:
                    prod.wait_reported(sv.host_reports)
                    out = request(sv, person=SESSION_ACCOUNT, role="sleeper")
                    assert out.request.state == "active", out.notes
                    session = subprocess.Popen(
                        ["nsenter", "-t", str(prod.agent_pid()), "-m", "-u", "setpriv", f"--reuid={who.pw_uid}",
                         f"--regid={who.pw_gid}", "--clear-groups", "sudo", "-n", "-u", "root", "/usr/bin/sleep",
                         "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

                    def running() -> list:
                        return [p for p in sessions.sessions_of(SESSION_ACCOUNT, out.request.starts_at, None)
                                if p.name == "sleep" and p.uid == 0]
                    try:
                        wait_for(lambda: running() or session.poll() is not None, 10)
                        assert session.poll() is None, session.communicate()
                        [sleeper] = running()  # root's sleep 600, started by the person's sudo
                        start = time.monotonic()
                        sv.lifecycle.revoke("erin", out.request.id, "the change was rolled back")
                        wait_for(lambda: not os.path.exists(f"/proc/{sleeper.pid}") or
                                 open(f"/proc/{sleeper.pid}/stat").read().split(") ")[1][0] == "Z", 5)
                        assert time.monotonic() - start <= 1.0
                        session.wait(5)
                    finally:
                        if session.poll() is None:
                            session.kill()
                    wait_for(lambda: events(sv, "agent.sessions_ended"), 5)
                    [ended] = events(sv, "agent.sessions_ended")
                    assert ended.request_id == out.request.id and "/usr/bin/sleep 600" in ended.details
                    assert ended.actor == "agent:web-prod-01"
                finally:
                    prod.stop()


def test_expiry_waits_for_a_silent_host_once_per_batch_not_once_per_grant(world) -> None:
    from datetime import timedelta
    sv, agent = world
    prod, dev = agent("web-prod-01").start(), agent("web-dev-01").start()
    prod.wait_reported(sv.host_reports)
    dev.wait_reported(sv.host_reports)
    mine = [request(sv, person="alice"), request(sv, person="alice")]
    silent = [request(sv, target="web-dev-01", person="dave") for _ in range(3)]
    assert all(o.request.state == "active" for o in mine + silent)
    dev.stop()  # web-dev-01 goes quiet holding its three drop-ins
    later = max(o.request.expires_at for o in mine + silent) + timedelta(seconds=1)
    start = time.monotonic()
    assert sv.lifecycle.expire_due(now=later) == 5
    took = time.monotonic() - start
    assert 4.5 <= took < 8, took  # one [backends.agent] wait (5 s) for the batch, not three
    assert [sv.lifecycle.get(o.request.id).state for o in mine] == ["expired", "expired"]
    assert prod.files() == []
    assert [sv.lifecycle.get(o.request.id).state for o in silent] == ["active"] * 3  # revocation retried later
    failed = events(sv, "grant.revoke_failed")
    assert len(failed) == 3 and all("web-dev-01" in e.details and "still holds" in e.details for e in failed)


def test_agent_once_writes_and_reports_then_exits(world, tmp_path: Path) -> None:
    import sys
    sv, _ = world
    sock = sv.config.path(sv.config.settings.server.socket)
    where = tmp_path / "once"
    (where / "sudoers.d").mkdir(parents=True)

    def once() -> subprocess.CompletedProcess:
        jit = str(Path(sys.executable).with_name("jit"))
        return subprocess.run(["unshare", "--uts", "/bin/sh", "-c", 'hostname web-prod-01 && exec "$@"', "sh", jit,
                               "agent", "--once", "--server", f"unix://{sock}", "--sudoers-dir",
                               str(where / "sudoers.d"), "--state-dir", str(where / "state"), "--timestamp-dir", ""],
                              capture_output=True, text=True, timeout=60)
    first = once()
    assert first.returncode == 0 and "0 drop-in(s) held, reported" in first.stdout, first
    result: list = []
    t = threading.Thread(target=lambda: result.append(request(sv)))
    t.start()
    wait_for(lambda: sv.lifecycle.list(state="approved"), 5)
    second = once()  # the grant is 'applying': this pass writes it and reports, which activates it
    t.join(30)
    assert second.returncode == 0 and "1 drop-in(s) held, reported" in second.stdout, second
    assert result[0].request.state == "active"
    assert sorted(p.name for p in (where / "sudoers.d").iterdir()) == [f"jit_g{result[0].request.grant.id}"]


def test_agent_once_without_a_server_exits_5_and_writes_nothing(tmp_path: Path) -> None:
    import sys
    jit = str(Path(sys.executable).with_name("jit"))
    r = subprocess.run([jit, "agent", "--once", "--server", f"unix://{tmp_path / 'none.sock'}", "--sudoers-dir",
                        str(tmp_path / "sudoers.d"), "--state-dir", str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 5 and "server unreachable: nothing new written" in r.stdout, r
    assert list((tmp_path / "sudoers.d").iterdir()) == []


def test_reconcile_sees_what_a_host_reports_and_no_grant_backs(world) -> None:
    from app.fleet.reports import Held
    sv, agent = world
    prod = agent("web-prod-01").start()
    prod.wait_reported(sv.host_reports)
    out = request(sv)
    assert out.request.state == "active"
    prod.stop()  # as a host would report a drop-in copied in by hand, beside the real one
    held = sv.host_reports.of("web-prod-01").held
    sv.host_reports.record("web-prod-01", [*held.values(), Held(999, "mallory", None, None, "/etc/sudoers.d/jit_g999")],
                           {})
    findings = [f for f in sv.reconciler.run() if f.backend == "agent"]
    assert [(f.kind, f.grant_id, f.person) for f in findings] == [("standing", 999, "mallory")]
    sv.host_reports.record("web-prod-01", [], {})  # the real one gone from the host: missing
    findings = [f for f in sv.reconciler.run() if f.backend == "agent"]
    assert [(f.kind, f.grant_id) for f in findings] == [("missing", out.request.grant.id)]

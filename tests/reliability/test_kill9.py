"""kill -9 at every step of apply and revoke, on the sudo, LDAP (real slapd) and AWS (moto server)
backends: after restart no privilege outlives its grant by more than 2 s, and no grant is
applied twice.

The step that crashes runs in its own process (``crash_driver.py``) with ``JIT_FAILPOINTS`` set,
so it dies by SIGKILL exactly there (app/failpoints.py): ``apply.before_backend`` (the intent
``applying`` is committed, the backend not called), ``apply.after_backend`` (the backend holds it,
the outcome is not committed), and the same two for revoke; the apply steps once more in the
engine's batch activation of several requests starting at one instant. Revocation is reached three ways
that run different code: expiry by the engine (``expire_due``), an operator's revoke and the
requester's release (``_end``), and once more as a second crash inside the recovery itself.

The restart is a new engine pass in the test process, with the clock 1 s after the crash: far
inside the sandbox's 60 s lease, so only the prompt "its owner is a dead process" recovery can
pass, not a lease running out. After it, each test reads the target itself (the sudoers
drop-in, the group's members in slapd, the user's inline policies as moto stores them) and the
audit chain: ``grant.active`` at most once, exactly one end event, the chain intact.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlmodel import select

from app.dev.sandbox import LdapSandbox, write_sandbox
from app.dev.servers.moto import have_moto, scrub_aws_env, start_moto
from app.dev.servers.slapd import SKIP_REASON, have_slapd, start_slapd, user_dn
from app.store import AuditEvent, audit
from tests.reliability.crash_driver import services, step

DRIVER = Path(__file__).with_name("crash_driver.py")
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
MINUTES = 10
EXPIRY = T0 + timedelta(minutes=MINUTES)
BOUND = timedelta(seconds=2)  # no privilege outlives its grant by more than this after a restart
RESTART = timedelta(seconds=1)  # the engine comes back this long after the crash
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
WEB_ADMINS = "cn=web-admins,ou=groups,dc=example,dc=org"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                                                 "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]}]}
END_EVENTS = ("request.expired", "request.released", "request.revoked")


@dataclass
class World:
    """One sandbox on one backend, and what its target really holds for alice."""

    backend: str
    config: Path
    target: str
    role: str
    held: Callable[[], list[str]]  # alice's artifacts as the target stores them (names, sorted)
    expiry_at_target: Callable[[int], datetime | None]  # the expiry the target enforces itself, if any
    sessions_ended: Callable[[], bool] = lambda: True  # AWS: the deny on older sessions is in place


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    if not have_slapd():
        pytest.skip(SKIP_REASON)
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto():
    if not have_moto():
        pytest.skip("moto's server extra is not installed (pip install 'moto[server]>=5,<6')")
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(params=["sudo", "ldap", "aws"])
def world(request, tmp_path, monkeypatch) -> Iterator[World]:
    env = dict(os.environ)
    scrub_aws_env(env, tmp_path)
    env.update(AWS_ENV)  # moto's dummy credentials, for this process and the crashing one
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sb = tmp_path / "sb"
    if request.param == "sudo":
        config = write_sandbox(sb, servicenow_url=None)
        sudoers = sb / "sudoers.d"

        def notafter(grant_id: int) -> datetime | None:
            text = (sudoers / f"jit_g{grant_id}").read_text()
            stamp = text.split("NOTAFTER=", 1)[1].split()[0]
            return datetime.strptime(stamp, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)
        yield World("sudo", config, "web-dev-01", "service-admin",
                    lambda: sorted(p.name for p in sudoers.iterdir()), notafter)
    elif request.param == "ldap":
        server = request.getfixturevalue("slapd")
        config = write_sandbox(sb, servicenow_url=None,
                               ldap=LdapSandbox(server.uri, server.admin_dn, server.admin_password))

        def members() -> list[str]:
            conn = server.connection()
            conn.search(WEB_ADMINS, "(objectClass=*)", attributes=["member"])
            values = [str(v) for v in conn.entries[0].member.values]
            conn.unbind()
            return sorted(v for v in values if v.lower() == user_dn("alice").lower())
        assert members() == [], "a previous case left alice in the group"
        yield World("ldap", config, "corp-directory", "web-admins", members, lambda grant_id: None)
    else:
        server = request.getfixturevalue("moto")
        server.reset()
        iam = server.client("iam")
        iam.create_user(UserName="alice")
        iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
        config = write_sandbox(sb, servicenow_url=None, aws_endpoint=server.endpoint_url)

        def document(get: Callable[..., dict], **names: str) -> dict:
            doc = get(**names)["PolicyDocument"]
            return json.loads(doc) if isinstance(doc, str) else doc

        def not_after(grant_id: int) -> datetime:
            doc = document(iam.get_user_policy, UserName="alice", PolicyName=f"jit-grant-{grant_id}")
            stamp = doc["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

        def sessions_ended() -> bool:
            doc = document(iam.get_role_policy, RoleName="jit-admin", PolicyName="jit-revoke-alice")
            return doc["Statement"][0]["Effect"] == "Deny" and "aws:TokenIssueTime" in json.dumps(doc)
        yield World("aws", config, "aws-prod", "admin",
                    lambda: sorted(iam.list_user_policies(UserName="alice")["PolicyNames"]), not_after,
                    sessions_ended)


def crash(world: World, now: datetime, failpoint: str, action: str, *args: object) -> None:
    """Run one step in a child process that must die by SIGKILL at ``failpoint``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JIT_FAILPOINTS": failpoint}
    done = subprocess.run([sys.executable, str(DRIVER), str(world.config), now.isoformat(), action, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr[-3000:])


def run(world: World, now: datetime, action: str, *args: object) -> object:
    """Run one step in this process (the restarted engine, or a step not meant to crash)."""
    sv = services(world.config, now)
    try:
        return step(sv, action, [str(a) for a in args])
    finally:
        sv.close()


def snapshot(world: World) -> tuple[dict, Counter, bool]:
    """The request and its grant as recorded, the audit actions, and whether the chain verifies."""
    sv = services(world.config, T0)
    try:
        view = sv.lifecycle.get(1)
        with sv.store.transaction() as s:
            actions = Counter(e.action for e in s.exec(select(AuditEvent)).all())
            ok = audit.verify(s).ok
    finally:
        sv.close()
    return view, actions, ok


def artifact(world: World, grant_id: int = 1) -> list[str]:
    return {"sudo": [f"jit_g{grant_id}"], "ldap": [user_dn("alice")], "aws": [f"jit-grant-{grant_id}"]}[world.backend]


def assert_ended(world: World, end_state: str, ended_by: datetime, applied: int) -> None:
    view, actions, ok = snapshot(world)
    assert view.state == end_state and view.grant.status == "revoked", view
    assert world.held() == [], f"{world.backend} still holds {world.held()}"
    assert view.grant.revoked_at <= ended_by, (view.grant.revoked_at, ended_by)
    assert actions["grant.active"] == applied, actions
    assert sum(actions[e] for e in END_EVENTS) == 1 and actions[f"request.{end_state}"] == 1, actions
    assert ok, "the audit chain does not verify"
    if applied:
        assert world.sessions_ended()


@pytest.mark.parametrize("failpoint", ["apply.before_backend", "apply.after_backend"])
def test_kill_during_apply_then_restart_within_the_grant(world, failpoint):
    crash(world, T0, failpoint, "grant", world.target, world.role, MINUTES)
    view, _, _ = snapshot(world)
    assert view.grant.status == "applying"
    assert world.held() == (artifact(world) if failpoint == "apply.after_backend" else [])

    run(world, T0 + RESTART, "engine")  # finishes the apply, once, with the grant's own expiry
    view, actions, ok = snapshot(world)
    assert view.state == "active" and view.grant.status == "active" and ok
    assert world.held() == artifact(world) and actions["grant.active"] == 1
    assert view.grant.expires_at == EXPIRY  # the crash did not lengthen the grant...
    assert world.expiry_at_target(1) in (None, EXPIRY)  # ...nor the expiry the target enforces

    run(world, EXPIRY + RESTART, "engine")
    assert_ended(world, "expired", EXPIRY + BOUND, applied=1)


@pytest.mark.parametrize("failpoint", ["apply.before_backend", "apply.after_backend"])
def test_kill_during_apply_then_restart_after_expiry(world, failpoint):
    crash(world, T0, failpoint, "grant", world.target, world.role, MINUTES)
    late = EXPIRY + timedelta(minutes=1)
    run(world, late, "engine")  # the grant's time is gone: nothing is applied, anything half-applied goes
    assert_ended(world, "expired", late, applied=0)


REVOKE_CASES = [("expire", b) for b in ("sudo", "ldap", "aws")] + [("revoke", b) for b in ("sudo", "ldap", "aws")] \
    + [("release", "sudo")]  # release and an operator's revoke run the same code (_end): release on sudo only


@pytest.mark.parametrize("failpoint", ["revoke.before_backend", "revoke.after_backend"])
@pytest.mark.parametrize("how,world", REVOKE_CASES, indirect=["world"])
def test_kill_during_revoke(world, how, failpoint):
    request_id = run(world, T0, "grant", world.target, world.role, MINUTES)
    assert world.held() == artifact(world)
    killed_at = EXPIRY if how == "expire" else T0 + timedelta(minutes=1)
    crash(world, killed_at, failpoint, *{"expire": ("engine",), "revoke": ("revoke", request_id),
                                         "release": ("release", request_id)}[how])
    view, _, _ = snapshot(world)
    assert view.grant.status == "revoking" and view.state == "active"
    assert world.held() == (artifact(world) if failpoint == "revoke.before_backend" else [])

    run(world, killed_at + RESTART, "engine")
    assert_ended(world, {"expire": "expired", "revoke": "revoked", "release": "released"}[how],
                 killed_at + BOUND, applied=1)


def test_kill_again_during_recovery(world):
    """The restarted engine dies too, after claiming the grant; the next one still finishes at once."""
    run(world, T0, "grant", world.target, world.role, MINUTES)
    crash(world, EXPIRY, "revoke.before_backend", "engine")
    crash(world, EXPIRY + timedelta(seconds=0.5), "revoke.before_backend", "engine")  # dies in recover()
    view, _, _ = snapshot(world)
    assert view.grant.status == "revoking" and world.held() == artifact(world)
    run(world, EXPIRY + RESTART, "engine")
    assert_ended(world, "expired", EXPIRY + BOUND, applied=1)


BATCH = 3  # alice's requests starting at one instant (her concurrency limit)


def batch_artifacts(world: World) -> list[str]:
    """What the target holds for the batch: a drop-in or policy per grant; one shared LDAP membership."""
    return sorted({a for grant_id in range(1, BATCH + 1) for a in artifact(world, grant_id)})


@pytest.mark.parametrize("failpoint", ["apply.before_backend", "apply.after_backend"])
def test_kill_during_a_batch_activation_then_restart(world, failpoint):
    """The engine dies in the middle of one activation batch: every grant's intent committed, the
    backend called for none or for all of them, no outcome written. The restarted engine applies
    each once, with the requests' own window, and expiry ends each once."""
    start = T0 + timedelta(minutes=1)
    ids = run(world, T0, "schedule", world.target, world.role, MINUTES, BATCH, start.isoformat())
    assert len(ids) == BATCH and world.held() == []
    crash(world, start, failpoint, "engine")
    views = [view_of(world, rid) for rid in ids]
    assert {(v.state, v.grant.status) for v in views} == {("approved", "applying")}
    assert world.held() == (batch_artifacts(world) if failpoint == "apply.after_backend" else [])

    run(world, start + RESTART, "engine")
    actions = audit_actions(world)
    for rid in ids:
        view = view_of(world, rid)
        assert view.state == "active" and view.grant.status == "active"
        assert view.grant.expires_at == start + timedelta(minutes=MINUTES)
        assert world.expiry_at_target(view.grant.id) in (None, view.grant.expires_at)
        assert (actions[(rid, "grant.applying")], actions[(rid, "grant.active")]) == (1, 1), actions
    assert world.held() == batch_artifacts(world)

    ended_at = start + timedelta(minutes=MINUTES) + RESTART
    run(world, ended_at, "engine")
    actions = audit_actions(world)
    for rid in ids:
        view = view_of(world, rid)
        assert view.state == "expired" and view.grant.status == "revoked" and view.grant.revoked_at <= ended_at
        assert sum(actions[(rid, e)] for e in END_EVENTS) == 1 and actions[(rid, "grant.active")] == 1
    assert world.held() == []
    assert snapshot(world)[2], "the audit chain does not verify"


def view_of(world: World, request_id: int):
    sv = services(world.config, T0)
    try:
        return sv.lifecycle.get(request_id)
    finally:
        sv.close()


def audit_actions(world: World) -> Counter:
    sv = services(world.config, T0)
    try:
        with sv.store.transaction() as s:
            return Counter((e.request_id, e.action) for e in s.exec(select(AuditEvent)).all())
    finally:
        sv.close()

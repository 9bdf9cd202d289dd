"""Defence in depth at expiry, LDAP (AD mode) and AWS (role mode), with the engine stopped.

The grants are applied, the engine is "down" while they pass their expiry, and the target
already carries the expiry where the mode allows it: the AD TTL value sent with the
membership, the IAM condition as the server stores it. The restarted engine then removes
what is left within seconds, and the audit chain records it.
"""
from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta, timezone

import ldap3
import pytest
from backend_targets import ROLE_ARN, TRUST, WEB, policy_with_targets
from moto_server import have_moto, scrub_aws_env, start_moto
from slapd import GROUPS_DN, PEOPLE_DN, Slapd, slapd_server, user_dn  # noqa: F401 (fixture)
from sqlmodel import select

from app.clock import FrozenClock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.jobs.engine import Engine
from app.lifecycle import Lifecycle
from app.store import AuditEvent, audit
from integrations.aws import AwsBackend
from integrations.ldap import LdapBackend
from tests.conftest import T0


class RecordingConnection(ldap3.Connection):
    """Records each modify (what AD would receive), then hands slapd the plain DN (slapd has no TTLs)."""

    sent: list = []

    def modify(self, dn, changes, controls=None):  # type: ignore[override]
        RecordingConnection.sent.append((dn, copy.deepcopy(changes)))
        plain = {a: [(op, [re.sub(r"^<TTL=\d+,(.*)>$", r"\1", v) for v in vals]) for op, vals in ops]
                 for a, ops in changes.items()}
        return super().modify(dn, plain, controls)


@pytest.fixture
def moto(monkeypatch):
    if not have_moto():
        pytest.skip("moto's server extra is not installed")
    scrub_aws_env(__import__("os").environ)
    server = start_moto()
    yield server
    server.stop()


def members(slapd: Slapd) -> list[str]:
    conn = slapd.connection()
    conn.search(WEB, "(objectClass=*)", attributes=["member"])
    values = [str(v) for v in conn.entries[0].member.values]
    conn.unbind()
    return values


def test_stopped_engine_then_restart_removes_what_is_left(slapd_server, moto, store, policy):
    RecordingConnection.sent = []
    clock = FrozenClock(T0)
    ldap_backend = LdapBackend(slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password,
                               user_base=PEOPLE_DN, group_base=GROUPS_DN, managed_groups=[WEB],
                               active_directory=True, clock=clock, connection_factory=RecordingConnection)
    iam = moto.client("iam")
    iam.create_user(UserName="alice")
    iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
    aws_backend = AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=moto.session(), clock=clock)
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    lc = Lifecycle(store, policy_with_targets(policy), directory, {"ldap": ldap_backend, "aws": aws_backend},
                   clock, EngineSettings(retry_backoff=timedelta(0)))
    ldap_req = lc.submit("alice", "corp-ldap", "web-admins", timedelta(minutes=10), "rotate the web certs").request
    aws_req = lc.submit("alice", "aws-prod", "admin", timedelta(minutes=10), "rotate the web certs").request
    assert ldap_req.state == aws_req.state == "active"
    expiry = aws_req.expires_at

    # The expiry is in the targets themselves.
    assert RecordingConnection.sent[-1] == (WEB, {"member": [(ldap3.MODIFY_ADD, [f"<TTL=600,{user_dn('alice')}>"])]})
    stored = iam.get_user_policy(UserName="alice", PolicyName=f"jit-grant-{aws_req.grant.id}")["PolicyDocument"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    condition = stored["Statement"][0]["Condition"]
    assert condition["DateLessThan"]["aws:CurrentTime"] == expiry.strftime("%Y-%m-%dT%H:%M:%SZ")

    # The engine is down while both pass their expiry: what the engine owns is still there.
    clock.advance(timedelta(minutes=30))
    assert user_dn("alice") in members(slapd_server)  # (AD itself would have dropped it: TTL)
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == [f"jit-grant-{aws_req.grant.id}"]

    # Restart: the first pass removes what is left.
    report = Engine(lc, EngineSettings(), clock).run_once()
    assert report.expired == 2
    assert user_dn("alice") not in members(slapd_server)
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
    deny = iam.get_role_policy(RoleName="jit-admin", PolicyName="jit-revoke-alice")["PolicyDocument"]
    deny = json.loads(deny) if isinstance(deny, str) else deny
    assert "aws:TokenIssueTime" in json.dumps(deny)  # live sessions issued before now are dead
    for rid in (ldap_req.id, aws_req.id):
        view = lc.get(rid)
        assert view.state == "expired" and view.grant.status == "revoked"
        assert view.grant.revoked_at == clock()  # within the restarted engine's first pass
    with store.transaction() as s:
        expired = s.exec(select(AuditEvent).where(AuditEvent.action == "request.expired")).all()
        assert {e.request_id for e in expired} == {ldap_req.id, aws_req.id}
        assert audit.verify(s).ok


def test_reconcile_finds_and_fixes_drift_in_ldap_and_aws(slapd_server, moto, store, policy):
    from app.jobs.reconcile import Reconciler
    clock = FrozenClock(T0)
    ldap_backend = LdapBackend(slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password,
                               user_base=PEOPLE_DN, group_base=GROUPS_DN, managed_groups=[WEB])
    iam = moto.client("iam")
    for user in ("alice", "bob"):
        iam.create_user(UserName=user)
    iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
    aws_backend = AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=moto.session(), clock=clock)
    backends = {"ldap": ldap_backend, "aws": aws_backend}
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    lc = Lifecycle(store, policy_with_targets(policy), directory, backends, clock,
                   EngineSettings(retry_backoff=timedelta(0)))
    lc.submit("alice", "corp-ldap", "web-admins", timedelta(minutes=10), "rotate the web certs")
    lc.submit("alice", "aws-prod", "admin", timedelta(minutes=10), "rotate the web certs")
    reconciler = Reconciler(store, backends, clock)
    assert reconciler.run() == []  # every artifact is backed by its grant

    conn = slapd_server.connection()  # standing privileges added by hand
    conn.modify(WEB, {"member": [(ldap3.MODIFY_ADD, [user_dn("bob")])]})
    conn.unbind()
    iam.put_user_policy(UserName="bob", PolicyName="jit-grant-777", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ROLE_ARN}]}))
    found = {(f.backend, f.kind, f.person) for f in reconciler.run()}
    assert found == {("ldap", "standing", "bob"), ("aws", "standing", "bob")}
    fixed = reconciler.run(fix=True)
    assert {f.action for f in fixed} == {"removed"}
    assert user_dn("bob") not in members(slapd_server) and user_dn("alice") in members(slapd_server)
    assert iam.list_user_policies(UserName="bob")["PolicyNames"] == []
    assert reconciler.run() == []


def test_aws_credentials_for_the_grantee_only(moto, store, policy):
    clock = FrozenClock(T0)
    iam = moto.client("iam")
    iam.create_user(UserName="alice")
    iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
    backend = AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=moto.session(), clock=clock)
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    lc = Lifecycle(store, policy_with_targets(policy), directory, {"aws": backend}, clock)
    rid = lc.submit("alice", "aws-prod", "admin", timedelta(minutes=20), "rotate the web certs").request.id
    from app.domain.errors import Refused
    with pytest.raises(Refused, match="only alice"):
        lc.aws_credentials("dave", rid)
    asked = datetime.now(timezone.utc).replace(microsecond=0)
    creds = lc.aws_credentials("alice", rid)
    answered = datetime.now(timezone.utc)
    assert creds["Version"] == 1 and {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"} <= creds.keys()
    # moto stamps Expiration with the real clock, the grant runs on the frozen one: compare durations.
    # Asked for what remains of the grant (20 min) less the 5 s skew margin, never more.
    expiration = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    remaining = lc.get(rid).expires_at - clock()
    assert asked + remaining - timedelta(seconds=10) <= expiration <= answered + remaining
    with store.transaction() as s:
        issued = s.exec(select(AuditEvent).where(AuditEvent.action == "credentials.issued")).one()
    assert creds["SecretAccessKey"] not in issued.details and creds["SessionToken"] not in issued.details
    clock.advance(timedelta(minutes=6))  # under 15 minutes left: STS cannot issue that short
    with pytest.raises(Refused, match="15 minutes"):
        lc.aws_credentials("alice", rid)

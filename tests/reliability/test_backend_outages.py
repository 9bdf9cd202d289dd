"""Backend and database outages: a real slapd stopped or frozen (SIGSTOP) mid-apply and mid-revoke,
AWS throttling in front of a real moto server, PostgreSQL unreachable and SQLite locked.

In every case the engine retries with backoff, records the failure (audit event and log line),
alerts (a webhook a local HTTP server receives), and never marks revoked what still exists on the
target: the target itself is asserted on, before and after the outage ends.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from backend_targets import TRUST, WEB, policy_with_targets
from fault_rigs import CVTSUDOERS, NO_SUDO, VISUDO, TcpRelay, ThrottlingProxy
from sqlmodel import select
from webhook_receiver import Receiver

from app.clock import FrozenClock, system_clock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.dev.servers.moto import have_moto, scrub_aws_env, start_moto
from app.dev.servers.slapd import GROUPS_DN, PEOPLE_DN, SKIP_REASON, have_slapd, start_slapd, user_dn
from app.identity import StaticDirectory
from app.jobs.engine import Engine
from app.jobs.outbox import Deliverer
from app.lifecycle import Lifecycle, OutboxSettings
from app.store import AuditEvent, GrantRow, Store
from integrations.aws import AwsBackend
from integrations.ldap import LdapBackend
from integrations.notify import Webhook
from integrations.sudo import SudoBackend
from policies.model import PolicySet
from tests.conftest import PG_URL, T0

ALICE = user_dn("alice")
BACKOFF = timedelta(milliseconds=200)  # the engine's retry_backoff: between tries, and 2^attempts x it to the next pass
DIRECTORY = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class World:
    """A lifecycle on one backend with the webhook wired through the outbox; a frozen clock."""

    def __init__(self, store: Store, policy: PolicySet, backends: dict, receiver: Receiver) -> None:
        self.clock = FrozenClock(T0)
        self.store = store
        self.settings = EngineSettings(retry_backoff=BACKOFF, apply_attempts=2)
        self.lc = Lifecycle(store, policy_with_targets(policy), DIRECTORY, backends, self.clock, self.settings,
                            outbox=OutboxSettings(webhook=True))
        self.webhook = Webhook(receiver.url, timeout=2)
        self.engine = Engine(self.lc, self.settings, self.clock,
                             deliverer=Deliverer(store, self.clock, tickets=None, webhook=self.webhook))
        self.receiver = receiver

    def grant(self, request_id: int) -> GrantRow:
        with self.store.transaction() as s:
            return s.exec(select(GrantRow).where(GrantRow.request_id == request_id)).one()

    def events(self, action: str) -> list[dict]:
        with self.store.transaction() as s:
            return [json.loads(e.details) for e in s.exec(select(AuditEvent).where(AuditEvent.action == action)
                                                         .order_by(AuditEvent.seq)).all()]

    def close(self) -> None:
        self.webhook.close()


# ---------------------------------------------------------------------------------------- LDAP
@pytest.fixture
def slapd(tmp_path):
    if not have_slapd():
        pytest.skip(SKIP_REASON)
    server = start_slapd(tmp_path)
    yield server
    server.stop()


def members(slapd) -> list[str]:
    conn = slapd.connection()
    conn.search(WEB, "(objectClass=*)", attributes=["member"])
    values = [str(v) for v in conn.entries[0].member.values]
    conn.unbind()
    return values


@pytest.fixture
def ldap_world(slapd, sqlite_store, policy, receiver):
    backend = LdapBackend(slapd.uri, slapd.admin_dn, slapd.admin_password, user_base=PEOPLE_DN,
                          group_base=GROUPS_DN, managed_groups=[WEB], timeout=1)
    w = World(sqlite_store, policy, {"ldap": backend}, receiver)
    yield w
    w.close()
    backend.close()


def outage(slapd, how: str) -> None:
    slapd.pause() if how == "paused" else slapd.stop()


def back(slapd, how: str) -> None:
    slapd.resume() if how == "paused" else slapd.start()


@pytest.mark.parametrize("how", ["stopped", "paused"])
def test_ldap_down_mid_revoke_is_never_marked_revoked_until_removed(ldap_world, slapd, how, caplog):
    w = ldap_world
    view = w.lc.submit("alice", "corp-ldap", "web-admins", timedelta(minutes=10), "rotate the web certs").request
    assert view.state == "active" and ALICE in members(slapd)

    outage(slapd, how)
    w.clock.advance(timedelta(minutes=10, seconds=1))
    with caplog.at_level(logging.ERROR, logger="jit.lifecycle"):
        w.engine.run_once()  # expiry: the revoke fails (after apply_attempts tries), the alert goes out
    g = w.grant(view.id)
    assert (g.status, g.attempts, g.revoked_at) == ("revoking", 1, None)
    assert w.lc.get(view.id).state == "active"
    assert g.next_attempt_at == w.clock() + BACKOFF * 2  # backoff, not a hot loop
    [failed] = w.events("grant.revoke_failed")
    assert failed["attempts"] == 1 and "unreachable" in failed["error"]
    assert any(f"REQ-{view.id}: revoking grant {g.id} failed (attempt 1)" in r.getMessage() for r in caplog.records)
    assert any("REVOKE FAILING" in t and f"REQ-{view.id}" in t for t in w.receiver.texts())

    back(slapd, how)
    assert ALICE in members(slapd)  # still on the target ...
    w.engine.run_once()  # ... and the retry is not due yet: still 'revoking', not 'revoked'
    assert w.grant(view.id).status == "revoking" and ALICE in members(slapd)

    w.clock.advance(BACKOFF * 2)
    w.engine.run_once()
    g = w.grant(view.id)
    assert ALICE not in members(slapd)
    assert (g.status, w.lc.get(view.id).state) == ("revoked", "expired")
    assert g.revoked_at == w.clock()  # marked only on the pass that removed it


@pytest.mark.parametrize("how", ["stopped", "paused"])
def test_ldap_down_mid_apply_fails_the_request_and_alerts(ldap_world, slapd, how):
    w = ldap_world
    outage(slapd, how)
    view = w.lc.submit("alice", "corp-ldap", "web-admins", timedelta(minutes=10), "rotate the web certs").request
    back(slapd, how)
    assert view.state == "failed" and view.grant.status == "failed"
    assert "unreachable" in view.grant.last_error
    assert ALICE not in members(slapd)  # nothing half-written
    w.engine.run_once()
    assert any(":x:" in t and f"REQ-{view.id}" in t and "could not be applied on ldap" in t
               for t in w.receiver.texts())


# ----------------------------------------------------------------------------------------- AWS
@pytest.fixture(scope="module")
def moto_server():
    if not have_moto():
        pytest.skip("moto's server extra is not installed")
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    import os
    scrub_aws_env(os.environ)
    moto_server.reset()
    proxy = ThrottlingProxy(moto_server.port)
    iam = moto_server.client("iam")  # straight to moto: the test's own view of the target
    iam.create_user(UserName="alice")
    iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
    yield proxy, iam, moto_server
    proxy.close()


def test_aws_throttling_is_retried_and_a_throttled_revoke_is_never_marked_revoked(aws, sqlite_store, policy, receiver):
    proxy, iam, moto = aws
    clock = FrozenClock(T0)
    backend = AwsBackend(mode="role", endpoint_url=proxy.endpoint_url, session=moto.session(), clock=clock,
                         max_attempts=2)
    w = World(sqlite_store, policy, {"aws": backend}, receiver)
    w.clock = clock
    w.lc.clock = w.engine.clock = clock
    w.engine.deliverer.clock = clock
    try:
        proxy.throttle = 3  # botocore retries once, gives up; the engine tries again and gets through
        view = w.lc.submit("alice", "aws-prod", "admin", timedelta(minutes=10), "rotate the web certs").request
        assert proxy.throttled == 3 and view.state == "active"
        assert iam.list_user_policies(UserName="alice")["PolicyNames"] == [f"jit-grant-{view.grant.id}"]

        proxy.throttle = 10_000  # a long storm over the expiry
        clock.advance(timedelta(minutes=10, seconds=1))
        w.engine.run_once()
        g = w.grant(view.id)
        assert g.status == "revoking" and "Throttling" in g.last_error
        assert iam.list_user_policies(UserName="alice")["PolicyNames"] == [f"jit-grant-{view.grant.id}"]
        assert w.lc.get(view.id).state == "active"
        assert any("REVOKE FAILING" in t and "Throttling" in t for t in receiver.texts())

        proxy.throttle = 0
        clock.advance(BACKOFF * 2)
        w.engine.run_once()
        assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
        assert (w.grant(view.id).status, w.lc.get(view.id).state) == ("revoked", "expired")
    finally:
        w.close()


# ------------------------------------------------------------------------------------ database
def sudo_world(store: Store, policy: PolicySet, tmp_path: Path, clock, receiver: Receiver, **settings):
    if VISUDO is None or CVTSUDOERS is None:
        pytest.skip(NO_SUDO)
    sudoers = tmp_path / "sudoers.d"
    sudoers.mkdir()
    backend = SudoBackend(sudoers, visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    engine_settings = EngineSettings(**settings)
    lc = Lifecycle(store, policy, DIRECTORY, {"sudo": backend}, clock, engine_settings)
    webhook = Webhook(receiver.url, timeout=2)
    engine = Engine(lc, engine_settings, clock, alert=lambda text: webhook.send({"text": text}))
    return lc, engine, sudoers, webhook


def test_sqlite_locked_engine_waits_alerts_once_and_never_revokes_blind(tmp_path, policy, receiver, caplog):
    url = f"sqlite:///{tmp_path / 'jit.db'}"
    store = Store(url)
    store.migrate()

    @sa.event.listens_for(store.engine, "connect")
    def _short_wait(dbapi_conn, _record):  # the test's only tweak: wait 0.2 s for the lock, not 30 s
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    store.engine.dispose()
    clock = FrozenClock(T0)
    lc, engine, sudoers, webhook = sudo_world(store, policy, tmp_path, clock, receiver)
    view = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    file = sudoers / f"jit_g{view.grant.id}"
    assert view.state == "active" and file.exists()

    holder = sqlite3.connect(tmp_path / "jit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    clock.advance(timedelta(minutes=11))
    with caplog.at_level(logging.ERROR, logger="jit.engine"):
        for _ in range(3):
            engine._sweep()  # the job body the scheduler runs: it must return, not raise
    assert any("sweep failed, will retry" in r.getMessage() and "locked" in r.getMessage() for r in caplog.records)
    alerts = [t for t in receiver.texts() if "database is unreachable" in t]
    assert len(alerts) == 1  # once per outage, not once per sweep
    assert file.exists()  # nothing was removed behind the database's back ...
    holder.execute("ROLLBACK")
    holder.close()
    assert lc.get(view.id).state == "active"  # ... and nothing marked

    engine._sweep()
    assert not file.exists()
    assert lc.get(view.id).state == "expired" and lc.get(view.id).grant.status == "revoked"
    with store.transaction() as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.action == "engine.database_recovered")).all()
    assert json.loads(event.details)["failed_jobs"] == 3
    assert any("database is reachable again" in t for t in receiver.texts())
    webhook.close()
    store.dispose()


@pytest.mark.postgres
def test_postgres_unreachable_continuous_engine_survives_and_catches_up(pg_database, tmp_path, policy, receiver):
    host, port = "127.0.0.1", int(PG_URL.rsplit(":", 1)[1].split("/")[0])
    admin = sa.create_engine(pg_database)
    with admin.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    admin.dispose()
    relay = TcpRelay((host, port))
    url = pg_database.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}")
    store = Store(url)
    store.migrate()
    lc, engine, sudoers, webhook = sudo_world(
        store, policy, tmp_path, system_clock, receiver, sweep_interval=timedelta(milliseconds=300),
        poll_interval=timedelta(milliseconds=500), retry_backoff=timedelta(milliseconds=50))
    view = lc.submit("alice", "web-dev-01", "service-admin", timedelta(seconds=3), "check the nginx config").request
    file = sudoers / f"jit_g{view.grant.id}"
    assert view.state == "active" and file.exists()
    engine.start()
    try:
        relay.cut()  # PostgreSQL unreachable over the expiry
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("unreachable" in t for t in receiver.texts()):
            time.sleep(0.05)
        assert [t for t in receiver.texts() if "database is unreachable" in t], receiver.texts()
        time.sleep(max(0.0, (view.expires_at - system_clock()).total_seconds()) + 1)
        assert file.exists()  # the engine could not record a revocation, so it made none

        relay.restore()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and file.exists():
            time.sleep(0.05)
        assert not file.exists()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and lc.get(view.id).state != "expired":
            time.sleep(0.05)
        after = lc.get(view.id)
        assert after.state == "expired" and after.grant.revoked_at >= after.expires_at
        assert engine._scheduler is not None and engine._scheduler.running  # the loop never died
        assert engine._scheduler.get_job("sweep") is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("reachable again" in t for t in receiver.texts()):
            time.sleep(0.05)
        assert len([t for t in receiver.texts() if "database is unreachable" in t]) == 1
        assert any("reachable again" in t for t in receiver.texts())
        with store.transaction() as s:
            assert s.exec(select(AuditEvent).where(AuditEvent.action == "engine.database_recovered")).first()
    finally:
        engine.stop()
        relay.cut()
        webhook.close()
        store.dispose()

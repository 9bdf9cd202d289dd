"""No secret in any log line at any level, and the database created private.

The product wired by ``bootstrap.build`` with ``[logging] level = "DEBUG"`` talks to the
ServiceNow simulator over real HTTP (basic auth with a distinctive password) and delivers a
webhook to a receiver whose URL carries a secret path; every record logged at every level is
searched for both secrets. A control shows the search would find them: the same calls with the
HTTP clients' loggers unpinned do log the webhook URL.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from webhook_receiver import Receiver

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.store import Store
from integrations.servicenow.simulator import Simulator, SimulatorOptions

PASSWORD = "pw-8d1f0c2e-never-logged"
HOOK_SECRET = "hook-5b7e91aa-never-logged"
SIGNING_SECRET = "sign-0c4d2e77-never-logged"


@pytest.fixture
def world(tmp_path):
    sim = Simulator(SimulatorOptions(seed="demo", password=PASSWORD)).start()
    receiver = Receiver()
    config = write_sandbox(tmp_path / "sb", servicenow_url=sim.base_url)
    (tmp_path / "sb" / "snow-password").write_text(PASSWORD)
    config.write_text(config.read_text() + '\n[logging]\nlevel = "DEBUG"\n'
                      if "[logging]" not in config.read_text() else
                      config.read_text().replace('level = "INFO"', 'level = "DEBUG"'))
    environ = {**os.environ, "JIT_WEBHOOK_URL": f"{receiver.url}/{HOOK_SECRET}", "JIT_WEBHOOK_SECRET": SIGNING_SECRET}
    yield config, environ, receiver
    receiver.server.shutdown()
    sim.stop()


def exercise(config: Path, environ: dict[str, str]) -> None:
    sv = build(load_config(config), environ=environ)
    try:
        assert sv.tickets.find("CHG0000001") is not None  # an authenticated ServiceNow call
        sv.deliverer.webhook.send({"text": "a test message"})
    finally:
        sv.close()


def test_no_secret_reaches_the_logs_at_debug(world, caplog):
    config, environ, receiver = world
    caplog.set_level(logging.DEBUG)
    exercise(config, environ)
    assert receiver.texts() == ["a test message"]
    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG: the search below would prove nothing"
    assert PASSWORD not in logged and HOOK_SECRET not in logged and SIGNING_SECRET not in logged
    assert "X-Jit-Signature" in receiver.raw[-1][0]  # the messages were signed with it


TOKEN = "tok-3f9a7c21-never-logged"


def test_no_secret_reaches_the_logs_of_a_served_run_at_debug(world, caplog):
    """The whole path as deployed: jit server (the API, its access log, the engine's outbox) and a
    client sending a bearer token; ServiceNow asked over HTTP with its password, a webhook sent."""
    import httpx
    from tests.serving import dev_server
    config, environ, receiver = world
    caplog.set_level(logging.DEBUG)
    with dev_server(config, environ=environ) as sv:
        sock = sv.config.path(sv.config.settings.server.socket)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://jit", timeout=20,
                          headers={"X-Jit-User": "alice", "Authorization": f"Bearer {TOKEN}"}) as c:
            assert c.get("/v1/whoami").status_code == 200
            answer = c.post("/v1/requests", json={"target": "web-prod-01", "role": "service-admin", "duration": "1h",
                                                  "reason": "restart nginx after the TLS renewal",
                                                  "ticket": "CHG0000001"})
            assert answer.status_code == 201, answer.text  # the ticket checked with ServiceNow
        sv.engine.run_once()  # the outbox: work notes to ServiceNow, the webhook
    assert receiver.texts(), "no webhook was delivered: the search below would miss its URL"
    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert any(r.name.startswith("aiohttp") for r in caplog.records), "the server's own logging was not captured"
    for secret in (PASSWORD, HOOK_SECRET, SIGNING_SECRET, TOKEN):
        assert secret not in logged, secret


def test_the_search_finds_a_secret_when_a_client_logs_it(world, caplog, monkeypatch):
    config, environ, _ = world
    caplog.set_level(logging.DEBUG)
    original = logging.Logger.setLevel
    monkeypatch.setattr(logging.Logger, "setLevel",  # bootstrap's pinning undone for httpx
                        lambda self, level: original(self, logging.DEBUG if self.name == "httpx" else level))
    exercise(config, environ)
    assert HOOK_SECRET in "\n".join(r.getMessage() for r in caplog.records)


def test_a_new_sqlite_database_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        store = Store(f"sqlite:///{tmp_path / 'state' / 'jit.db'}")
        store.migrate()
        store.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in ("jit.db", "jit.db-wal", "jit.db-shm"):
        path = tmp_path / "state" / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    existing = tmp_path / "mine.db"
    existing.touch(mode=0o640)
    existing.chmod(0o640)
    Store(f"sqlite:///{existing}").dispose()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640  # an owner's own choice is left alone

"""The console as ``jit console`` runs it: a client of ``jit server`` (dev mode, in this process, on
the sandbox's socket), reading and acting through ``RemoteConsoleData``, kept live by ``/v1/events``."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest

from app.client.connection import Client, client_settings
from app.client.console import RemoteConsoleData
from app.dev.sandbox import write_sandbox
from app.queries.audit import newest_seq
from console_world import ADMIN, DEV, PROD, RecordingConsole, settle, until
from tests.serving import dev_server
from test_console import SIZE, shown, table, type_text


@pytest.fixture
def served(tmp_path):
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    with dev_server(config) as sv:
        yield sv, config


def remote(config, person: str) -> RemoteConsoleData:
    return RemoteConsoleData(Client(client_settings(None, str(config), {"JIT_USER": person})))


async def test_bob_approves_over_the_api_and_a_change_elsewhere_appears_within_half_a_second(served) -> None:
    sv, config = served
    rid = sv.lifecycle.submit("alice", PROD, ADMIN, timedelta(hours=2), "restart nginx after the TLS renewal",
                              "CHG0000001").request.id
    data = remote(config, "bob")
    assert data.operator.person == "bob" and data.operator.can_approve
    app = RecordingConsole(data, keymap=data.keymap(), cursor_blink=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await shown(pilot, str(rid))
            await pilot.press("a")  # the same keys as the dual approval on the database
            await settle(pilot)
            assert app.screen.title_text == f"Approve REQ-{rid}"
            await type_text(pilot, "ok for the renewal")
            await pilot.press("enter")
            await settle(pilot)
            assert ("REQ-1", "REQ-1: approved by bob; 1 of 2 approvals, still needs a member of system-owners.",
                    "information") in app.notes
            view = sv.lifecycle.get(rid)
            assert view.state == "pending" and [a.approver for a in view.approvals] == ["bob"]
            assert view.approvals[0].comment == "ok for the renewal"
            await until(pilot, lambda: table(app).cell(str(rid), "approvals").plain == "1/2", what="1/2 approvals")

            # Someone else submits, on the server: the event stream brings it, no reload asked for.
            started = time.monotonic()
            other = sv.lifecycle.submit("dave", DEV, ADMIN, timedelta(hours=1), "profile the staging cache").request.id
            await until(pilot, lambda: str(other) in table(app).shown_keys, timeout=0.5,
                        what="the request made elsewhere in the queue")
            assert time.monotonic() - started < 0.5
            assert data.change_token() == newest_seq(sv.store)  # the token is the audit head, as on the database
    finally:
        data.close()
    assert not data._follower.is_alive()  # the event stream's thread ended with close()


def test_every_read_over_the_api_equals_the_read_on_the_database(served) -> None:
    """One JSON definition both ways: what RemoteConsoleData rebuilds is what ConsoleData built."""
    from dataclasses import replace

    from app.queries.console import ConsoleData
    sv, config = served
    sv.lifecycle.submit("alice", PROD, ADMIN, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    sv.lifecycle.submit("alice", DEV, ADMIN, timedelta(minutes=10), "check the nginx config on dev")  # active
    sv.lifecycle.bypass("dave", PROD, ADMIN, timedelta(hours=1), "INC0000042", "nginx down, customers affected")
    local, data = ConsoleData(sv, "erin"), remote(config, "erin")
    try:
        assert data.operator == local.operator
        assert data.queue() == local.queue() and len(data.queue()) == 1
        assert data.active() == local.active() and len(data.active()) == 2
        assert data.reviews() == local.reviews() and len(data.reviews()) == 1
        assert data.request(1) == local.request(1)
        assert data.history(1) == local.history(1) and data.history(1)
        assert data.audit("nginx", 3) == local.audit("nginx", 3) and len(data.audit("nginx", 3)) == 3
        assert data.audit_status() == local.audit_status()
        assert data.ticket("CHG0000001") is local.ticket("CHG0000001") is None  # ServiceNow is off here
        assert replace(data.health(), privilege_hours_7d=0) == replace(local.health(), privilege_hours_7d=0)
        seq = data.audit("", 1)[0].seq
        assert data.event(seq) == local.event(seq) and data.event(seq)["seq"] == seq
        from app.domain.errors import NotFound
        with pytest.raises(NotFound, match="no audit event 999999"):
            data.event(999999)
        sv.engine.heartbeat()
        assert data.engine_status() == local.engine_status() and data.engine_status().alive is True
        assert data.bypass_choices() == local.bypass_choices()
        assert data.keymap() == dict(sv.config.settings.console.keys)
    finally:
        data.close()

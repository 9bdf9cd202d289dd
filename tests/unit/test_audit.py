"""The audit chain detects every edit, deletion and reordering, and names the first broken event."""
from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import audit
from app.store import AuditEvent


@pytest.fixture
def chain(lifecycle, store):
    rid = lifecycle.submit("alice", "web-prod-01", "service-admin", timedelta(hours=2),
                           "restart nginx after renewal", "CHG0000001").request.id
    lifecycle.approve("bob", rid)
    lifecycle.approve("carol", rid)
    lifecycle.release("alice", rid)
    with store.transaction() as s:
        result = audit.verify(s)
    assert result.ok and result.events == 8
    return store


def verify(store):
    with store.transaction() as s:
        return audit.verify(s)


def raw(store, sql, **params):
    with store.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def test_edit_of_details_is_named(chain):
    raw(chain, "UPDATE audit_event SET details = :d WHERE seq = 3", d=json.dumps({"comment": "forged"}))
    result = verify(chain)
    assert not result.ok and result.first_broken == 3 and "altered" in result.message


def test_edit_of_actor_is_named(chain):
    raw(chain, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 2")
    assert verify(chain).first_broken == 2


def test_rehashed_edit_breaks_the_next_link(chain):
    with chain.transaction() as s:  # a careful forger recomputes the hash of the event they edit
        ev = s.get(AuditEvent, 4)
        ev.actor = "mallory"
        ev.hash = audit.event_hash(ev.seq, ev.at, ev.actor, ev.action, ev.request_id, ev.details, ev.prev_hash)
        s.add(ev)
    result = verify(chain)
    assert not result.ok and result.first_broken == 5


def test_deletion_in_the_middle(chain):
    raw(chain, "DELETE FROM audit_event WHERE seq = 5")
    result = verify(chain)
    assert not result.ok and result.first_broken == 5 and "missing" in result.message


def test_deletion_of_the_newest(chain):
    raw(chain, "DELETE FROM audit_event WHERE seq = 8")
    result = verify(chain)
    assert not result.ok and result.first_broken == 8


def test_reordering(chain):
    with chain.transaction() as s:
        a, b = s.get(AuditEvent, 3), s.get(AuditEvent, 4)
        fields = ("at", "actor", "action", "request_id", "details", "prev_hash", "hash")
        va, vb = [getattr(a, f) for f in fields], [getattr(b, f) for f in fields]
        for f, x, y in zip(fields, va, vb):
            setattr(a, f, y)
            setattr(b, f, x)
        s.add(a)
        s.add(b)
    result = verify(chain)
    assert not result.ok and result.first_broken == 3


def test_export_is_json_lines_in_order(chain):
    with chain.transaction() as s:
        lines = list(audit.export_jsonl(s))
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert events[0]["action"] == "request.submitted" and events[1]["actor"] == "bob"
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(events, events[1:]))


def test_two_writers_of_the_first_event_queue_on_the_head(store, clock):
    """A new database: the second writer waits for the first's head lock and writes event 2 (it
    used to find no head to lock, write event 1 too and fail on the key, on PostgreSQL)."""
    first_added, errors = threading.Event(), []

    def write(actor: str, hold: float) -> None:
        try:
            with store.transaction() as s:
                audit.append(s, at=clock(), actor=actor, action="test.event")
                s.flush()
                first_added.set()
                time.sleep(hold)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = threading.Thread(target=write, args=("a", 0.5))
    a.start()
    assert first_added.wait(5)
    b = threading.Thread(target=write, args=("b", 0))
    b.start()
    a.join(10)
    b.join(10)
    assert errors == []
    result = verify(store)
    assert result.ok and result.events == 2
    with store.transaction() as s:
        assert [e.actor for e in s.exec(sa.select(AuditEvent).order_by(AuditEvent.seq)).scalars()] == ["a", "b"]

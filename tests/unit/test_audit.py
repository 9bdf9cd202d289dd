"""The audit chain detects every edit, deletion and reordering, and names the first broken event."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store import AuditEvent, audit


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


def test_deleting_every_event_and_the_head_is_found(chain):
    """Reproduction (issue 19): with every event and the head row deleted, verify said "0 events,
    chain intact". The head is written at genesis (migration 0004), so its absence is tampering."""
    raw(chain, "DELETE FROM audit_event")
    raw(chain, "DELETE FROM audit_head")
    result = verify(chain)
    assert not result.ok and "the audit head is missing" in result.message


def test_a_new_database_has_its_head_at_genesis_and_verifies(store):
    result = verify(store)
    assert result.ok and result.events == 0
    with store.transaction() as s:
        head = s.get(audit.AuditHead, 1)
    assert (head.seq, head.hash) == (0, audit.GENESIS)


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


def _reference_hash(seq, at, actor, action, request_id, details, prev_hash):
    """The chain's definition: SHA-256 of the canonical JSON of the event's fields (how events
    written before the hand-built form were hashed; their chains must still verify)."""
    import hashlib
    body = json.dumps({"seq": seq, "at": at.isoformat(), "actor": actor, "action": action,
                       "request_id": request_id, "details": details, "prev": prev_hash},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


text_values = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(1, 2**62), at=st.datetimes(timezones=st.just(timezone.utc)), actor=text_values,
       action=text_values, request_id=st.none() | st.integers(1, 2**31 - 1), details=text_values,
       prev=text_values)
def test_event_hash_is_the_canonical_json_hash(seq, at, actor, action, request_id, details, prev):
    assert (audit.event_hash(seq, at, actor, action, request_id, details, prev)
            == _reference_hash(seq, at, actor, action, request_id, details, prev))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | text_values,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_values, inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(details=st.dictionaries(text_values, json_values, max_size=6), data=st.data())
def test_canonical_embeds_text_it_wrote_before_as_if_it_wrote_it_now(details, data):
    """A request's checks are written out once, for its row and its event: the event's text and
    hash must be those of the checks written out in place."""
    written = {k: audit.canonical(v) if data.draw(st.booleans(), label=f"pre-encode {k!r}") else v
               for k, v in details.items()}
    assert audit.canonical(written) == audit.canonical(details)
    assert json.loads(audit.canonical(written)) == details


any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
plain_values = st.recursive(st.none() | st.booleans() | any_text,
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
                            max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(value=plain_values)
def test_canonical_plain_writes_what_canonical_writes(value):
    """orjson writes a decision's checks: it must write the very text json would (the hash is of it)."""
    assert audit.canonical_plain(value) == audit.canonical(value)


@pytest.mark.parametrize("text", ["\x00\x1f\x7f\u2028\u2029\ufeff \"\\/", "\U0001f510 é", "\ud800 lone"])
def test_canonical_plain_on_control_characters_and_lone_surrogates(text):
    value = [{"name": "business_need", "passed": False, "message": text}]
    assert audit.canonical_plain(value) == audit.canonical(value)


def test_append_many_continues_the_chain_that_append_started(store, clock):
    """Events written one by one and a batch in the same transaction form one chain, in order."""
    with store.transaction() as s:
        audit.append(s, at=clock(), actor="a", action="one", note="é \"quoted\"")
        written = audit.append_many(s, [(clock(), "b", "two", 7, {"k": [1, 2]}), (clock(), "c", "three", None, {})])
        audit.append(s, at=clock(), actor="d", action="four")
    assert [e.seq for e in written] == [2, 3]
    with store.transaction() as s:
        rows = s.exec(sa.select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
        assert [(r.seq, r.action, r.request_id) for r in rows] == [(1, "one", None), (2, "two", 7), (3, "three", None),
                                                                   (4, "four", None)]
        assert json.loads(rows[1].details) == {"k": [1, 2]}
        assert audit.verify(s).ok

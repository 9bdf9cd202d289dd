"""The append-only, hash-chained audit log.

Each event carries the hash of the one before; the ``audit_head`` row carries the newest
sequence number and hash, so deleting the last events is detected too. ``append`` runs
inside the caller's transaction: the event commits with the change it records, or neither.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, NamedTuple

import orjson
from sqlmodel import Session, select

from app.domain.principal import authenticated
from app.store.bulk import insert_rows
from app.store.tables import AuditEvent, AuditHead, JSONText

GENESIS = "0" * 64
_HEAD = "jit.audit_head"  # session.info: (transaction, the head row it locked)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
_TEXT = json.encoder.encode_basestring  # how that encoder writes a string (ensure_ascii=False)


def canonical(value: Any) -> JSONText:
    """The one JSON form events are hashed in: sorted keys, no spaces, text as it is. In a dict,
    a ``JSONText`` value (written by this function before) is embedded as it is, so a request's
    checks, stored with it and in its event, are written out once."""
    if type(value) is dict and any(type(v) is JSONText for v in value.values()):
        return JSONText("{%s}" % ",".join(
            f"{_TEXT(k)}:{v if type(v) is JSONText else _TEXT(v) if type(v) is str else _CANONICAL.encode(v)}"
            for k, v in sorted(value.items())))
    return JSONText(_CANONICAL.encode(value))


def canonical_plain(value: Any) -> JSONText:
    """``canonical(value)`` for a value of dicts with text keys, lists, text, booleans and None only
    (a decision's checks), written by orjson: the sync writes one per change, and orjson takes a
    fifth of the time. For such values orjson writes what ``canonical`` writes (property-tested over
    all of Unicode); text orjson refuses (a lone surrogate) goes to ``canonical``."""
    try:
        return JSONText(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
    except TypeError:
        return canonical(value)


def event_hash(seq: int, at: datetime, actor: str, action: str, request_id: int | None,
               details: str, prev_hash: str) -> str:
    """SHA-256 of the event's canonical form: ``canonical({"seq": .., "at": .., "actor": .., "action": ..,
    "request_id": .., "details": .., "prev": ..})``, written out here key by key (sorted) because
    the sync hashes thousands of events at a time."""
    body = '{"action":%s,"actor":%s,"at":%s,"details":%s,"prev":%s,"request_id":%s,"seq":%d}' % (
        _TEXT(action), _TEXT(actor), _TEXT(at.isoformat()), _TEXT(details), _TEXT(prev_hash),
        "null" if request_id is None else "%d" % request_id, seq)
    return hashlib.sha256(body.encode()).hexdigest()


def _head(session: Session) -> AuditHead:
    """The head row, locked once per transaction (writers queue on it, so the chain stays linear)."""
    tx, head = session.info.get(_HEAD, (None, None))
    if tx is not session.get_transaction() or head not in session:
        head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
        if head is None:
            head = AuditHead(id=1, seq=0, hash=GENESIS)
            session.add(head)
        session.info[_HEAD] = (session.get_transaction(), head)
    return head


def append(session: Session, *, at: datetime, actor: str, action: str,
           request_id: int | None = None, **details: Any) -> AuditEvent:
    """Add one event to the chain within ``session``'s transaction. An event of the person acting
    now records how they were authenticated (``app.domain.principal``)."""
    if how := authenticated(actor):
        details["authenticated"] = how
    head = _head(session)
    text = canonical(details)
    seq = head.seq + 1
    digest = event_hash(seq, at, actor, action, request_id, text, head.hash)
    row = AuditEvent(seq=seq, at=at, actor=actor, action=action, request_id=request_id,
                     details=text, prev_hash=head.hash, hash=digest)
    session.add(row)
    head.seq, head.hash = seq, digest
    session.add(head)  # written with the next flush: a batch of events goes in one INSERT
    return row


class Appended(NamedTuple):
    """An event ``append_many`` wrote: what the outbox needs to know of it."""

    seq: int
    at: datetime
    actor: str
    action: str
    request_id: int | None


def append_many(session: Session, events: Iterable[tuple[datetime, str, str, int | None, dict[str, Any]]]
                ) -> list[Appended]:
    """Add events ``(at, actor, action, request_id, details)`` to the chain in this order, in one
    INSERT now (no ORM object per event: the sync writes thousands)."""
    head = _head(session)
    rows, out = [], []
    seq, prev = head.seq, head.hash
    for at, actor, action, request_id, details in events:
        if how := authenticated(actor):
            details = {**details, "authenticated": how}
        seq += 1
        text = canonical(details)
        digest = event_hash(seq, at, actor, action, request_id, text, prev)
        rows.append({"seq": seq, "at": at, "actor": actor, "action": action, "request_id": request_id,
                     "details": text, "prev_hash": prev, "hash": digest})
        out.append(Appended(seq, at, actor, action, request_id))
        prev = digest
    if rows:
        session.flush()  # events appended one by one before these go first
        insert_rows(session, AuditEvent.__table__, rows)
        head.seq, head.hash = seq, prev
        session.add(head)
    return out


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    message: str
    first_broken: int | None = None


def verify(session: Session, batch: int = 5000) -> Verification:
    """Walk the chain; name the first event that was edited, deleted or moved."""
    expected_prev, expected_seq, count = GENESIS, 1, 0
    for row in _stream(session, batch):
        count += 1
        if row.seq != expected_seq:
            return Verification(False, count, f"event {expected_seq} is missing (next found is {row.seq}): "
                                              "events were deleted or reordered", expected_seq)
        if row.prev_hash != expected_prev:
            return Verification(False, count, f"event {row.seq} does not follow event {row.seq - 1}: "
                                              "the chain was reordered or an earlier event replaced", row.seq)
        digest = event_hash(row.seq, row.at, row.actor, row.action, row.request_id, row.details, row.prev_hash)
        if digest != row.hash:
            return Verification(False, count, f"event {row.seq} was altered after it was written "
                                              f"({row.action} by {row.actor})", row.seq)
        expected_prev, expected_seq = row.hash, row.seq + 1
    head = session.get(AuditHead, 1)
    last = expected_seq - 1
    if head is not None and (head.seq != last or head.hash != expected_prev):
        return Verification(False, count, f"event {last + 1} is missing: the chain ends at {last} but "
                                          f"{head.seq} events were written", last + 1)
    if head is None:  # written at genesis (migration 0004): gone only if someone deleted it
        return Verification(False, count, f"the audit head is missing: the chain ends at event {last} and "
                                          "nothing says how many events were written (events after it may "
                                          "have been deleted)", last + 1)
    return Verification(True, count, f"{count} events, chain intact")


def _stream(session: Session, batch: int) -> Iterator[AuditEvent]:
    after = 0
    while True:
        rows = session.exec(select(AuditEvent).where(AuditEvent.seq > after)
                            .order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


def export_jsonl(session: Session, batch: int = 5000) -> Iterator[str]:
    for row in _stream(session, batch):
        yield exported(row)


def page(session: Session, after: int, limit: int) -> list[AuditEvent]:
    """Events after sequence number ``after``, oldest first, at most ``limit``."""
    return list(session.exec(select(AuditEvent).where(AuditEvent.seq > after)
                             .order_by(AuditEvent.seq).limit(limit)).all())


def newest_seq(session: Session) -> int:
    head = session.get(AuditHead, 1)
    return head.seq if head is not None else 0


def exported(row: AuditEvent) -> str:
    """One event as ``jit audit export`` writes it (a line of canonical JSON)."""
    return canonical({"seq": row.seq, "at": row.at.isoformat(), "actor": row.actor, "action": row.action,
                      "request_id": row.request_id, "details": json.loads(row.details),
                      "prev_hash": row.prev_hash, "hash": row.hash})

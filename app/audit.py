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
from typing import Any, Iterator

from sqlmodel import Session, select

from app.store import AuditEvent, AuditHead

GENESIS = "0" * 64
_HEAD = "jit.audit_head"  # session.info: (transaction, the head row it locked)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(seq: int, at: datetime, actor: str, action: str, request_id: int | None,
               details: str, prev_hash: str) -> str:
    body = canonical({"seq": seq, "at": at.isoformat(), "actor": actor, "action": action,
                      "request_id": request_id, "details": details, "prev": prev_hash})
    return hashlib.sha256(body.encode()).hexdigest()


def append(session: Session, *, at: datetime, actor: str, action: str,
           request_id: int | None = None, **details: Any) -> AuditEvent:
    """Add one event to the chain within ``session``'s transaction."""
    tx, head = session.info.get(_HEAD, (None, None))
    if tx is not session.get_transaction() or head not in session:  # lock the head once per transaction
        head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
        if head is None:
            head = AuditHead(id=1, seq=0, hash=GENESIS)
            session.add(head)
        session.info[_HEAD] = (session.get_transaction(), head)
    text = canonical(details)
    seq = head.seq + 1
    digest = event_hash(seq, at, actor, action, request_id, text, head.hash)
    row = AuditEvent(seq=seq, at=at, actor=actor, action=action, request_id=request_id,
                     details=text, prev_hash=head.hash, hash=digest)
    session.add(row)
    head.seq, head.hash = seq, digest
    session.add(head)  # written with the next flush: a batch of events goes in one INSERT
    return row


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
    if head is None and count:
        return Verification(False, count, "the audit head is missing", 1)
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
        yield canonical({"seq": row.seq, "at": row.at.isoformat(), "actor": row.actor, "action": row.action,
                         "request_id": row.request_id, "details": json.loads(row.details),
                         "prev_hash": row.prev_hash, "hash": row.hash})

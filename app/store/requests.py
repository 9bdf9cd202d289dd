"""Writes of a request's state: every one checks the transition table and the version it read."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlmodel import Session

from app.domain.errors import NotFound
from app.domain.inputs import MAX_ID
from app.domain.states import require, require_all
from app.store.bulk import insert_rows
from app.store.tables import RequestRow
from app.store.versions import update_checked, update_many


def load(s: Session, request_id: int) -> RequestRow:
    row = s.get(RequestRow, request_id) if 0 < request_id <= MAX_ID else None
    if row is None:
        raise NotFound("request", f"REQ-{request_id} does not exist")
    return row


def create(s: Session, row: RequestRow) -> RequestRow:
    """Add a new request (its id assigned) in ``s``."""
    require("request", None, row.state)
    row.state = str(row.state)
    s.add(row)
    s.flush()
    return row


def create_many(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert new requests given as column dicts, ids included (``bulk.next_ids``)."""
    require_all("request", ((None, r["state"]) for r in rows))
    insert_rows(s, RequestRow.__table__, list(rows))


def transition(s: Session, row: RequestRow, state: str, now: datetime, **values: Any) -> None:
    """The optimistic transition: changes the row only if nobody changed it since it was read."""
    require("request", row.state, state)
    update_checked(s, row, dict(state=str(state), updated_at=now, **values), RequestRow.state == row.state,
                   lost=f"REQ-{row.id} was changed by someone else; nothing was done, reload it")


def transition_many(s: Session, changes: Sequence[tuple[Any, dict[str, Any]]]) -> None:
    """Many transitions by primary key in one statement, for rows read and locked in ``s`` (on
    SQLite the whole database is; objects or result rows with ``id``, ``state`` and ``version``):
    each ``(row, values)`` with the new ``state`` among the values."""
    require_all("request", ((row.state, values["state"]) for row, values in changes))
    update_many(s, RequestRow, changes)


def touch_many(s: Session, ids: Sequence[int], state: str, now: datetime) -> int:
    """Bump the version of the requests ``ids`` still in ``state`` (a same-state transition, so a
    racing action loses); how many were."""
    require("request", state, state)
    return s.execute(sa.update(RequestRow).where(RequestRow.id.in_(list(ids)), RequestRow.state == state)
                     .values(version=RequestRow.version + 1, updated_at=now)
                     .execution_options(synchronize_session=False)).rowcount


def amend(s: Session, row: RequestRow, now: datetime, **values: Any) -> None:
    """Change columns that are not the request's state (the ticket a created change linked), in
    any state, under the same version check: a racing transition sees the version move."""
    assert "state" not in values, "a state change is a transition()"
    update_checked(s, row, dict(updated_at=now, **values),
                   lost=f"REQ-{row.id} was changed by someone else; nothing was done, reload it")


def lock_people(s: Session, people: Iterable[str]) -> None:
    """Serialise, until ``s`` ends, what is decided for these requesters: a submission, the approval
    that completes a request, an extension (the policy weighs each person's other requests, so two
    of them racing for one person must see each other). PostgreSQL: a transaction-scoped advisory
    lock per person, all in one statement and in one order (no deadlock between two callers);
    SQLite: every write transaction already holds the database (``BEGIN IMMEDIATE``). Take it
    before reading the person's requests, and before locking any request row."""
    keys = [f"jit:requester:{person}" for person in set(people)]
    if not keys or s.get_bind().dialect.name != "postgresql":
        return
    s.execute(sa.text("SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
                      "FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS ordered"), {"keys": keys})

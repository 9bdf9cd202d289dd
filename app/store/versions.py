"""The optimistic version check every write of a request or grant makes, written once."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from app.domain.errors import Conflict


def committed(obj: Any, values: Mapping[str, Any]) -> None:
    """Show on ``obj`` what an UPDATE statement just wrote, without marking it to be written again.

    (The ORM's own synchronisation evaluates every object in the session for every UPDATE,
    which made a batch of N transitions cost O(N^2).)"""
    for key, value in values.items():
        set_committed_value(obj, key, value)


def update_checked(s: Session, obj: Any, values: Mapping[str, Any], *also: Any, lost: str) -> None:
    """UPDATE ``obj``'s row with ``values`` and the next version, only if its version (and ``also``)
    is still what was read; otherwise ``Conflict(lost)`` with nothing written."""
    model = type(obj)
    changes = dict(values, version=obj.version + 1)
    done = s.execute(sa.update(model).where(model.id == obj.id, model.version == obj.version, *also)
                     .values(**changes).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise Conflict("conflict", lost)
    committed(obj, changes)


def update_many(s: Session, model: Any, changes: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """Many rows by primary key, each with its next version, for rows read and locked in ``s`` (on
    SQLite the whole database is): one executemany per set of columns changed. (Core, not the ORM's
    bulk UPDATE by primary key, which spent most of a batch's time in Python.)"""
    table = model.__table__
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for obj, values in changes:
        groups.setdefault(tuple(values), []).append({**values, "version": obj.version + 1, "_id": obj.id})
    for params in groups.values():
        s.execute(sa.update(table).where(table.c.id == sa.bindparam("_id")), params)

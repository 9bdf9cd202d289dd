"""Writes of a grant's status: every one checks the transition table and the version it read."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from app.domain.states import require, require_all
from app.store.bulk import insert_rows
from app.store.versions import update_checked, update_many
from app.store.tables import GrantRow
from integrations.base import GrantSpec


def spec_of(g: GrantRow) -> GrantSpec:
    """What a backend is told about a grant."""
    return GrantSpec(grant_id=g.id, request_id=g.request_id, person=g.person, target=g.target, role=g.role,
                     starts_at=g.starts_at, expires_at=g.expires_at, params=dict(g.params))


def spec_from(values: Mapping[str, Any]) -> GrantSpec:
    """``spec_of`` a grant given as its column values (one about to be inserted by ``create_many``)."""
    return GrantSpec(grant_id=values["id"], request_id=values["request_id"], person=values["person"],
                     target=values["target"], role=values["role"], starts_at=values["starts_at"],
                     expires_at=values["expires_at"], params=dict(values["params"]))


def create(s: Session, grant: GrantRow) -> bool:
    """Add a new grant in ``s``; False when the request already has one (another process is activating it)."""
    require("grant", None, grant.status)
    grant.status = str(grant.status)
    try:
        with s.begin_nested():
            s.add(grant)
            s.flush()
    except IntegrityError:
        return False
    return True


def create_many(s: Session, grants: Sequence[dict[str, Any]]) -> None:
    """Insert new grants given as column dicts, ids included (``bulk.next_ids``), in one statement,
    for requests read and locked in ``s`` that have none (a second grant for a request is an
    ``IntegrityError``)."""
    require_all("grant", ((None, g["status"]) for g in grants))
    insert_rows(s, GrantRow.__table__, list(grants))


def transition(s: Session, grant: GrantRow, status: str, now: datetime | None = None, **values: Any) -> None:
    """The optimistic transition (``now``: the new ``updated_at``, when it changes)."""
    require("grant", grant.status, status)
    changes = dict(status=str(status), **values)
    if now is not None:
        changes["updated_at"] = now
    update_checked(s, grant, changes, GrantRow.status == grant.status,
                   lost=f"grant {grant.id} was changed by someone else; nothing was done")


def transition_many(s: Session, changes: Sequence[tuple[Any, dict[str, Any]]]) -> None:
    """Many transitions by primary key in one statement, for rows read and locked in ``s`` (objects
    or result rows with ``id``, ``status`` and ``version``): each ``(grant, values)`` with the new
    ``status`` among the values."""
    require_all("grant", ((g.status, values["status"]) for g, values in changes))
    update_many(s, GrantRow, changes)


def start_revoking_many(s: Session, ids: Sequence[int], now: datetime, **values: Any) -> int:
    """'active' -> 'revoking' for the grants ``ids`` still active, in one statement; how many were."""
    require("grant", "active", "revoking")
    return s.execute(sa.update(GrantRow).where(GrantRow.id.in_(list(ids)), GrantRow.status == "active")
                     .values(status="revoking", updated_at=now, version=GrantRow.version + 1, **values)
                     .execution_options(synchronize_session=False)).rowcount


def take_over(s: Session, grant: GrantRow, owner: str, lease_until: datetime) -> bool:
    """Claim ``grant`` (read earlier, in any session) for ``owner`` if nobody changed it since:
    a same-status transition. ``grant`` itself is left as it was read (the audit names the old owner)."""
    require("grant", grant.status, grant.status)
    done = s.execute(sa.update(GrantRow).where(GrantRow.id == grant.id, GrantRow.version == grant.version)
                     .values(owner=owner, lease_until=lease_until, version=grant.version + 1))
    return done.rowcount == 1

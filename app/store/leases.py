"""The claims this process holds on grants, and the heartbeat that keeps them.

A claim is a grant row whose ``owner`` is this process and whose ``lease_until`` lies ahead:
until then no other engine takes the grant over. A backend call may outlast the lease (a slow
visudo, LDAP or AWS on a loaded machine, retries with backoff), so while a claim is held a
heartbeat thread, which never waits behind the backend call, extends every held lease by one
``lease`` every third of a lease, in one UPDATE that names this owner and a lease still running.
A claim someone else took over, or whose lease ran out before it could be renewed, is not
renewed: it is lost.

What this process may still act on is what the last renewal that committed confirmed. When
renewals fail (the database is gone) or stop (the process was frozen), each claim is lost at
the instant its confirmed lease ends: ``holds()`` answers False from then on, and the holder
calls no backend and writes no outcome for it. Another engine takes it over as from a dead one.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterable, Iterator

import sqlalchemy as sa

from app.clock import Clock
from app.domain.errors import StoreError
from app.store.database import Store
from app.store.tables import GrantRow

log = logging.getLogger("jit.leases")
CLAIMED = ("applying", "revoking")  # the grant states a claim is held in


class Leases:
    def __init__(self, store: Store, owner: str, lease: timedelta, clock: Clock) -> None:
        if lease <= timedelta(0):
            raise ValueError("lease must be longer than zero")
        self.store, self.owner, self.lease, self.clock = store, owner, lease, clock
        self.interval_s = lease.total_seconds() / 3
        self._until: dict[int, datetime] = {}  # grant id -> the lease end the database last confirmed
        self._holds: Counter[int] = Counter()  # nested holds of one grant (a batch, then one of it)
        self._lost: set[int] = set()  # held, but no longer ours: not renewed again
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, grant_ids: Iterable[int], until: datetime) -> Iterator[None]:
        """Keep these claims (just written with ``lease_until = until``) renewed while inside."""
        ids = list(grant_ids)
        with self._cond:
            for gid in ids:
                if not self._holds[gid]:
                    self._until[gid] = until
                self._holds[gid] += 1
            if ids and self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="jit-lease-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                for gid in ids:
                    self._holds[gid] -= 1
                    if not self._holds[gid]:
                        del self._holds[gid]
                        self._until.pop(gid, None)
                        self._lost.discard(gid)
                self._cond.notify_all()

    def holds(self, grant_id: int) -> bool:
        """Whether this process still holds the claim: its confirmed lease has not ended."""
        with self._cond:
            until = self._until.get(grant_id)
        return until is not None and until > self.clock()

    def renew(self) -> int:
        """One renewal of every held claim still ours and still running; how many were renewed.
        Claims that were not are lost. Raises StoreError when the database cannot be reached."""
        with self._cond:
            ids = sorted(self._until.keys() - self._lost)
        if not ids:
            return 0
        now = self.clock()
        until = now + self.lease
        with self.store.transaction() as s:
            rows = s.execute(sa.select(GrantRow.id, GrantRow.owner, GrantRow.lease_until, GrantRow.status)
                             .where(GrantRow.id.in_(ids))).all()
            ours = {r.id for r in rows if r.owner == self.owner and r.lease_until is not None and r.lease_until > now}
            finished = {r.id for r in rows if r.status not in CLAIMED}  # its outcome is written: nothing to keep
            gone = {r.id for r in rows} - ours - finished
            free = sorted(ours)
            if free and self.store.dialect == "postgresql":  # in id order; a row being finished now is skipped
                free = list(s.execute(sa.select(GrantRow.id).where(GrantRow.id.in_(free)).order_by(GrantRow.id)
                                      .with_for_update(skip_locked=True)).scalars())
            renewed = set(s.execute(sa.update(GrantRow)
                                    .where(GrantRow.id.in_(free), GrantRow.owner == self.owner,
                                           GrantRow.lease_until > now)
                                    .values(lease_until=until, version=GrantRow.version + 1)
                                    .returning(GrantRow.id).execution_options(synchronize_session=False))
                          .scalars()) if free else set()
        with self._cond:
            for gid in renewed & self._until.keys():
                self._until[gid] = until
            for gid in (gone | finished) & self._until.keys():
                self._until[gid] = min(self._until[gid], now)  # taken over, or ran out unrenewed: lost
                self._lost.add(gid)
        for gid in sorted(gone):
            log.warning("lost the claim on grant %s: taken over, or its lease ran out before it was renewed", gid)
        return len(renewed)

    def _beat(self) -> None:
        """The heartbeat: renew every third of a lease while anything is held; then end."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: not self._holds, timeout=self.interval_s)
                if not self._holds:
                    self._thread = None
                    return
            try:
                self.renew()
            except StoreError as exc:
                log.error("cannot renew the leases this process holds (%d grants): %s", len(self._holds), exc)
            except Exception:  # noqa: BLE001 - logged with its traceback; the heartbeat must go on
                log.exception("lease renewal failed")

"""How a crash is finished: grants left in 'applying' or 'revoking' by a dead engine, claimed
and completed (or taken apart) once."""
from __future__ import annotations

import os
import socket
from datetime import datetime

from sqlmodel import select

from app.lifecycle.base import LifecycleBase
from app.store import GrantRow, RequestRow
from app.store import grants as grant_store
from app.store import requests as request_store


class Recovery(LifecycleBase):
    def recover(self, now: datetime | None = None) -> int:
        """Finish what a crashed process left: grants stuck in 'applying' or 'revoking'."""
        now = now or self.clock()
        with self.store.transaction() as s:
            stuck = s.exec(select(GrantRow).where(GrantRow.status.in_(("applying", "revoking")))).all()
        fixed = 0
        for g in stuck:
            if not self._abandoned(g, now):
                continue
            if g.status == "revoking":
                if g.next_attempt_at and g.next_attempt_at > now:
                    continue
                if self._claim(g, now):
                    self._revoke(g.id)
                    fixed += 1
                continue
            with self.store.transaction() as s:  # applying
                row = s.get(RequestRow, g.request_id)
                still_wanted = row.state == "approved" and g.expires_at > now
            if still_wanted:
                if self._claim(g, now):
                    self._apply(g.id)
                    fixed += 1
            else:
                # The request ended or expired while the grant was half-applied: make sure nothing remains.
                with self.store.transaction() as s:
                    grant = s.get(GrantRow, g.id)
                    if grant.version != g.version:
                        continue
                    grant_store.transition(s, grant, "revoking",
                                           end_state="expired" if row.state == "approved" else row.state,
                                           end_actor="engine", end_reason="recovered after a crash during apply",
                                           owner=self.owner, lease_until=now + self.settings.lease)
                    self._record(s, at=now, actor="engine", action="grant.revoking", request_id=row.id,
                                 grant_id=grant.id, end_state=grant.end_state, reason=grant.end_reason)
                    if row.state == "approved":
                        request_store.transition(s, row, "active", now)
                self._revoke(g.id)
                fixed += 1
        return fixed

    def _abandoned(self, g: GrantRow, now: datetime) -> bool:
        """Nobody is working on it: no owner, lease over, or the owner was a dead process on this host."""
        if g.owner is None or g.lease_until is None or g.lease_until <= now:
            return True
        host, _, pid = g.owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            if int(pid) == os.getpid():
                return False
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def _claim(self, g: GrantRow, now: datetime) -> bool:
        with self.store.transaction() as s:
            if not grant_store.take_over(s, g, self.owner, now + self.settings.lease):
                return False
            # Who took over from whom, and when the old claim ran out: a takeover is worth an audit line.
            self._record(s, at=now, actor="engine", action="grant.recovered", request_id=g.request_id,
                         grant_id=g.id, status=g.status, owner=self.owner, previous_owner=g.owner,
                         previous_lease_until=g.lease_until.isoformat() if g.lease_until else None)
            return True

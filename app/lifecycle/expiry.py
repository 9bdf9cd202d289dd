"""What happens at expiry: due grants revoked a batch at a time, and the deadlines the timer waits for."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select

from app import failpoints
from app.domain.errors import Conflict
from app.lifecycle.base import LifecycleBase
from app.store import GrantRow, RequestRow
from app.store import grants as grant_store
from app.store import requests as request_store
from integrations.base import BackendError, GrantSpec


class Expiry(LifecycleBase):
    def expire_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Revoke every active grant whose expiry has come. Returns how many were ended.

        A batch at a time: one transaction commits the intent ('revoking') of every grant due,
        the backend removes each artifact, one transaction records the outcomes. A crash in
        between leaves grants in 'revoking' for ``recover()``, as with a single grant."""
        now = now or self.clock()
        ended, skip_locked = 0, True
        while True:
            found, batch, until = self._intend_expiry(now, limit, skip_locked)
            done = {}
            with self.leases.hold([g.id for g in batch], until):  # renewed while the backend works through it
                together: dict[str, list[GrantSpec]] = {}  # per backend with revoke_many: its grants, at once
                for g in batch:
                    if not self.leases.holds(g.id):
                        continue  # the claim was lost (frozen, database gone): its new owner finishes it
                    if g.shared_key:  # another grant may still cover the artifact: the careful path
                        self._revoke(g.id)
                    elif hasattr(self.backends.get(g.backend), "revoke_many"):
                        together.setdefault(g.backend, []).append(self._spec(g))
                    else:
                        done[g.id] = (self._with_backend(self._spec(g), g.backend, "revoke"), self.clock())
                for name, specs in together.items():
                    done.update(self._revoke_many(name, [s for s in specs if self.leases.holds(s.grant_id)]))
                if done:
                    self._expiry_outcomes(done)
            ended += len(batch)
            if found < limit:
                if not skip_locked or self.store.dialect != "postgresql":
                    return ended
                # Rows skipped as locked: most are another engine's claims (now 'revoking', so no longer
                # due); any other holder is waited for here, not left to the next sweep.
                skip_locked = False

    def _revoke_many(self, backend: str, specs: list[GrantSpec]) -> dict[int, tuple[Any, datetime]]:
        """A backend's ``revoke_many`` over ``specs`` (the agent backend waits for every host at once
        rather than for each grant in turn, so one silent host does not hold up the others): per
        grant id its answer (None or the BackendError) and when it came."""
        failpoints.hit("revoke.before_backend")
        answers = self.backends[backend].revoke_many(specs)  # type: ignore[attr-defined]
        failpoints.hit("revoke.after_backend")
        at = self.clock()
        return {spec.grant_id: (answer, at) for spec, answer in zip(specs, answers)}

    def _expiry_outcomes(self, done: dict[int, tuple[Any, datetime]]) -> None:
        """Record the backend's answers for a batch of expiring grants in one transaction: the removed
        ones revoked (one UPDATE per table, each grant with the instant its artifact went), the others
        left for a retry, each with its audit event."""
        pg = self.store.dialect == "postgresql"
        with self.store.transaction() as s:
            q = select(GrantRow).where(GrantRow.id.in_(list(done))).order_by(GrantRow.id)  # the renewals' order
            grants = {g.id: g for g in s.exec(q.with_for_update() if pg else q).all()}
            q = select(RequestRow).where(RequestRow.id.in_([g.request_id for g in grants.values()]))
            rows = {r.id: r for r in s.exec(q.with_for_update() if pg else q).all()}
            revoked, ended = [], []
            for grant_id, (error, at) in done.items():
                g = grants[grant_id]
                if g.status != "revoking" or not self._ours(g):
                    continue  # finished by, or left to, whoever took the claim over
                if isinstance(error, BackendError):
                    self._revoke_outcome(s, grant_id, error, None, at)
                    continue
                revoked.append((g, {"status": "revoked", "revoked_at": at, "updated_at": at, "owner": None,
                                    "lease_until": None, "last_error": None}))
                row = rows[g.request_id]
                if row.state == "active":
                    ended.append((row, {"state": g.end_state or "revoked", "updated_at": at,
                                        "closed_by": g.end_actor, "closed_reason": g.end_reason}))
                self._record(s, at=at, actor=g.end_actor or "engine", action=f"request.{g.end_state}",
                             request_id=row.id, grant_id=g.id, reason=g.end_reason, kept_for_grant=None,
                             lag_ms=round((at - g.expires_at).total_seconds() * 1000)
                             if g.end_state == "expired" else None)
            grant_store.transition_many(s, revoked)  # by primary key, rows read (and on PostgreSQL locked) above
            request_store.transition_many(s, ended)

    def _intend_expiry(self, now: datetime, limit: int,
                       skip_locked: bool) -> tuple[int, list[GrantRow], datetime | None]:
        """Commit 'revoking' for up to ``limit`` due grants, in one statement per table plus the audit
        events; how many were due, and those now ours. The rows are locked (SQLite: the database) while
        the intent is written, so the version checks of the one-at-a-time path cannot fail here."""
        pg = self.store.dialect == "postgresql"
        with self.store.transaction() as s:
            q = (select(GrantRow).where(GrantRow.status == "active", GrantRow.expires_at <= now)
                 .order_by(GrantRow.expires_at).limit(limit))
            grants = s.exec(q.with_for_update(skip_locked=skip_locked) if pg else q).all()  # skipped: another engine's
            if not grants:
                return 0, [], None
            q = select(RequestRow).where(RequestRow.id.in_([g.request_id for g in grants]))
            active = [r.id for r in s.exec(q.with_for_update() if pg else q).all() if r.state == "active"]
            at = self.clock()
            done = grant_store.start_revoking_many(s, [g.id for g in grants], at, end_state="expired",
                                                   end_actor="engine", end_reason="expired", owner=self.owner,
                                                   lease_until=at + self.settings.lease)
            bumped = request_store.touch_many(s, active, "active", at) if active else len(active)
            if done != len(grants) or bumped != len(active):
                raise Conflict("conflict", "grants due for expiry changed while locked; nothing was done")
            for g in grants:
                self._record(s, at=at, actor="engine", action="grant.revoking", request_id=g.request_id,
                             grant_id=g.id, end_state="expired", reason="expired")
        return len(grants), list(grants), at + self.settings.lease

    def next_deadlines(self, until: datetime) -> list[datetime]:
        """Expiry and start instants before ``until``, for the precise scheduler."""
        with self.store.transaction() as s:
            ends = s.exec(select(GrantRow.expires_at).where(GrantRow.status == "active",
                                                            GrantRow.expires_at <= until).distinct()).all()
            starts = s.exec(select(RequestRow.starts_at).where(RequestRow.state == "approved",
                                                               RequestRow.starts_at <= until).distinct()).all()
        return sorted(set(ends) | set(starts))

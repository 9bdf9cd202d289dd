"""The engine's periodic work on requests: activation when a start comes (a batch at a time),
escalation and lapse, the "expires soon" warning."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Iterable

import sqlalchemy as sa
from sqlmodel import select

from app.domain.errors import Conflict
from app.lifecycle.base import LifecycleBase, log, row_values
from app.lifecycle.grants import Applying, Claim
from app.store import GrantRow, RequestRow, among, next_ids
from app.store import grants as grant_store
from app.store import requests as request_store
from app.domain.states import UNSTARTED
from policies.durations import format_duration


class Housekeeping(LifecycleBase):
    def activate_due(self, now: datetime | None = None, limit: int = 100, *,
                     only: Iterable[int] | None = None) -> int:
        """Apply grants for approved requests whose start has come (of ``only``, when given); how
        many were claimed.

        A batch at a time, as at expiry: one transaction commits the intent of up to ``limit`` (each
        grant 'applying', claimed by this process, with its audit event), the backend applies them
        (``apply_many`` where it has one), one transaction records the outcomes. A crash in between
        leaves grants in 'applying' for ``recover()``, as with a single grant. The backend calls run
        in a second thread, so while one batch's calls wait on the target, the next batch's intent
        and the previous batch's outcomes are written: the database and the target work at once,
        and each batch still commits its intent before its calls and its outcomes after them."""
        now = now or self.clock()
        only = None if only is None else list(only)
        claimed, skip_locked = 0, True
        inflight: deque[Applying] = deque()  # at most two: the batch whose outcomes come next, and the newest
        with ThreadPoolExecutor(1, thread_name_prefix="jit-activation") as worker:
            try:
                while True:
                    found, claims, until = self._intend_activation(now, limit, skip_locked, only)
                    if claims:
                        inflight.append(self._start_applying(worker, claims, until))
                        claimed += len(claims)
                    while len(inflight) > 1:  # its calls ran while this batch's intent was written
                        self._finish_applying(inflight.popleft())
                    if found < limit:
                        if not skip_locked or self.store.dialect != "postgresql":
                            break
                        # Rows skipped as locked: most are another engine's activations (their grants now
                        # exist, so no longer due); any other holder is waited for here, not left to the sweep.
                        skip_locked = False
                while inflight:
                    self._finish_applying(inflight.popleft())
            finally:
                for applying in inflight:  # after a failure above: wait for the calls, record what can be
                    try:
                        self._finish_applying(applying)
                    except Exception:  # noqa: BLE001 - the first failure is the one raised
                        log.exception("the outcomes of %d activations were not recorded; they are left to "
                                      "recovery", len(applying.claims))
        return claimed

    def _intend_activation(self, now: datetime, limit: int, skip_locked: bool,
                           only: list[int] | None) -> tuple[int, list[Claim], datetime | None]:
        """Commit the grants ('applying', claimed by this process) of up to ``limit`` approved
        requests whose start has come: one INSERT of grants, one UPDATE of requests, one of audit
        events; how many were due, the claims, and the end of their leases. The requests are
        locked (SQLite: the database) while this is written; one that has a grant is another
        process's activation."""
        pg = self.store.dialect == "postgresql"
        with self.store.transaction() as s:
            q = (select(*RequestRow.__table__.c)
                 .where(RequestRow.state == "approved", RequestRow.starts_at <= now,
                        sa.or_(RequestRow.scheduled.is_(False), RequestRow.expires_at > now),  # else: it lapses
                        ~sa.exists().where(GrantRow.request_id == RequestRow.id))
                 .order_by(RequestRow.starts_at, RequestRow.id).limit(limit))
            if only is not None:
                q = q.where(among(s, RequestRow.id, only))
            rows = s.exec(q.with_for_update(skip_locked=skip_locked) if pg else q).all()  # skipped: another engine's
            found = len(rows)
            if pg and rows:  # a grant committed after the query's snapshot, by whoever held a row it waited for
                taken = set(s.exec(select(GrantRow.request_id)
                                   .where(among(s, GrantRow.request_id, [r.id for r in rows]))).all())
                rows = [r for r in rows if r.id not in taken]
            if not rows:
                return found, [], None
            at = self.clock()
            grants, claims = [], []
            for row, grant_id in zip(rows, next_ids(s, GrantRow.__table__, len(rows))):
                g = dict(self._new_grant(row, at), id=grant_id)
                spec = grant_store.spec_from(g)
                g["shared_key"] = self._shared_key(spec, g["backend"])
                grants.append(g)
                claims.append(Claim(spec, g["backend"]))
            grant_store.create_many(s, grants)
            changes = [(row, {"state": "approved", "updated_at": at, "starts_at": g["starts_at"],
                              "expires_at": g["expires_at"]}) for row, g in zip(rows, grants)]
            request_store.transition_many(s, changes)
            self._record_many(s, at, [("engine", "grant.applying", row_values(row, change), row.id,
                                       dict(grant_id=g["id"], backend=g["backend"],
                                            expires_at=g["expires_at"].isoformat()))
                                      for (row, change), g in zip(changes, grants)])
        return found, claims, at + self.settings.lease

    def escalate_and_lapse(self, now: datetime | None = None) -> tuple[int, int]:
        """Mark unanswered requests escalated; lapse those past their time."""
        now = now or self.clock()
        d = self.policy.defaults
        escalated = lapsed = 0
        with self.store.transaction() as s:
            rows = s.exec(select(RequestRow).where(RequestRow.state.in_(UNSTARTED))).all()
        for r in rows:
            try:
                with self.store.transaction() as s:
                    row = s.get(RequestRow, r.id)
                    pending_too_long = row.state == "pending" and row.created_at + d.lapse_after <= now
                    window_gone = row.expires_at <= now and (row.scheduled or row.state == "pending")
                    if row.state in UNSTARTED and (pending_too_long or window_gone):
                        if row.state == "approved" and s.exec(select(GrantRow.id)
                                                              .where(GrantRow.request_id == row.id)).first():
                            continue  # a grant exists: expiry handles it
                        why = ("no decision within " + format_duration(d.lapse_after)) if pending_too_long \
                            else "its requested window passed before it could start"
                        request_store.transition(s, row, "lapsed", now, closed_by="engine", closed_reason=why)
                        self._record(s, at=now, actor="engine", action="request.lapsed", request_id=row.id, reason=why)
                        lapsed += 1
                    elif row.state == "pending" and row.escalated_at is None and row.created_at + d.escalate_after <= now:
                        request_store.transition(s, row, "pending", now, escalated_at=now)
                        self._record(s, at=now, actor="engine", action="request.escalated", request_id=row.id,
                                     waited=format_duration(now - row.created_at),
                                     approver_groups=list(row.approver_groups))
                        escalated += 1
            except Conflict:
                continue
        return escalated, lapsed

    def warn_expiring(self, within: timedelta, now: datetime | None = None, limit: int = 200) -> int:
        """Record "expires soon" once per grant (the webhook hears of it through the outbox).

        ``limit`` grants per transaction: thousands entering the horizon at once must not hold the
        database (on SQLite, every writer) for seconds while revocations wait."""
        now = now or self.clock()
        warned = 0
        while True:
            with self.store.transaction() as s:
                grants = s.exec(select(GrantRow).where(GrantRow.status == "active", GrantRow.warned_at.is_(None),
                                                       GrantRow.expires_at <= now + within,
                                                       GrantRow.expires_at > now)
                                .order_by(GrantRow.expires_at).limit(limit)).all()
                for g in grants:
                    g.warned_at = now
                    s.add(g)
                    self._record(s, at=now, actor="engine", action="grant.expiring", request_id=g.request_id,
                                 grant_id=g.id, expires_at=g.expires_at.isoformat())
            warned += len(grants)
            if len(grants) < limit:
                return warned

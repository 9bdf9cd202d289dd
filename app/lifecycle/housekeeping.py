"""The engine's periodic work on requests: activation when a start comes, escalation and lapse,
the "expires soon" warning."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import select

from app.domain.errors import Conflict
from app.lifecycle.base import LifecycleBase
from app.store import GrantRow, RequestRow
from app.store import requests as request_store
from app.domain.states import UNSTARTED
from policies.durations import format_duration


class Housekeeping(LifecycleBase):
    def activate_due(self, now: datetime | None = None) -> int:
        """Apply grants for approved requests whose start has come."""
        now = now or self.clock()
        with self.store.transaction() as s:
            ids = s.exec(select(RequestRow.id).where(RequestRow.state == "approved", RequestRow.starts_at <= now)
                         .order_by(RequestRow.starts_at)).all()
            taken = set(s.exec(select(GrantRow.request_id).where(GrantRow.request_id.in_(ids))).all()) if ids else set()
        count = 0
        for request_id in ids:
            if request_id in taken:
                continue
            if self._activate_if_due(request_id):
                count += 1
        return count

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

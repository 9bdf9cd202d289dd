"""The engine's periodic work on requests: activation when a start comes (a batch at a time),
escalation and lapse, the "expires soon" warning."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Iterable

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain.errors import Conflict
from app.lifecycle.base import LifecycleBase, log, row_values
from app.lifecycle.grants import Applying, Claim
from app.store import GrantRow, RequestRow, among, next_ids
from app.store import grants as grant_store
from app.store import requests as request_store
from app.domain.states import HOLDING_STATES, UNSTARTED
from policies.decision import Context, Holding, TicketFacts
from policies.evaluate import evaluate
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
        waiting: set[int] = set()  # requests left for a later pass: their ticket could not be read now
        inflight: deque[Applying] = deque()  # at most two: the batch whose outcomes come next, and the newest
        with ThreadPoolExecutor(1, thread_name_prefix="jit-activation") as worker:
            try:
                while True:
                    found, claims, until = self._intend_activation(now, limit, skip_locked, only, waiting)
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

    def _due(self, s: Session, now: datetime, limit: int, only: list[int] | None, waiting: set[int]) -> Any:
        """The query for up to ``limit`` approved requests whose start has come and that no process
        is activating (of ``only``, when given; not those ``waiting``)."""
        q = (select(*RequestRow.__table__.c)
             .where(RequestRow.state == "approved", RequestRow.starts_at <= now,
                    sa.or_(RequestRow.scheduled.is_(False), RequestRow.expires_at > now),  # else: it lapses
                    ~sa.exists().where(GrantRow.request_id == RequestRow.id))
             .order_by(RequestRow.starts_at, RequestRow.id).limit(limit))
        if only is not None:
            q = q.where(among(s, RequestRow.id, only))
        if waiting:
            q = q.where(RequestRow.id.not_in(sorted(waiting)))
        return q

    def _due_facts(self, now: datetime, limit: int, only: list[int] | None,
                   waiting: set[int]) -> dict[int, TicketFacts | None]:
        """ServiceNow's facts for the tickets of the requests due now, read before the transaction
        that activates them (no HTTP call while the database is held): by request id."""
        if self.tickets is None:
            return {}
        with self.store.transaction() as s:
            rows = [r for r in s.exec(self._due(s, now, limit, only, waiting)).all() if r.ticket]
        reqs = [self._as_it_starts(r, now) for r in rows]
        found = self.tickets.facts_many((q.ticket, q.starts_at, q.expires_at) for q in reqs)
        return {r.id: f for r, f in zip(rows, found)}

    def _still_allowed(self, s: Session, rows: list[Any], now: datetime, facts: dict[int, TicketFacts | None],
                       waiting: set[int]) -> tuple[list[Any], list[tuple[Any, dict[str, Any]]], list[tuple]]:
        """The whole policy again for each request about to start (``_recheck``, for a batch: one
        query for the requesters' holdings): those still allowed; the refused ones' changes and
        events (each revoked before its start, by "policy"); a request whose ticket could not be
        read is left ``waiting`` for the next pass. An emergency bypass is not weighed again: it
        starts at once, and a security operator reviews it."""
        people = {r.requester for r in rows if r.kind != "bypass"}
        held: dict[str, list[tuple[int, Holding]]] = {p: [] for p in people}
        if people:
            for h in s.exec(select(RequestRow.id, RequestRow.requester, RequestRow.target, RequestRow.role,
                                   RequestRow.starts_at, RequestRow.expires_at)
                            .where(among(s, RequestRow.requester, people), RequestRow.state.in_(HOLDING_STATES))):
                held[h.requester].append((h.id, Holding(h.target, h.role, h.starts_at, h.expires_at)))
        groups = {p: self.directory.groups_of(p) for p in people}
        keep, refused, events = [], [], []
        for row in rows:
            if row.kind == "bypass":
                keep.append(row)
                continue
            if row.ticket and self.tickets is not None and row.id not in facts:
                waiting.add(row.id)  # due since its ticket was read: the next pass reads it
                continue
            ticket = facts.get(row.id)
            ctx = Context(groups=groups[row.requester], ticket=ticket,
                          holdings=tuple(h for i, h in held[row.requester] if i != row.id))
            decision = evaluate(self.policy, self._as_it_starts(row, now), ctx)
            if self._servicenow_down(decision, ticket):
                log.warning("REQ-%s not started yet: %s", row.id, decision.refusal())
                waiting.add(row.id)
            elif not decision.allowed:
                _, changes, (by, action, details) = self._policy_refusal(row, "activation", decision)
                refused.append((row, {**changes, "updated_at": now}))
                events.append((by, action, row_values(row, changes), row.id, details))
            else:
                keep.append(row)
        return keep, refused, events

    def _intend_activation(self, now: datetime, limit: int, skip_locked: bool, only: list[int] | None,
                           waiting: set[int]) -> tuple[int, list[Claim], datetime | None]:
        """Commit the grants ('applying', claimed by this process) of up to ``limit`` approved
        requests whose start has come and that the policy still allows (``_still_allowed``): one
        INSERT of grants, one UPDATE of requests, one of audit events; how many were due, the
        claims, and the end of their leases. The requests are locked (SQLite: the database) while
        this is written; one that has a grant is another process's activation."""
        pg = self.store.dialect == "postgresql"
        facts = self._due_facts(now, limit, only, waiting)
        with self.store.transaction() as s:
            q = self._due(s, now, limit, only, waiting)
            rows = s.exec(q.with_for_update(skip_locked=skip_locked) if pg else q).all()  # skipped: another engine's
            found = len(rows)
            if pg and rows:  # a grant committed after the query's snapshot, by whoever held a row it waited for
                taken = set(s.exec(select(GrantRow.request_id)
                                   .where(among(s, GrantRow.request_id, [r.id for r in rows]))).all())
                rows = [r for r in rows if r.id not in taken]
            at = self.clock()
            rows, refused, events = self._still_allowed(s, rows, at, facts, waiting)
            if refused:
                request_store.transition_many(s, refused)
            if not rows:
                self._record_many(s, at, events)
                return found, [], None
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
            self._record_many(s, at, events + [("engine", "grant.applying", row_values(row, change), row.id,
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

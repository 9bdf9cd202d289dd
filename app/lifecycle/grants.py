"""Applying and removing a grant on its backend: the intent before the call, the outcome after,
retries, shared artifacts; release, revoke and extend, which end or change a grant."""
from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from app import failpoints
from app.domain.errors import BadInput, Conflict, Refused
from app.domain.inputs import check_text
from app.domain.views import Outcome
from app.lifecycle.base import LifecycleBase, checks_of, log
from app.store import GrantRow, RequestRow
from app.store import grants as grant_store
from app.store import requests as request_store
from app.domain.states import LIVE
from integrations.base import BackendError, GrantSpec, InvalidGrant
from policies import authority
from policies.decision import AccessRequest
from policies.durations import format_duration
from policies.evaluate import evaluate


class Grants(LifecycleBase):
    def _activate_if_due(self, request_id: int) -> str | None:
        """Apply the grant now if the request is approved and its start has come."""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            grant_id = self._intend_apply(s, row, now)
            state, starts_at = row.state, row.starts_at
        if grant_id is not None:
            return self._apply(grant_id)
        return f"REQ-{request_id} starts at {starts_at:%Y-%m-%d %H:%M} UTC" if state == "approved" \
            and starts_at > now else None

    def _intend_apply(self, s: Session, row: RequestRow, now: datetime) -> int | None:
        """In ``s``: when the approved request's start has come, its grant as 'applying', claimed by
        this process; the grant's id, or None (not approved, not due, its window has passed, or
        another process is activating it)."""
        if row.state != "approved" or row.starts_at > now:
            return None
        if row.expires_at <= now and row.scheduled:
            return None  # its window has passed; the engine lapses it
        starts = row.starts_at if row.scheduled else now
        expires = row.expires_at if row.scheduled else now + timedelta(seconds=row.duration_s)
        grant = GrantRow(request_id=row.id, backend=row.backend or "", person=row.requester, target=row.target,
                         role=row.role, params=row.params, starts_at=starts, expires_at=expires,
                         status="applying", owner=self.owner, lease_until=now + self.settings.lease,
                         updated_at=now)
        if not grant_store.create(s, grant):
            return None  # another process is activating it
        backend = self.backends.get(grant.backend)
        grant.shared_key = backend.shared_key(self._spec(grant)) if backend is not None else None
        s.add(grant)
        request_store.transition(s, row, "approved", now, starts_at=starts, expires_at=expires)
        self._record(s, at=now, actor="engine", action="grant.applying", request_id=row.id, grant_id=grant.id,
                     backend=grant.backend, expires_at=expires.isoformat())
        return grant.id

    def _claim_of(self, grant_id: int) -> tuple[GrantSpec, str, datetime | None]:
        """A grant's spec, backend, and the end of this process's claim on it (None: not ours)."""
        with self.store.transaction() as s:
            g = s.get(GrantRow, grant_id)
            return self._spec(g), g.backend, g.lease_until if g.owner == self.owner else None

    def _ours(self, grant: GrantRow) -> bool:
        """Whether this process still holds its claim on ``grant`` (read, and locked, just now)."""
        if grant.owner == self.owner and self.leases.holds(grant.id):
            return True
        log.warning("REQ-%s: the claim on grant %s was lost (now %s, owner %s); its outcome is left to its "
                    "new owner", grant.request_id, grant.id, grant.status, grant.owner)
        return False

    def _apply(self, grant_id: int) -> str:
        """Call the backend for a grant in 'applying' and record the outcome, while its claim holds."""
        spec, backend, until = self._claim_of(grant_id)
        with self.leases.hold([grant_id], until):
            if not self.leases.holds(grant_id):
                return f"grant {grant_id} is being applied by another engine"
            result = self._with_backend(spec, backend, "apply")
            now = self.clock()
            with self.store.transaction() as s:
                return self._apply_outcome(s, grant_id, result, now)

    def _apply_outcome(self, s: Session, grant_id: int, result: Any, now: datetime) -> str:
        """Record what the backend call for a grant in 'applying' did: active, or failed."""
        grant = s.get(GrantRow, grant_id, with_for_update=True)
        if grant.status != "applying" or not self._ours(grant):  # the lease ran out: another engine has it
            return f"grant {grant_id} was taken over by another engine: {grant.status}"
        row = s.get(RequestRow, grant.request_id)
        if not isinstance(result, BackendError):
            ref = result
            grant_store.transition(s, grant, "active", now, ref=ref, applied_at=now, owner=None, lease_until=None,
                                   last_error=None)
            if row.state == "approved":
                request_store.transition(s, row, "active", now)
            self._record(s, at=now, actor="engine", action="grant.active", request_id=row.id, grant_id=grant.id,
                         ref=ref, expires_at=grant.expires_at.isoformat())
            return f"active: {grant.backend} grant until {grant.expires_at:%Y-%m-%d %H:%M:%S} UTC ({ref})"
        grant_store.transition(s, grant, "failed", now, last_error=str(result), owner=None, lease_until=None)
        if row.state == "approved":
            request_store.transition(s, row, "failed", now, closed_by="engine", closed_reason=str(result))
        self._record(s, at=now, actor="engine", action="grant.failed", request_id=row.id, grant_id=grant.id,
                     error=str(result))
        return f"failed: {result}"

    def _call_backend(self, grant_id: int, method: str) -> Any:
        """Run ``apply`` or ``revoke`` for a grant, between its crash points; see ``_with_retries``."""
        with self.store.transaction() as s:
            grant = s.get(GrantRow, grant_id)
            spec, backend = self._spec(grant), grant.backend
        return self._with_backend(spec, backend, method)

    def _with_backend(self, spec: GrantSpec, backend: str, method: str) -> Any:
        failpoints.hit(f"{method}.before_backend")
        result = self._with_retries(lambda: getattr(self._backend(backend), method)(spec))
        failpoints.hit(f"{method}.after_backend")
        return result

    def _with_retries(self, call: Any) -> Any:
        """Run a backend call; return its result, or the BackendError once retries are spent."""
        delay = self.settings.retry_backoff.total_seconds()
        for attempt in range(1, self.settings.apply_attempts + 1):
            try:
                return call()
            except InvalidGrant as exc:
                return exc
            except BackendError as exc:
                if not exc.transient or attempt == self.settings.apply_attempts:
                    return exc
                log.warning("backend call failed (attempt %d): %s", attempt, exc)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _reapply(self, grant_id: int) -> str | None:
        result = self._call_backend(grant_id, "apply")
        if isinstance(result, BackendError):
            with self.store.transaction() as s:
                grant = s.get(GrantRow, grant_id)
                self._record(s, at=self.clock(), actor="engine", action="grant.refresh_failed",
                             request_id=grant.request_id, grant_id=grant_id, error=str(result))
            return f"warning: the new expiry was not written to {grant.backend}: {result}"
        return None

    def release(self, actor: str, request_id: int) -> Outcome:
        """Task done: de-elevate now."""
        def allowed(row: RequestRow) -> None:
            refusal = authority.may_release(actor, row.requester, f"REQ-{row.id}")
            if refusal:
                raise Refused("release", refusal)
        return self._end(actor, request_id, "released", "release", "task completed", allowed)

    def revoke(self, actor: str, request_id: int, reason: str) -> Outcome:
        reason = check_text("reason", reason, required=True) or ""

        def allowed(row: RequestRow) -> None:
            refusal = authority.may_revoke(self.policy, actor, self.directory.groups_of(actor), row.approver_groups)
            if refusal:
                raise Refused("revoke", refusal)
        return self._end(actor, request_id, "revoked", "revoke", reason, allowed)

    def extend(self, actor: str, request_id: int, by: timedelta, reason: str) -> Outcome:
        """Extend an active or approved request, through every policy check again."""
        reason = check_text("reason", reason, required=True) or ""
        if by <= timedelta(0):
            raise BadInput("by", "must be longer than zero")
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, ("approved", "active"), "extend")
            if row.kind == "bypass":
                raise Refused("extend", "an emergency bypass cannot be extended; request access normally")
            new_expiry = row.expires_at + by
            req = AccessRequest(row.requester, row.target, row.role, row.starts_at, new_expiry - row.starts_at,
                                reason, row.ticket)
            decision = evaluate(self.policy, req, self._context(s, row.requester, exclude=row.id))
            if not decision.allowed:
                self._record(s, at=now, actor=actor, action="extension.refused", request_id=row.id,
                             by=format_duration(by), checks=checks_of(decision))
                refusal = Refused("policy", decision.refusal())
            elif why := authority.may_extend(actor, self.directory.groups_of(actor), row.requester,
                                             decision.auto_approved, decision.approval, decision.approver_groups,
                                             format_duration(req.duration)):
                refusal = Refused("approval", why)
            else:
                refusal = None
                request_store.transition(s, row, row.state, now, expires_at=new_expiry, duration_s=row.duration_s + int(by.total_seconds()))
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if grant is not None and grant.status == "active":
                    grant_store.transition(s, grant, "active", now, expires_at=new_expiry)
                self._record(s, at=now, actor=actor, action="request.extended", request_id=row.id,
                             by=format_duration(by), expires_at=new_expiry.isoformat(), reason=reason,
                             checks=checks_of(decision))
                grant_id = grant.id if grant is not None and grant.status == "active" else None
        if refusal:
            raise refusal
        notes = []
        if grant_id is not None:
            notes.append(self._reapply(grant_id))
        return Outcome(self.get(request_id), f"REQ-{request_id} extended by {format_duration(by)} "
                                             f"until {new_expiry:%Y-%m-%d %H:%M:%S} UTC", [n for n in notes if n])

    def _end(self, actor: str, request_id: int, end_state: str, verb: str, reason: str, allowed: Any) -> Outcome:
        """Release or revoke: write the intent, remove the artifact, record the outcome."""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            allowed(row)
            if row.state == "approved":  # approved but not started: nothing applied yet
                self._no_activation_running(s, row)
                request_store.transition(s, row, "cancelled" if end_state == "released" else "revoked", now,
                           closed_by=actor, closed_reason=reason)
                self._record(s, at=now, actor=actor, action=f"request.{row.state}", request_id=row.id, reason=reason)
                grant_id = None
            else:
                self._expect(row, "active", verb)
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if grant is None or grant.status != "active":
                    raise Conflict("state", f"REQ-{request_id}'s grant is {grant.status if grant else 'missing'}; "
                                            "it is already being revoked")
                self._intend_revoke(s, grant, end_state, actor, reason, now)
                request_store.transition(s, row, "active", now)  # bumps the version: a concurrent action loses
                grant_id = grant.id
        note = self._revoke(grant_id) if grant_id else None
        view = self.get(request_id)
        return Outcome(view, f"REQ-{request_id} {view.state}" if view.state != "active"
                       else f"REQ-{request_id}: revocation pending ({note})", [note] if note else [])

    def _intend_revoke(self, s: Session, grant: GrantRow, end_state: str, actor: str, reason: str,
                       now: datetime) -> None:
        grant_store.transition(s, grant, "revoking", now, end_state=end_state, end_actor=actor, end_reason=reason,
                               owner=self.owner, lease_until=now + self.settings.lease)
        self._record(s, at=now, actor=actor, action="grant.revoking", request_id=grant.request_id,
                     grant_id=grant.id, end_state=end_state, reason=reason)

    def _still_covered(self, grant_id: int) -> GrantRow | None:
        """Another live grant that shares this grant's artifact, if any (locked while we decide)."""
        with self.store.transaction() as s:
            grant = s.get(GrantRow, grant_id)
            if not grant.shared_key:
                return None
            return s.exec(select(GrantRow).where(GrantRow.shared_key == grant.shared_key, GrantRow.id != grant.id,
                                                 GrantRow.status.in_(LIVE))
                          .order_by(GrantRow.expires_at.desc()).with_for_update()).first()

    def _revoke(self, grant_id: int) -> str | None:
        """Remove the artifact of a grant in 'revoking'; mark it revoked only once it is gone.

        When another live grant shares the artifact, it stays, and that grant is applied again
        so its own terms (e.g. an AD membership TTL) are the ones in force. Only while this
        process holds its claim on the grant: a lost claim is left to its new owner."""
        spec, backend, until = self._claim_of(grant_id)
        with self.leases.hold([grant_id], until):
            if not self.leases.holds(grant_id):
                return f"grant {grant_id} is being revoked by another engine"
            other = self._still_covered(grant_id)
            if other is not None:
                error = self._call_backend(other.id, "apply")
                kept = other.id
            else:
                error = self._with_backend(spec, backend, "revoke")
                kept = None
            now = self.clock()
            with self.store.transaction() as s:
                return self._revoke_outcome(s, grant_id, error, kept, now)

    def _revoke_outcome(self, s: Session, grant_id: int, error: Any, kept: int | None, now: datetime) -> str | None:
        """Record what the backend call for a grant in 'revoking' did: revoked, or a retry later."""
        grant = s.get(GrantRow, grant_id, with_for_update=True)  # two finishers: the second sees it done
        if grant.status != "revoking" or not self._ours(grant):
            return None
        if isinstance(error, BackendError):
            attempts = grant.attempts + 1
            grant_store.transition(s, grant, "revoking", attempts=attempts, last_error=str(error),
                                   next_attempt_at=now + self.settings.retry_backoff * min(2 ** attempts, 64),
                                   owner=None, lease_until=None)
            self._record(s, at=now, actor="engine", action="grant.revoke_failed", request_id=grant.request_id,
                         grant_id=grant.id, error=str(error), attempts=grant.attempts)
            log.error("REQ-%s: revoking grant %s failed (attempt %d), it is still on %s; retry after %s: %s",
                      grant.request_id, grant.id, grant.attempts, grant.backend,
                      f"{grant.next_attempt_at:%H:%M:%S} UTC", error)
            return f"the backend still holds it, will retry: {error}"
        row = s.get(RequestRow, grant.request_id)
        grant_store.transition(s, grant, "revoked", now, revoked_at=now, owner=None, lease_until=None, last_error=None)
        if row.state == "active":
            request_store.transition(s, row, grant.end_state or "revoked", now, closed_by=grant.end_actor,
                       closed_reason=grant.end_reason)
        self._record(s, at=now, actor=grant.end_actor or "engine", action=f"request.{grant.end_state}",
                     request_id=row.id, grant_id=grant.id, reason=grant.end_reason, kept_for_grant=kept,
                     lag_ms=round((now - grant.expires_at).total_seconds() * 1000)
                     if grant.end_state == "expired" else None)
        return None

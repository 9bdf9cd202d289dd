"""Applying and removing a grant on its backend: the intent before the call, the outcome after,
retries, shared artifacts; release, revoke and extend, which end or change a grant."""
from __future__ import annotations

import time
from concurrent.futures import Executor, Future
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlmodel import Session, select

from app import failpoints
from app.domain.errors import BadInput, Conflict, Refused
from app.domain.inputs import check_text
from app.domain.views import Outcome
from app.lifecycle.base import LifecycleBase, checks_of, log, row_values
from app.store import GrantRow, RequestRow, among
from app.store import grants as grant_store
from app.store import requests as request_store
from app.domain.states import LIVE
from integrations.base import BackendError, GrantSpec, InvalidGrant
from policies import authority
from policies.decision import AccessRequest
from policies.durations import format_duration


class Claim(NamedTuple):
    """A grant in 'applying' this process claimed: what its backend is asked, and which backend."""

    spec: GrantSpec
    backend: str


class Applying(NamedTuple):
    """A batch of claims whose backend calls run in another thread (``Grants._start_applying``)."""

    claims: list[Claim]
    held: ExitStack  # the claims kept renewed until the outcomes are written
    calls: Future  # -> (per grant id its reference or the BackendError, the instant the calls ended)


class Grants(LifecycleBase):
    def _intend_apply(self, s: Session, row: RequestRow, now: datetime) -> int | None:
        """In ``s``: when the approved request's start has come, its grant as 'applying', claimed by
        this process; the grant's id, or None (not approved, not due, its window has passed, or
        another process is activating it)."""
        if row.state != "approved" or row.starts_at > now:
            return None
        if row.expires_at <= now and row.scheduled:
            return None  # its window has passed; the engine lapses it
        grant = GrantRow(**self._new_grant(row, now))
        if not grant_store.create(s, grant):
            return None  # another process is activating it
        grant.shared_key = self._shared_key(self._spec(grant), grant.backend)
        s.add(grant)
        request_store.transition(s, row, "approved", now, starts_at=grant.starts_at, expires_at=grant.expires_at)
        self._record(s, at=now, actor="engine", action="grant.applying", request_id=row.id, grant_id=grant.id,
                     backend=grant.backend, expires_at=grant.expires_at.isoformat())
        return grant.id

    def _new_grant(self, row: Any, now: datetime) -> dict[str, Any]:
        """The grant (its columns, id aside) an approved request's activation writes now: 'applying',
        claimed by this process for one lease; over the request's own window when it was
        scheduled, else from now. ``row``: the request, as an object or a result row."""
        starts = row.starts_at if row.scheduled else now
        expires = row.expires_at if row.scheduled else now + timedelta(seconds=row.duration_s)
        return dict(request_id=row.id, backend=row.backend or "", person=row.requester, target=row.target,
                    role=row.role, params=row.params, starts_at=starts, expires_at=expires, status="applying",
                    owner=self.owner, lease_until=now + self.settings.lease, attempts=0, updated_at=now,
                    version=1)

    def _shared_key(self, spec: GrantSpec, backend: str) -> str | None:
        found = self.backends.get(backend)
        return found.shared_key(spec) if found is not None else None

    def _claim_of(self, grant_id: int) -> tuple[GrantSpec, str, datetime | None]:
        """A grant's spec, backend, and the end of this process's claim on it (None: not ours)."""
        with self.store.transaction() as s:
            g = s.get(GrantRow, grant_id)
            return self._spec(g), g.backend, g.lease_until if g.owner == self.owner else None

    def _ours(self, grant: Any) -> bool:
        """Whether this process still holds its claim on ``grant`` (read, and locked, just now)."""
        if grant.owner == self.owner and self.leases.holds(grant.id):
            return True
        log.warning("REQ-%s: the claim on grant %s was lost (now %s, owner %s); its outcome is left to its "
                    "new owner", grant.request_id, grant.id, grant.status, grant.owner)
        return False

    def _apply(self, grant_id: int) -> str:
        """Call the backend for a grant in 'applying' and record the outcome, while its claim holds:
        ``_apply_claimed`` with one grant."""
        spec, backend, until = self._claim_of(grant_id)
        return self._apply_claimed([Claim(spec, backend)], until)[grant_id]

    def _apply_claimed(self, claims: list[Claim], until: datetime | None) -> dict[int, str]:
        """Apply grants in 'applying' this process claimed (leases until ``until``; None: not ours)
        and record the outcomes: the backend calls, through a backend's ``apply_many`` where it has
        one, then one transaction for every outcome. The claims are renewed meanwhile; a grant
        whose claim is lost before its call is not applied, one lost before its outcome is not
        recorded (its new owner finishes it). Per grant id, the note for whoever asked."""
        with self.leases.hold([c.spec.grant_id for c in claims], until):
            results = self._apply_on_backends(claims)
            return self._record_applied(claims, results, self.clock())

    def _start_applying(self, worker: Executor, claims: list[Claim], until: datetime) -> Applying:
        """``_apply_claimed``'s backend calls, started in ``worker`` (they mostly wait on the target),
        the claims held from now on; ``_finish_applying`` records the outcomes."""
        held = ExitStack()
        held.enter_context(self.leases.hold([c.spec.grant_id for c in claims], until))
        try:
            calls = worker.submit(lambda: (self._apply_on_backends(claims), self.clock()))
        except BaseException:
            held.close()
            raise
        return Applying(claims, held, calls)

    def _finish_applying(self, applying: Applying) -> dict[int, str]:
        """Wait for a started batch's backend calls and record their outcomes; the claims are let go
        even when that fails (then the grants stay 'applying' for ``recover()`` once the leases end)."""
        with applying.held:
            results, ended = applying.calls.result()
            return self._record_applied(applying.claims, results, ended)

    def _record_applied(self, claims: list[Claim], results: dict[int, Any], now: datetime) -> dict[int, str]:
        notes = {c.spec.grant_id: f"grant {c.spec.grant_id} is being applied by another engine"
                 for c in claims if c.spec.grant_id not in results}
        if results:
            notes.update(self._apply_outcomes(results, now))
        return notes

    def _apply_on_backends(self, claims: list[Claim]) -> dict[int, Any]:
        """Each grant's backend call, with retries, between the apply crash points: per grant id its
        reference or the BackendError; a grant whose claim was lost before its call is left out."""
        failpoints.hit("apply.before_backend")
        results: dict[int, Any] = {}
        for name in dict.fromkeys(c.backend for c in claims):  # per backend, in the claims' order
            specs = [c.spec for c in claims if c.backend == name]
            apply_many = getattr(self.backends.get(name), "apply_many", None)  # integrations.base.BatchApply
            if apply_many is None:  # one call per grant (and no such backend: each a BackendError)
                for spec in specs:
                    if self.leases.holds(spec.grant_id):
                        results[spec.grant_id] = self._with_retries(lambda: self._backend(name).apply(spec))
            else:
                results.update(self._apply_many_with_retries(
                    apply_many, [spec for spec in specs if self.leases.holds(spec.grant_id)]))
        failpoints.hit("apply.after_backend")
        return results

    def _apply_many_with_retries(self, apply_many: Any, specs: list[GrantSpec]) -> dict[int, Any]:
        """``apply_many`` over ``specs``, the transient failures again with backoff, as
        ``_with_retries`` does for one call: per grant id its reference or the BackendError."""
        results: dict[int, Any] = {}
        delay = self.settings.retry_backoff.total_seconds()
        for attempt in range(1, self.settings.apply_attempts + 1):
            if not specs:
                break
            answers = list(apply_many(specs))
            if len(answers) != len(specs):
                raise AssertionError(f"apply_many answered {len(answers)} times for {len(specs)} grants")
            again = []
            for spec, answer in zip(specs, answers):
                if isinstance(answer, BackendError) and answer.transient and not isinstance(answer, InvalidGrant) \
                        and attempt < self.settings.apply_attempts:
                    again.append((spec, answer))
                else:
                    results[spec.grant_id] = answer
            if again:
                log.warning("backend call failed for %d grant(s) (attempt %d): %s", len(again), attempt, again[0][1])
                time.sleep(delay)
                delay *= 2
            specs = [spec for spec, _ in again]
        return results

    def _apply_outcomes(self, results: dict[int, Any], now: datetime) -> dict[int, str]:
        """Record what the backend calls did for grants in 'applying', in one transaction: each
        active, or failed with its request, with its audit event; nothing for a grant finished
        by, or left to, whoever took its claim over. Per grant id, the note for whoever asked."""
        pg = self.store.dialect == "postgresql"
        notes: dict[int, str] = {}
        with self.store.transaction() as s:
            q = (select(GrantRow.id, GrantRow.request_id, GrantRow.backend, GrantRow.status, GrantRow.owner,
                        GrantRow.person, GrantRow.target, GrantRow.role, GrantRow.starts_at, GrantRow.params,
                        GrantRow.expires_at, GrantRow.version)
                 .where(among(s, GrantRow.id, results)).order_by(GrantRow.id))  # the renewals' order
            grants = {g.id: g for g in s.exec(q.with_for_update() if pg else q)}
            q = (select(*RequestRow.__table__.c)
                 .where(among(s, RequestRow.id, {g.request_id for g in grants.values()})).order_by(RequestRow.id))
            rows = {r.id: r for r in s.exec(q.with_for_update() if pg else q)}
            active, failed, started, ended, events = [], [], [], [], []
            for grant_id, result in results.items():
                g = grants[grant_id]
                if g.status != "applying" or not self._ours(g):  # the lease ran out: another engine has it
                    notes[grant_id] = f"grant {grant_id} was taken over by another engine: {g.status}"
                    continue
                row = rows[g.request_id]
                if not isinstance(result, BackendError):
                    active.append((g, {"status": "active", "ref": result, "applied_at": now, "owner": None,
                                       "lease_until": None, "last_error": None, "updated_at": now}))
                    change, bucket = {"state": "active", "updated_at": now}, started
                    action, details = "grant.active", dict(grant_id=g.id, ref=result,
                                                           expires_at=g.expires_at.isoformat(),
                                                           granted=self._granted(g))
                    notes[grant_id] = (f"active: {g.backend} grant until {g.expires_at:%Y-%m-%d %H:%M:%S} UTC "
                                       f"({result})")
                else:
                    failed.append((g, {"status": "failed", "last_error": str(result), "owner": None,
                                       "lease_until": None, "updated_at": now}))
                    change, bucket = {"state": "failed", "updated_at": now, "closed_by": "engine",
                                      "closed_reason": str(result)}, ended
                    action, details = "grant.failed", dict(grant_id=g.id, error=str(result))
                    notes[grant_id] = f"failed: {result}"
                if row.state == "approved":
                    bucket.append((row, change))
                else:
                    change = {}
                events.append(("engine", action, row_values(row, change), row.id, details))
            for changes in (active, failed):  # one statement each, by primary key, rows locked above
                grant_store.transition_many(s, changes)
            for changes in (started, ended):
                request_store.transition_many(s, changes)
            self._record_many(s, now, events)
        return notes

    def _granted(self, g: Any) -> Any:
        """What the grant's artifact grants, as its backend describes it (the sudo backend: the
        commands as rendered, sudoedit files, NOEXEC), for the audit; None where it says nothing."""
        describe = getattr(self.backends.get(g.backend), "describe", None)
        return describe(grant_store.spec_from(g._mapping)) if describe is not None else None

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
        """Extend an approved or active request: the whole policy again over the longer period,
        the ticket's checks included (so never past its change window), under the requester's
        lock, and the approval model it was granted under (``authority.may_extend``)."""
        reason = check_text("reason", reason, required=True) or ""
        if by <= timedelta(0):
            raise BadInput("by", "must be longer than zero")
        now = self.clock()
        with self.store.transaction() as s:
            first = self._load(s, request_id)
        facts = self._ticket_facts(first.ticket, first.starts_at, first.expires_at + by)
        with self.store.transaction() as s:
            request_store.lock_people(s, [first.requester])
            row = self._load(s, request_id)
            self._expect(row, ("approved", "active"), "extend")
            if row.kind == "bypass":
                raise Refused("extend", "an emergency bypass cannot be extended; request access normally")
            new_expiry = row.expires_at + by
            req = AccessRequest(row.requester, row.target, row.role, row.starts_at, new_expiry - row.starts_at,
                                reason, row.ticket)
            decision = self._recheck(s, row, req, facts)
            if not decision.allowed:
                self._record(s, at=now, actor=actor, action="extension.refused", request_id=row.id,
                             by=format_duration(by), checks=checks_of(decision))
                refusal = Refused("policy", decision.refusal())
            elif why := authority.may_extend(actor, self.directory.groups_of(actor), row.requester, row.approval_model,
                                             decision.auto_approved, decision.approval, decision.approver_groups,
                                             format_duration(req.duration), f"REQ-{row.id}", row.expires_at):
                self._record(s, at=now, actor=actor, action="extension.refused", request_id=row.id,
                             by=format_duration(by), reason=why)
                refusal = Refused("approval", why)
            else:
                refusal = None
                request_store.transition(s, row, row.state, now, expires_at=new_expiry, checks=checks_of(decision),
                                         duration_s=row.duration_s + int(by.total_seconds()))
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if grant is not None and grant.status == "active":
                    grant_store.transition(s, grant, "active", now, expires_at=new_expiry)
                self._record(s, at=now, actor=actor, action="request.extended", request_id=row.id,
                             by=format_duration(by), expires_at=new_expiry.isoformat(), reason=reason,
                             checks=checks_of(decision))
                grant_id = grant.id if grant is not None and grant.status == "active" else None
        if refusal:  # raised after the commit: the refusal stays audited
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
            grant_id = self._end_in(s, row, end_state, verb, actor, reason, now)
        note = self._revoke(grant_id) if grant_id else None
        view = self.get(request_id)
        return Outcome(view, f"REQ-{request_id} {view.state}" if view.state != "active"
                       else f"REQ-{request_id}: revocation pending ({note})", [note] if note else [])

    def _end_in(self, s: Session, row: RequestRow, end_state: str, verb: str, actor: str, reason: str,
                now: datetime) -> int | None:
        """In ``s``: end an approved request now, or write the intent to revoke an active one's grant
        (its id returned: the caller removes the artifact after the commit)."""
        if row.state == "approved":  # approved but not started: nothing applied yet
            self._no_activation_running(s, row)
            request_store.transition(s, row, "cancelled" if end_state == "released" else "revoked", now,
                                     closed_by=actor, closed_reason=reason)
            self._record(s, at=now, actor=actor, action=f"request.{row.state}", request_id=row.id, reason=reason)
            return None
        self._expect(row, "active", verb)
        grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
        if grant is None or grant.status != "active":
            raise Conflict("state", f"REQ-{row.id}'s grant is {grant.status if grant else 'missing'}; "
                                    "it is already being revoked")
        self._intend_revoke(s, grant, end_state, actor, reason, now)
        request_store.transition(s, row, "active", now)  # bumps the version: a concurrent action loses
        return grant.id

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

"""The emergency path: a bypass active at once, and its post-hoc review."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import select

from app.domain.errors import BadInput, Conflict, Refused
from app.domain.inputs import check_text
from app.domain.views import Outcome, RequestView
from app.lifecycle.base import checks_of, linked_sys_id
from app.lifecycle.grants import Grants
from app.store import GrantRow, RequestRow, ReviewRow
from app.store import requests as request_store
from app.domain.states import REVIEW_OUTCOMES
from policies import authority
from policies.durations import format_duration
from policies.evaluate import evaluate_bypass


class Bypass(Grants):
    def bypass(self, person: str, target: str, role: str, duration: timedelta, incident: str,
               reason: str) -> Outcome:
        """Emergency: active at once for the on-call group, reviewed afterwards."""
        req, _ = self._access_request(person, target, role, duration, reason, incident, None)
        facts = self._ticket_facts(req.ticket, req.starts_at, req.expires_at)
        now = self.clock()
        with self.store.transaction() as s:
            decision = evaluate_bypass(self.policy, req, replace(self._context(s, person), ticket=facts))
            checks = checks_of(decision)
            if not decision.allowed:
                self._record(s, at=now, actor=person, action="bypass.refused", target=target, role=role,
                             checks=checks)
                refusal = Refused("policy", decision.refusal())
            else:
                refusal = None
                row = RequestRow(
                    kind="bypass", requester=person, target=target, role=role, environment=decision.environment,
                    tier=decision.tier, backend=decision.backend, params=decision.params, reason=req.reason,
                    ticket=req.ticket, ticket_sys_id=linked_sys_id(facts), state="approved",
                    approval_model="emergency", checks=checks,
                    duration_s=int(duration.total_seconds()), starts_at=now, expires_at=now + duration,
                    created_at=now, updated_at=now)
                request_store.create(s, row)
                s.add(ReviewRow(request_id=row.id, bypasser=person, opened_at=now))
                self._record(s, at=now, actor=person, action="bypass.used", request_id=row.id, target=target,
                             role=role, incident=req.ticket, reason=req.reason, checks=checks,
                             duration=format_duration(duration))
                request_id, grant_id = row.id, self._intend_apply(s, row, now)
        if refusal:
            raise refusal
        note = self._apply(grant_id) if grant_id is not None else None
        return Outcome(self.get(request_id), f"REQ-{request_id}: emergency bypass; post-hoc review opened",
                       [note] if note else [])

    def review(self, actor: str, request_id: int, outcome: str, comment: str) -> Outcome:
        comment = check_text("comment", comment, required=True) or ""
        if outcome not in REVIEW_OUTCOMES:
            raise BadInput("outcome", "must be 'justified' or 'violation'")
        now = self.clock()
        with self.store.transaction() as s:
            row, rev = self._review_of(s, request_id)
            if rev.state != "open":
                raise Refused("review", f"REQ-{request_id} was already reviewed ({rev.state} by {rev.reviewer})")
            refusal = authority.may_review(self.policy, actor, self.directory.groups_of(actor), rev.bypasser)
            if refusal:
                raise Refused("review", refusal)
            done = s.execute(sa.update(ReviewRow).where(ReviewRow.id == rev.id, ReviewRow.version == rev.version)
                             .values(state=outcome, reviewer=actor, comment=comment, reviewed_at=now,
                                     version=rev.version + 1))
            if done.rowcount != 1:
                raise Conflict("review", f"REQ-{request_id} was reviewed by someone else just now")
            self._record(s, at=now, actor=actor, action="bypass.reviewed", request_id=row.id, outcome=outcome,
                         comment=comment, bypasser=rev.bypasser)
            grant_id, ended = None, ""
            if outcome == "violation" and row.state in ("approved", "active"):  # the access it gave ends now
                grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
                if row.state == "approved" or (grant is not None and grant.status == "active"):
                    grant_id = self._end_in(s, row, "revoked", "revoke", actor,
                                            f"emergency bypass reviewed as a violation: {comment}", now)
                    ended = "; its access is revoked"
                else:  # an engine is already revoking it (expiry): that revocation finishes it
                    ended = "; its access is already being revoked"
            elif outcome == "violation":
                ended = f"; its access had already ended ({row.state})"
            if outcome == "violation":
                ended += f"; {rev.bypasser} cannot bypass again until a security operator clears it"
        note = self._revoke(grant_id) if grant_id else None
        return Outcome(self.get(request_id), f"REQ-{request_id} reviewed: {outcome}{ended}", [note] if note else [])

    def clear_violation(self, actor: str, request_id: int, comment: str) -> Outcome:
        """A security operator lets the bypasser of a bypass reviewed as a violation bypass again."""
        comment = check_text("comment", comment, required=True) or ""
        now = self.clock()
        with self.store.transaction() as s:
            row, rev = self._review_of(s, request_id)
            if rev.state != "violation":
                raise Refused("review", f"REQ-{request_id} was not reviewed as a violation ({rev.state}); "
                                        "nothing to clear")
            if rev.cleared_at is not None:
                raise Refused("review", f"REQ-{request_id}'s violation was already cleared by {rev.cleared_by}")
            refusal = authority.may_review(self.policy, actor, self.directory.groups_of(actor), rev.bypasser)
            if refusal:
                raise Refused("review", refusal.replace("review their own bypass", "clear their own violation"))
            done = s.execute(sa.update(ReviewRow).where(ReviewRow.id == rev.id, ReviewRow.version == rev.version)
                             .values(cleared_by=actor, cleared_at=now, clear_comment=comment, version=rev.version + 1))
            if done.rowcount != 1:
                raise Conflict("review", f"REQ-{request_id}'s review was changed by someone else just now")
            self._record(s, at=now, actor=actor, action="bypass.cleared", request_id=row.id, comment=comment,
                         bypasser=rev.bypasser)
        return Outcome(self.get(request_id), f"REQ-{request_id}: violation cleared; {rev.bypasser} may bypass again")

    def _review_of(self, s, request_id: int) -> tuple[RequestRow, ReviewRow]:
        """The bypass and its review, in ``s``; refused when the request is no bypass."""
        row = self._load(s, request_id)
        rev = s.exec(select(ReviewRow).where(ReviewRow.request_id == row.id)).first()
        if rev is None:
            raise Refused("review", f"REQ-{request_id} is not an emergency bypass")
        return row, rev

    def open_reviews(self) -> list[RequestView]:
        with self.store.transaction() as s:
            ids = s.exec(select(ReviewRow.request_id).where(ReviewRow.state == "open")).all()
            return [self._view(s, s.get(RequestRow, i)) for i in ids]

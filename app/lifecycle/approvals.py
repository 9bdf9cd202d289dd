"""People deciding a pending request: approve (the last approval claims its activation in the
same transaction) and deny."""
from __future__ import annotations

from sqlmodel import select

from app.domain.errors import Refused
from app.domain.inputs import check_text
from app.domain.views import Outcome
from app.lifecycle.base import LifecycleBase, checks_of
from app.store import ApprovalRow, RequestRow
from app.store import requests as request_store
from policies import authority
from policies.approvals import Approver, judge


class Approvals(LifecycleBase):
    def approve(self, actor: str, request_id: int, comment: str = "") -> Outcome:
        """Record an approval. The one that completes the request first runs the whole policy again
        (``_recheck``), under the requester's lock: a refusal there denies the request, audited
        with its failing checks; ServiceNow not answering refuses this approval (try again)."""
        comment = check_text("comment", comment, required=False) or ""
        now = self.clock()
        with self.store.transaction() as s:
            first = self._load(s, request_id)
        req = self._as_it_starts(first, now)
        facts = self._ticket_facts(first.ticket, req.starts_at, req.expires_at)
        with self.store.transaction() as s:
            request_store.lock_people(s, [first.requester])
            row = self._load(s, request_id)
            self._expect(row, "pending", "approve")
            prior = [Approver(a.approver, frozenset(a.groups)) for a in
                     s.exec(select(ApprovalRow).where(ApprovalRow.request_id == row.id)).all()]
            me = Approver(actor, self.directory.groups_of(actor))
            verdict = judge(row.approval_model, tuple(row.approver_groups), row.requester, prior, me)
            decision = self._recheck(s, row, req, facts) if verdict.allowed and verdict.complete else None
            grant_id, refusal = None, None
            if not verdict.allowed:
                self._record(s, at=now, actor=actor, action="approval.refused", request_id=row.id,
                             reason=verdict.message)
                refusal = Refused("approval", verdict.message)
            elif decision is not None and self._servicenow_down(decision, facts):
                self._record(s, at=now, actor=actor, action="approval.refused", request_id=row.id,
                             reason=decision.refusal())
                refusal = Refused("ticket", f"REQ-{row.id} was not approved: {decision.refusal()}")
            elif decision is not None and not decision.allowed:
                reason, changes, (by, action, details) = self._policy_refusal(row, "approval", decision,
                                                                              approver=actor)
                request_store.transition(s, row, changes.pop("state"), now, **changes)
                self._record(s, at=now, actor=by, action=action, request_id=row.id, **details)
                refusal = Refused("policy", f"REQ-{row.id} {reason}")
            else:
                groups = sorted(me.groups & set(row.approver_groups))
                more = {"checks": checks_of(decision)} if decision is not None else {}
                request_store.transition(s, row, "approved" if verdict.complete else "pending", now, **more)
                s.add(ApprovalRow(request_id=row.id, approver=actor, groups=groups, comment=comment, at=now))
                self._record(s, at=now, actor=actor, action="approval.given", request_id=row.id,
                             groups=groups, comment=comment, complete=verdict.complete)
                if verdict.complete:  # the approval and the activation it causes: one transaction
                    self._record(s, at=now, actor=actor, action="request.approved", request_id=row.id,
                                 model=row.approval_model, checks=checks_of(decision))
                    grant_id = self._intend_apply(s, row, now)
                starts_at = row.starts_at
        if refusal:  # raised after the commit: the refusal stays audited
            raise refusal
        notes = []
        if grant_id is not None:
            notes.append(self._apply(grant_id))
        elif verdict.complete:
            notes.append(f"REQ-{request_id} starts at {starts_at:%Y-%m-%d %H:%M} UTC")
        return Outcome(self.get(request_id), f"REQ-{request_id}: {verdict.message}", [n for n in notes if n])

    def deny(self, actor: str, request_id: int, reason: str) -> Outcome:
        reason = check_text("reason", reason, required=True) or ""

        def allowed(row: RequestRow) -> None:
            refusal = authority.may_deny(self.policy, actor, self.directory.groups_of(actor), row.requester,
                                         row.approver_groups)
            if refusal:
                raise Refused("deny", refusal)
        return self._close(actor, request_id, ("pending",), "denied", "deny", reason, allowed)

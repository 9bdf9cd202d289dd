"""Where a ServiceNow change becomes a request (ticket-driven elevation, a page at a time), and
where a closed ticket ends the requests that depend on it."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.domain.errors import Refused
from app.domain.states import OPEN_STATES, UNSTARTED
from app.lifecycle.base import AUTO_APPROVED, LifecycleBase, checks_of, log
from app.store import GrantRow, RequestRow, TicketDecisionRow, among, audit, next_ids
from app.store import grants as grant_store
from app.store import requests as request_store
from integrations.servicenow.model import SYS_ID_RE, Ticket
from policies.approvals import Approver, approvals_needed, tally
from policies.decision import AccessRequest, Context, Decision, Holding, TicketFacts
from policies.durations import format_duration
from policies.evaluate import evaluate
from policies.tickets import CHANGE_STATES


def source_ref(ticket: Ticket) -> str:
    """A ticket-driven request's unique reference to the change it came from."""
    return f"change_request:{ticket.sys_id}"


class Tickets(LifecycleBase):
    def submit_from_tickets(self, items: Sequence[tuple[Ticket, TicketFacts]]) -> list[int | Refused | None]:
        """Ticket-driven elevation for a page of changes at once: each approved change carrying JIT
        fields becomes a request scheduled over its change window, clipped to policy.

        Per change, in order: the new request's id; None when that change was already turned into
        a request; or the Refused (a policy refusal is audited, as for any request). One transaction
        for the page: one query for the changes already handled and one for the requesters'
        holdings, which then also count the requests made earlier in the same page."""
        results: list[int | Refused | None] = [None] * len(items)
        due: list[int] = []
        try:
            with self.store.transaction() as s:
                due = self._submit_tickets(s, items, results)
        except IntegrityError:  # another engine's sync turned one of these changes into a request first?
            if len(items) > 1:
                return [self.submit_from_tickets([item])[0] for item in items]
            with self.store.transaction() as s:
                source = source_ref(items[0][0])
                if s.exec(select(RequestRow.id).where(RequestRow.source_ref == source)).first() is None:
                    raise  # some other constraint: not a race to swallow
            return [None]
        if due:  # approved and already started: apply now, a batch at a time
            self.activate_due(only=due)
        return results

    def _ticket_request(self, ticket: Ticket, now: datetime) -> tuple[AccessRequest, bool]:
        """The request a change asks for, and whether ServiceNow's approval counts for its tier."""
        if not (ticket.assignee and ticket.jit_target and ticket.jit_role):
            raise Refused("ticket", f"{ticket.number} needs an assignee and both JIT fields")
        if ticket.start is None or ticket.end is None:
            raise Refused("change_window", f"{ticket.number} has no planned start and end dates")
        start, end = max(now, ticket.start), ticket.end
        if end <= start:
            raise Refused("change_window", f"the window of {ticket.number} ended at {end:%Y-%m-%d %H:%M} UTC")
        target = self.policy.targets.get(ticket.jit_target)
        env = self.policy.environments.get(target.environment) if target else None
        reason = f"ServiceNow change {ticket.number}: work inside its approved window"
        req, _ = self._access_request(ticket.assignee, ticket.jit_target, ticket.jit_role, end - start, reason,
                                      ticket.number, start)
        window = end - req.starts_at  # from the start as resolved, to the end of the change
        duration = min(window, env.max_duration) if env else window  # clipped to policy
        if duration != req.duration:
            req = replace(req, duration=duration)
        tier = self.policy.tiers.get(target.tier) if target else None
        return req, bool(tier and tier.servicenow_approval_counts)

    def _submit_tickets(self, s: Session, items: Sequence[tuple[Ticket, TicketFacts]],
                        results: list[int | Refused | None]) -> list[int]:
        """The page's decisions and rows in ``s``; fills ``results``; returns the requests due now."""
        now = self.clock()
        sources = {}  # index -> source_ref
        for i, (ticket, _) in enumerate(items):
            if SYS_ID_RE.fullmatch(ticket.sys_id or ""):  # it becomes the unique source_ref: 32 hex digits only
                sources[i] = source_ref(ticket)
            else:
                results[i] = Refused("ticket", f"{ticket.number!r} has an invalid sys_id {ticket.sys_id[:40]!r}")
        handled = set(s.exec(select(RequestRow.source_ref)
                             .where(among(s, RequestRow.source_ref, set(sources.values())))).all()) if sources else set()
        refused = {d.source_ref: d for d in s.exec(select(TicketDecisionRow).where(
            among(s, TicketDecisionRow.source_ref, set(sources.values()) - handled)))} if sources else {}
        wanted = []  # (index, request, servicenow approves, facts)
        for i, source in sources.items():
            if source in handled:
                continue  # this change was turned into a request before (or earlier in this page)
            handled.add(source)
            if source in refused and refused[source].digest == items[i][0].digest():
                continue  # this version was refused before: its refusal's note changed nothing we decide on
            try:
                wanted.append((i, *self._ticket_request(items[i][0], now), items[i][1]))
            except Refused as exc:
                results[i] = exc
        people = {req.requester for _, req, _, _ in wanted}
        holdings: dict[str, list[Holding]] = {p: [] for p in people}
        request_store.lock_people(s, people)  # as for any submission: racing decisions see each other
        if people:  # what is queued counts too; (open bypass reviews are not read: only evaluate_bypass() weighs them)
            for r in s.exec(select(RequestRow.requester, RequestRow.target, RequestRow.role, RequestRow.starts_at,
                                   RequestRow.expires_at).where(among(s, RequestRow.requester, people),
                                                                RequestRow.state.in_(OPEN_STATES))):
                holdings[r.requester].append(Holding(r.target, r.role, r.starts_at, r.expires_at))
        decided, rows = [], []
        for i, req, servicenow_approves, facts in wanted:
            person = req.requester
            ctx = Context(groups=self.directory.groups_of(person), holdings=tuple(holdings[person]), ticket=facts)
            decision = evaluate(self.policy, req, ctx)
            allowed = decision.allowed
            servicenow = (self._servicenow_approval(items[i][0], decision)
                          if allowed and servicenow_approves and not decision.auto_approved else None)
            approved = allowed and (decision.auto_approved or bool(servicenow and servicenow[0]))
            row = None
            if allowed:
                row = dict(
                    kind="request", requester=person, target=req.target, role=req.role,
                    environment=decision.environment, tier=decision.tier, backend=decision.backend,
                    params=decision.params, reason=req.reason, ticket=req.ticket, ticket_sys_id=items[i][0].sys_id,
                    state="approved" if approved else "pending", source_ref=sources[i],
                    approval_model="servicenow" if approved and not decision.auto_approved else decision.approval,
                    approver_groups=list(decision.approver_groups), checks=audit.canonical_plain(checks_of(decision)),
                    scheduled=True,
                    duration_s=int(req.duration.total_seconds()), starts_at=req.starts_at,
                    expires_at=req.expires_at, created_at=now, updated_at=now, escalated_at=None,
                    closed_by=None, closed_reason=None, version=1)
                rows.append(row)
                # later requests in this page see it, as they would see it committed
                holdings[person].append(Holding(req.target, req.role, req.starts_at, req.expires_at))
            decided.append((i, req, decision, approved, row, servicenow))
        if rows:  # ids first, then one insert (RETURNING over many rows is slow on psycopg)
            for row, request_id in zip(rows, next_ids(s, RequestRow.__table__, len(rows))):
                row["id"] = request_id
            request_store.create_many(s, rows)
        events = []
        for i, req, decision, approved, row, servicenow in decided:
            duration = format_duration(req.duration)
            if row is None:
                events.append(("servicenow", "request.refused", None, None, dict(
                    target=req.target, role=req.role, requester=req.requester, duration=duration,
                    ticket=req.ticket, checks=checks_of(decision))))
                results[i] = Refused("policy", decision.refusal())
                if not self._servicenow_down(decision, items[i][1]):  # decided: not again for this version
                    mark = refused.get(sources[i]) or TicketDecisionRow(source_ref=sources[i], digest="",
                                                                        decided_at=now)
                    mark.digest, mark.decided_at = items[i][0].digest(), now
                    s.add(mark)
                continue
            more = {} if servicenow is None or servicenow[0] else {"servicenow_approval": servicenow[1]}
            events.append(("servicenow", "request.submitted", row, row["id"], dict(
                target=req.target, role=req.role, duration=duration, ticket=req.ticket,
                approval=decision.approval, checks=row["checks"], **more)))
            if approved and servicenow is not None:
                events.append(("policy", "request.approved", row, row["id"], dict(
                    model=row["approval_model"], reason=servicenow[1], approvers=servicenow[2],
                    authenticated="ServiceNow sysapproval_approver and sys_audit")))
            elif approved:
                events.append(("policy", "request.approved", row, row["id"], dict(model=row["approval_model"],
                                                                                  reason=AUTO_APPROVED)))
            elif servicenow is not None:
                log.info("REQ-%s waits for approvers in jit: %s", row["id"], servicenow[1])
            results[i] = row["id"]
        self._record_many(s, now, events)
        return [row["id"] for _, req, _, approved, row, _ in decided if approved and req.starts_at <= now]

    def _servicenow_approval(self, ticket: Ticket, decision: Decision) -> tuple[bool, str, list[dict]]:
        """Whether ServiceNow's approval of ``ticket`` counts for the tier, why, and who gave it.

        It counts when the change's approved approvers (``sysapproval_approver``, each a person of
        the directory under the same user name) cover the tier's approval model and groups as jit's
        own approvals would (never the assignee, who is the requester; one person once), and none
        of the fields the approval was given for (JIT fields, dates, assignee, group, CI) was
        changed at or after the first of those approvals (``sys_audit``; same-second counts as after;
        the approval times are read only for a change that was edited, see ``approvals_many``)."""
        evidence = ticket.approvals
        if evidence is None:
            return False, f"the approvers of {ticket.number} were not read from ServiceNow", []
        when: dict[str, datetime | None] = {}
        approvers, ignored = [], []
        for user, at in evidence.approvers:
            if at is None and evidence.edits:  # edited: each approval must be placed before the edits
                ignored.append(f"ServiceNow keeps no audit record of when {user} approved")
            else:
                when.setdefault(user, at)
                approvers.append(Approver(user, self.directory.groups_of(user)))
        counted, refused, complete = tally(decision.approval, decision.approver_groups, ticket.assignee or "",
                                           approvers)
        ignored += refused
        if not complete:
            need = approvals_needed(decision.approval, decision.approver_groups)
            gave = ", ".join(a.person for a in counted) or "nobody who counts"
            why = (f"ServiceNow's approval of {ticket.number} does not count: {need} approval(s) from "
                   f"{' and '.join(decision.approver_groups)} are needed and {gave} gave them")
            return False, why + "".join(f"; {m}" for m in ignored), []
        first = min((when[a.person] for a in counted if when[a.person] is not None), default=None)
        late = [(field, at) for field, at in evidence.edits if first is not None and at >= first]
        if late:
            field, at = late[0]
            return False, (f"ServiceNow's approval of {ticket.number} does not count: {field} was changed at "
                           f"{at:%Y-%m-%d %H:%M:%S} UTC, after it was approved at {first:%Y-%m-%d %H:%M:%S} UTC "
                           "(an approval holds only for what it was given for)"), []
        who = [{"person": a.person, "groups": sorted(a.groups & set(decision.approver_groups)),
                "at": when[a.person].isoformat() if when[a.person] else None} for a in counted]
        return True, (f"approved in ServiceNow by {', '.join(a.person for a in counted)}: the approval of "
                      f"{ticket.number} covers this tier's {decision.approval} approval"), who

    def end_for_closed_tickets(self, closed: Iterable[tuple[str, str]], why: str) -> list[int]:
        """These tickets ((number, sys_id)) were closed or cancelled: end the open requests linked to
        them now, each with the note "<number> <why>"; the ids ended. A request is linked by the
        ticket's sys_id, so another ticket carrying the same number ends nothing of it; only a
        request recorded before links were kept (no ticket_sys_id) is matched by number."""
        closed = sorted(set(closed))
        rows = []
        with self.store.transaction() as s:
            for i in range(0, len(closed), 500):
                part = closed[i:i + 500]
                linked = sa.or_(RequestRow.ticket_sys_id.in_([sys_id for _, sys_id in part]),
                                sa.and_(RequestRow.ticket_sys_id.is_(None),
                                        RequestRow.ticket.in_([number for number, _ in part])))
                rows += s.exec(select(RequestRow).where(linked, RequestRow.state.in_(OPEN_STATES))).all()
        ended = []
        for r in sorted({r.id: r for r in rows}.values(), key=lambda r: r.id):
            try:
                self._end_for_ticket(r, f"{r.ticket} {why}")
                ended.append(r.id)
            except Refused as exc:
                log.warning("REQ-%s not ended for closed ticket %s: %s", r.id, r.ticket, exc)
        return ended

    def _end_for_ticket(self, r: RequestRow, reason: str) -> None:
        """What its ticket says ends an open request: an active one revoked, one not started cancelled."""
        if r.state == "active":
            self._end("servicenow", r.id, "revoked", "revoke", reason, lambda row: None)
        else:
            self._close("servicenow", r.id, UNSTARTED, "cancelled", "cancel", reason, lambda row: None)

    def follow_changed_tickets(self, changes: Iterable[Ticket]) -> list[int]:
        """Changes read again that are still open but changed after requests were made from them (or
        citing them): a change rejected, put back to New, or otherwise no longer approved and
        Scheduled or Implement ends its open requests; a window moved so that it starts later than
        now ends an active grant (no access in between; an unstarted request is checked against
        the new window when it would start); a window shortened shortens the grant to its new end.
        Each with its audit event and work note; the request ids changed."""
        by_id = {t.sys_id: t for t in changes if t.table == "change_request" and SYS_ID_RE.fullmatch(t.sys_id or "")}
        if not by_id:
            return []
        with self.store.transaction() as s:
            rows = s.exec(select(RequestRow).where(among(s, RequestRow.ticket_sys_id, set(by_id)),
                                                   RequestRow.state.in_(OPEN_STATES))).all()
        now, changed = self.clock(), []
        for r in sorted(rows, key=lambda r: r.id):
            t = by_id[r.ticket_sys_id]
            if t.closed:
                continue  # ended as a closed ticket
            try:
                if not (t.approval == "approved" and t.state in ("-2", "-1") and t.active):
                    why = (f"{t.number} is no longer approved in ServiceNow (approval '{t.approval}', "
                           f"{CHANGE_STATES.get(t.state, t.state)})")
                elif t.start is None or t.end is None or (r.state == "active" and t.start > now):
                    why = f"the window of {t.number} moved: it starts {t.start:%Y-%m-%d %H:%M} UTC" if t.start else \
                        f"{t.number} has no planned window any more"
                elif r.state == "active" and t.end < r.expires_at:
                    if t.end <= now:
                        why = f"the window of {t.number} now ended at {t.end:%Y-%m-%d %H:%M} UTC"
                    else:
                        self._shorten("servicenow", r.id, t.end, f"the window of {t.number} was shortened to end "
                                                                  f"{t.end:%Y-%m-%d %H:%M} UTC")
                        changed.append(r.id)
                        continue
                else:
                    continue
                self._end_for_ticket(r, why)
                changed.append(r.id)
            except Refused as exc:
                log.warning("REQ-%s not changed for %s: %s", r.id, t.number, exc)
        return changed

    def _shorten(self, actor: str, request_id: int, end: datetime, reason: str) -> None:
        """An active grant ends earlier: the request, the grant and its artifact (sudo's NOTAFTER,
        a membership's TTL) take the new end; the engine then ends it then."""
        now = self.clock()
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            self._expect(row, "active", "shorten")
            grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
            if grant is None or grant.status != "active" or end >= row.expires_at:
                return
            request_store.transition(s, row, "active", now, expires_at=end,
                                     duration_s=max(0, int((end - row.starts_at).total_seconds())))
            grant_store.transition(s, grant, "active", now, expires_at=end)
            self._record(s, at=now, actor=actor, action="request.shortened", request_id=row.id, reason=reason,
                         expires_at=end.isoformat())
            grant_id = grant.id
        self._reapply(grant_id)

    def open_tickets(self) -> list[tuple[str, str | None]]:
        """The tickets open requests depend on: (number, sys_id), sys_id None for a request recorded
        before links were kept."""
        with self.store.transaction() as s:
            return sorted(set(s.exec(select(RequestRow.ticket, RequestRow.ticket_sys_id).where(
                RequestRow.state.in_(OPEN_STATES), RequestRow.ticket.is_not(None))).all()),
                key=lambda t: (t[0], t[1] or ""))

"""What the console shows and does, without Textual: read models and operator actions.

Every method may block (database, ServiceNow, backends): the console calls them from workers.
Actions go through the lifecycle as the operator, so the console refuses exactly what the
lifecycle refuses, with the same rule and reason.

``jit server`` serves these reads under ``/v1/console/...``; ``jit console`` reads them there
(``app.client.console.RemoteConsoleData``). The dataclasses and their JSON form live in
``app.domain.console``, so the client does not import this module's database libraries.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import select

from app.domain.console import ActiveItem, AuditItem, EngineStatus, Health, Operator, QueueItem, clip
from app.domain.errors import NotFound
from app.domain.views import RequestView
from app.queries.exposure import exposure
from app.store import HEARTBEAT_PREFIX, ApprovalRow, AuditEvent, AuditHead, GrantRow, RequestRow, SyncState, audit
from policies import authority
from policies.approvals import approvals_needed
from policies.tickets import state_label

if TYPE_CHECKING:  # the read model is handed the wiring; it never builds it
    from app.bootstrap import Services


def _plain_value(value: Any) -> str:
    """A detail as a person reads it: a list as its items, a mapping as ``key value`` pairs (no
    Python brackets or quotes)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain_value(v) for v in value)
    return str(value)


def _summary(details: str, width: int = 200) -> str:
    try:
        data = json.loads(details)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return clip(details, width)
    keep = {k: v for k, v in data.items() if k not in ("checks",) and v not in (None, "", [], {})}
    if "checks" in data and isinstance(data["checks"], list):
        failed = [c.get("name", "?") for c in data["checks"] if isinstance(c, dict) and not c.get("passed")]
        keep["checks"] = "failed: " + ", ".join(failed) if failed else "all passed"
    return clip("; ".join(f"{k}: {_plain_value(v)}" for k, v in keep.items()), width)


def _audit_item(e: AuditEvent) -> AuditItem:
    return AuditItem(e.seq, e.at, e.actor, e.action, e.request_id, _summary(e.details))


class ConsoleData:
    poll_seconds = 1.0  # how often the console asks change_token() (one row read each time)

    def __init__(self, services: Services, operator: str) -> None:
        self.services = services
        self.lifecycle = services.lifecycle
        self.clock = services.clock
        self.person = operator

    @cached_property
    def operator(self) -> Operator:
        """Who the console is for, with what they may do (asked of the directory once, when first needed)."""
        groups = self.services.directory.groups_of(self.person)
        return Operator(person=self.person, groups=groups,
                        **asdict(authority.capabilities(self.services.policy, groups)))

    # ------------------------------------------------------------------ reads
    def change_token(self) -> int:
        """The audit head's sequence number: every transition anywhere moves it."""
        with self.services.store.transaction() as s:
            head = s.get(AuditHead, 1)
            return head.seq if head else 0

    def queue(self) -> list[QueueItem]:
        with self.services.store.transaction() as s:
            R = RequestRow
            rows = s.execute(sa.select(R.id, R.requester, R.target, R.role, R.environment, R.tier, R.duration_s,
                                       R.ticket, R.created_at, R.escalated_at, R.approval_model,
                                       R.approver_groups, R.checks)  # only what the queue shows
                             .where(R.state == "pending")).all()
            counts: dict[int, list[str]] = {}
            held: dict[tuple[str, str, str], tuple[int, Any]] = {}  # what the requesters hold already
            if rows:
                for rid, who in s.exec(select(ApprovalRow.request_id, ApprovalRow.approver)
                                       .where(ApprovalRow.request_id.in_([r.id for r in rows]))).all():
                    counts.setdefault(rid, []).append(who)
                for h in s.execute(sa.select(R.id, R.requester, R.target, R.role, R.expires_at).where(
                        R.state.in_(("active", "approved")), R.requester.in_({r.requester for r in rows}))).all():
                    key = (h.requester, h.target, h.role)
                    if key not in held or h.expires_at > held[key][1]:
                        held[key] = (h.id, h.expires_at)
        items = []
        for r in rows:
            failed = [c["name"] for c in r.checks if not c.get("passed")]
            needed = approvals_needed(r.approval_model, tuple(r.approver_groups))
            items.append(QueueItem(
                id=r.id, label=f"REQ-{r.id}", requester=r.requester, target=r.target, role=r.role,
                environment=r.environment or "?", tier=r.tier or "?", duration=timedelta(seconds=r.duration_s),
                ticket=r.ticket, created_at=r.created_at, approvals=len(counts.get(r.id, [])), needed=needed,
                approvers=tuple(counts.get(r.id, [])), verdict="pass" if not failed else "fail: " + ", ".join(failed),
                escalated=r.escalated_at is not None, approval_model=r.approval_model,
                approver_groups=tuple(r.approver_groups),
                holding=(f"REQ-{held[k][0]} until {held[k][1]:%m-%d %H:%MZ}"
                         if (k := (r.requester, r.target, r.role)) in held else "")))
        items.sort(key=lambda i: (not i.escalated, i.created_at, i.id))
        return items

    def active(self) -> list[ActiveItem]:
        with self.services.store.transaction() as s:
            rows = s.exec(select(RequestRow, GrantRow).join(GrantRow, GrantRow.request_id == RequestRow.id)
                          .where(RequestRow.state == "active").order_by(GrantRow.expires_at)).all()
        return [ActiveItem(r.id, f"REQ-{r.id}", r.requester, r.target, r.role, r.kind, g.starts_at, g.expires_at,
                           g.backend) for r, g in rows]

    def reviews(self) -> list[RequestView]:
        return self.lifecycle.open_reviews()

    def request(self, request_id: int) -> RequestView:
        return self.lifecycle.get(request_id)

    def history(self, request_id: int) -> list[AuditItem]:
        with self.services.store.transaction() as s:
            events = s.exec(select(AuditEvent).where(AuditEvent.request_id == request_id)
                            .order_by(AuditEvent.seq)).all()
        return [_audit_item(e) for e in events]

    def audit(self, text: str = "", limit: int = 500) -> list[AuditItem]:
        with self.services.store.transaction() as s:
            q = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
            if text:
                like = f"%{text}%"
                q = q.where(sa.or_(AuditEvent.actor.like(like), AuditEvent.action.like(like),
                                   AuditEvent.details.like(like)))
            return [_audit_item(e) for e in s.exec(q).all()]

    def event(self, seq: int) -> dict[str, Any]:
        """One event as ``jit audit export`` writes it (details as recorded, the hashes)."""
        with self.services.store.transaction() as s:
            row = s.get(AuditEvent, seq)
            if row is None:
                raise NotFound("seq", f"there is no audit event {seq}")
            return json.loads(audit.exported(row))

    def audit_status(self) -> tuple[bool, str]:
        with self.services.store.transaction() as s:
            result = audit.verify(s)
        return result.ok, result.message

    def ticket(self, number: str) -> dict[str, Any] | None:
        gateway = self.lifecycle.tickets
        if gateway is None:
            return None
        now = self.clock()
        facts = gateway.facts(number, now, now)
        if facts is None:
            return None
        return {"number": facts.number, "status": facts.status, "state": state_label(facts.kind, facts.state or ""),
                "approval": facts.approval,
                "start": facts.start, "end": facts.end, "assignee": facts.assignee, "group": facts.group_name,
                "error": facts.error}

    def _engines(self) -> tuple[tuple[str, Any], ...]:
        with self.services.store.transaction() as s:
            beats = s.exec(select(SyncState).where(SyncState.name.like(f"{HEARTBEAT_PREFIX}%"))).all()
        return tuple((b.name.removeprefix(HEARTBEAT_PREFIX), b.last_run_at) for b in beats if b.last_run_at)

    def _alive(self, engines: tuple[tuple[str, Any], ...]) -> bool:
        poll = self.services.config.settings.engine.poll_interval
        return any(seen >= self.clock() - 3 * poll for _, seen in engines)

    def engine_status(self) -> EngineStatus:
        """For the console's header: one query, where ``health()`` also verifies the audit chain."""
        engines = self._engines()
        return EngineStatus(self._alive(engines), max((seen for _, seen in engines), default=None))

    def health(self) -> Health:
        now = self.clock()
        engines = self._engines()
        with self.services.store.transaction() as s:
            sync = s.get(SyncState, "servicenow")
        alive = self._alive(engines)
        e = exposure(self.services.store, self.services.policy, self.services.directory, now)
        ok, message = self.audit_status()
        return Health(
            engine_running=alive, engines=engines, sync_enabled=self.services.sync is not None,
            sync_last_run=sync.last_run_at if sync else None, sync_last_ok=sync.last_ok_at if sync else None,
            sync_watermark=sync.watermark if sync else None, sync_behind_s=sync.behind_s if sync else None,
            sync_errors=tuple(sync.errors or ()) if sync else (), elevated_now=e.elevated_now, eligible=e.eligible,
            privilege_hours_7d=e.privilege_hours_7d, bypasses_awaiting_review=e.bypasses_awaiting_review,
            audit_ok=ok, audit_message=message)

    def bypass_choices(self) -> list[tuple[str, str]]:
        return [(t, r) for t, target in sorted(self.services.policy.targets.items()) for r in sorted(target.roles)]

    # ---------------------------------------------------------------- actions
    def approve(self, request_id: int, comment: str = "") -> str:
        return self._said(self.lifecycle.approve(self.person, request_id, comment))

    def deny(self, request_id: int, reason: str) -> str:
        return self._said(self.lifecycle.deny(self.person, request_id, reason))

    def revoke(self, request_id: int, reason: str) -> str:
        return self._said(self.lifecycle.revoke(self.person, request_id, reason))

    def extend(self, request_id: int, by: timedelta, reason: str) -> str:
        return self._said(self.lifecycle.extend(self.person, request_id, by, reason))

    def bypass(self, target: str, role: str, duration: timedelta, incident: str, reason: str) -> str:
        return self._said(self.lifecycle.bypass(self.person, target, role, duration, incident, reason))

    def review(self, request_id: int, outcome: str, comment: str) -> str:
        return self._said(self.lifecycle.review(self.person, request_id, outcome, comment))

    @staticmethod
    def _said(outcome: Any) -> str:
        return " ".join([outcome.message, *outcome.notes])


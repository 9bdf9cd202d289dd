"""Which messages an audit event owes the outside (ServiceNow work notes, change records, webhooks),
as outbox rows written in the event's own transaction; ``app/jobs/outbox.py`` delivers them."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from app.store import AuditEvent, RequestRow, audit
from integrations.servicenow.model import NUMBER_RE


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if isinstance(value, datetime) else str(value)


def _note(event: AuditEvent, row: RequestRow | None, d: dict[str, Any]) -> str | None:
    """The work note for an event, or None when the event is not reported to the ticket."""
    if row is None:
        if event.action == "request.refused" and d.get("ticket"):
            failed = "; ".join(f"{c['name']}: {c['message']}" for c in d.get("checks", []) if not c["passed"])
            return (f"JIT access request by {d.get('requester') or event.actor} for {d.get('role')} on "
                    f"{d.get('target')} was refused "
                    f"by policy. Failing checks: {failed}")
        return None
    who = f"{row.requester} on {row.target} ({row.role})"
    label = f"JIT REQ-{row.id}"
    if event.action == "grant.active":
        return (f"{label}: Access granted to {who} until {_when(row.expires_at)}; session recorded "
                f"(sudo I/O log).")
    if event.action == "request.refused":  # looked at again at approval or activation
        failed = "; ".join(f"{c['name']}: {c['message']}" for c in d.get("checks", []) if not c["passed"])
        return (f"{label}: Access request for {who} was refused by policy at {d.get('stage')}. "
                f"Failing checks: {failed}")
    if event.action == "request.denied":
        return f"{label}: Access request for {who} denied by {event.actor}: {d.get('reason')}"
    if event.action in ("request.revoked", "request.expired", "request.released"):
        verb = {"request.revoked": f"revoked by {event.actor}: {d.get('reason')}",
                "request.expired": "expired and was removed", "request.released": "released by the requester "
                "(task completed) and was removed"}[event.action]
        return f"{label}: Access for {who} {verb}."
    if event.action == "request.shortened":
        return f"{label}: Access for {who} now ends {_when(row.expires_at)}: {d.get('reason')}."
    if event.action == "bypass.reviewed":
        return (f"{label}: Emergency bypass by {row.requester} reviewed by {event.actor}: "
                f"{d.get('outcome')} ({d.get('comment')}).")
    if event.action == "ticket.linked":
        if row.kind == "bypass":
            return f"{label}: Change {d.get('change')} opened for the emergency bypass by {row.requester}."
        return (f"{label}: Change opened by JIT for access by {who}; the request is {row.state}, "
                f"window {_when(row.starts_at)} .. {_when(row.expires_at)}.")
    return None


def _webhook(event: AuditEvent, row: RequestRow | None, d: dict[str, Any]) -> str | None:
    if row is None:
        return None
    what = f"REQ-{row.id} {row.requester} -> {row.role} on {row.target}"
    if event.action == "request.submitted" and row.state == "pending":
        return (f":lock: {what} needs {row.approval_model} approval from {' and '.join(row.approver_groups)} "
                f"(reason: {row.reason})")
    if event.action == "request.escalated":
        return f":warning: {what} has waited {d.get('waited')} for approval: escalated"
    if event.action == "bypass.used":
        return f":rotating_light: EMERGENCY BYPASS {what} for incident {row.ticket}: {row.reason}"
    if event.action == "grant.expiring":
        return f":hourglass: {what} expires at {_when(row.expires_at)}"
    if event.action == "grant.revoke_failed" and _power_of_two(d.get("attempts")):  # 1, 2, 4, 8...: no flood
        return (f":rotating_light: REVOKE FAILING {what}: still present on {row.backend} after "
                f"{d.get('attempts')} attempt(s), retrying: {d.get('error')}")
    if event.action == "grant.failed":
        return f":x: {what} could not be applied on {row.backend}: {d.get('error')}"
    return None


def _power_of_two(n: Any) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def entries(event: AuditEvent | audit.Appended, row: RequestRow | None, details: dict[str, Any], *,
            servicenow: bool, webhook: bool, create_change: bool) -> list[dict[str, Any]]:
    """The outbox rows an audit event owes, as column values (``OutboxRow(**values)``)."""
    out = []

    def owed(key: str, channel: str, request_id: int | None, payload: dict, ticket: str | None = None) -> None:
        out.append({"key": key, "channel": channel, "request_id": request_id, "ticket": ticket,
                    "payload": payload, "next_attempt_at": event.at, "created_at": event.at})
    ticket = (row.ticket if row is not None else details.get("ticket")) or None
    if servicenow and ticket and NUMBER_RE.fullmatch(ticket):
        text = _note(event, row, details)
        if text:
            marker = f"[jit:{'req-%d.' % row.id if row else ''}ev-{event.seq}]"
            owed(f"sn:{event.seq}", "servicenow", event.request_id, {"text": text, "marker": marker}, ticket)
    if servicenow and create_change and row is not None and event.action in ("request.submitted", "bypass.used") \
            and (row.kind == "bypass" or not row.ticket):
        owed(f"chg:{row.id}", "create_change", row.id, {"marker": f"[jit:req-{row.id}.change]"})
    if webhook:
        text = _webhook(event, row, details)
        if text:
            owed(f"wh:{event.seq}", "webhook", event.request_id,
                 {"text": text, "event": event.action, "request_id": event.request_id})
    return out

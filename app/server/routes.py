"""Every ``/v1`` route, as one table: method, path, what it does, the body or query model it takes.
The table is what aiohttp serves (``api.make_app``) and what ``/v1/openapi.json`` describes
(``openapi.py``), so the two cannot drift.

Each use-case runs in the API's thread pool inside ``acting(principal)``: the lifecycle decides
(who may approve, deny, revoke...) exactly as it did for the CLI, and the audit records how the
person was authenticated."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from app.domain.console import ticket_to_json
from app.domain.errors import BadInput, Refused
from app.domain.inputs import MAX_ID, check_text
from app.domain.principal import Principal
from app.domain.times import iso
from app.queries import audit as audit_queries
from app.queries.console import ConsoleData
from app.queries.exposure import exposure
from app.server import bodies as b
from policies import authority

if TYPE_CHECKING:
    from app.bootstrap import Services


@dataclass(frozen=True)
class Call:
    """What a handler gets: the services, who is calling, the request id of the path (if any),
    the validated body or query, the ticket number of the path (if any)."""

    sv: Services
    who: Principal
    id: int | None
    body: Any
    number: str | None = None

    @property
    def person(self) -> str:
        return self.who.person


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    run: Callable[[Call], Any] | None  # None: served by its own aiohttp handler (streams)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    content: str = "application/json"

    @property
    def operation_id(self) -> str:
        return self.method.lower() + "".join(
            part.strip("{}").replace("-", "_").title().replace("_", "") for part in self.path.split("/")[2:])


def request_id(text: str) -> int:
    number = text.removeprefix("REQ-").removeprefix("req-")
    if not (number.isdigit() and 0 < int(number) <= MAX_ID):
        raise BadInput("id", f"{text[:40]!r} is not a request id (REQ-42 or 42)")
    return int(number)


def ticket_number(text: str) -> str:
    return check_text("number", text, required=True, limit=64) or ""


# --------------------------------------------------------------- handlers
def whoami(c: Call) -> dict:
    groups = c.sv.directory.groups_of(c.person)
    caps = authority.capabilities(c.sv.policy, groups)
    return {"person": c.person, "authenticated_by": c.who.how, "groups": sorted(groups),
            "capabilities": asdict(caps)}


def list_requests(c: Call) -> dict:
    q: b.ListQuery = c.body
    views = c.sv.lifecycle.list(state=q.state, requester=c.person if q.mine else q.requester,
                                limit=q.limit, before=q.before)
    return {"items": [v.to_json() for v in views],
            "next": views[-1].id if len(views) == q.limit else None}


def show(c: Call) -> dict:
    return c.sv.lifecycle.get(c.id).to_json()


def submit(c: Call) -> dict:
    x: b.Submit = c.body
    return c.sv.lifecycle.submit(c.person, x.target, x.role, x.duration, x.reason, x.ticket, x.start).to_json()


def explain(c: Call) -> dict:
    x: b.Explain = c.body
    d = c.sv.lifecycle.preview(c.person, x.target, x.role, x.duration, x.reason, x.ticket, x.start)
    return {"person": c.person, "allowed": d.allowed, "auto_approved": d.auto_approved, "approval": d.approval,
            "approver_groups": list(d.approver_groups), "environment": d.environment, "tier": d.tier,
            "checks": [{"name": k.name, "passed": k.passed, "message": k.message} for k in d.checks]}


def approve(c: Call) -> dict:
    return c.sv.lifecycle.approve(c.person, c.id, c.body.comment).to_json()


def deny(c: Call) -> dict:
    return c.sv.lifecycle.deny(c.person, c.id, c.body.reason).to_json()


def cancel(c: Call) -> dict:
    return c.sv.lifecycle.cancel(c.person, c.id).to_json()


def release(c: Call) -> dict:
    return c.sv.lifecycle.release(c.person, c.id).to_json()


def revoke(c: Call) -> dict:
    return c.sv.lifecycle.revoke(c.person, c.id, c.body.reason).to_json()


def extend(c: Call) -> dict:
    return c.sv.lifecycle.extend(c.person, c.id, c.body.by, c.body.reason).to_json()


def review(c: Call) -> dict:
    return c.sv.lifecycle.review(c.person, c.id, c.body.outcome, c.body.comment).to_json()


def clear_violation(c: Call) -> dict:
    return c.sv.lifecycle.clear_violation(c.person, c.id, c.body.comment).to_json()


def bypass(c: Call) -> dict:
    x: b.Bypass = c.body
    return c.sv.lifecycle.bypass(c.person, x.target, x.role, x.duration, x.incident, x.reason).to_json()


def credentials(c: Call) -> dict:
    return c.sv.lifecycle.aws_credentials(c.person, c.id)


def audit_verify(c: Call) -> dict:
    v = audit_queries.verify(c.sv.store)
    return {"ok": v.ok, "events": v.events, "message": v.message, "first_broken": v.first_broken}


def audit_head(c: Call) -> dict:
    return {"seq": audit_queries.newest_seq(c.sv.store)}


def stats(c: Call) -> dict:
    e = exposure(c.sv.store, c.sv.policy, c.sv.directory, c.sv.clock())
    return {**asdict(e), "ratio": round(e.ratio, 4)}


def reconcile(c: Call) -> dict:
    sv, person = c.sv, c.person
    if c.body.fix and (refusal := authority.may_fix_drift(sv.policy, person, sv.directory.groups_of(person))):
        raise Refused("reconcile", refusal)
    if sv.reconciler is None:
        raise Refused("reconcile", "no backend in this configuration can be reconciled")
    return {"findings": [asdict(f) for f in sv.reconciler.run(fix=c.body.fix, actor=person)]}


def sync_status(c: Call) -> dict:
    sv = c.sv
    if sv.sync is None:
        return {"enabled": False}
    state = sv.sync.status()
    catch_up = sv.sync.last_catch_up()
    return {"enabled": True, "last_run_at": iso(state.last_run_at) if state else None,
            "last_ok_at": iso(state.last_ok_at) if state else None,
            "watermark": iso(state.watermark) if state else None,
            "behind_s": state.behind_s if state else None, "processed": state.processed if state else 0,
            "last_error": state.last_error if state else None,
            "recent_errors": list(state.errors) if state else [],
            "circuit": sv.tickets.client.breaker.state if sv.tickets else None,
            "last_catch_up": json.loads(json.dumps(catch_up, default=iso)) if catch_up else None}


# ---------------------------------------------------- the console's read models
def _console(c: Call) -> ConsoleData:
    return ConsoleData(c.sv, c.person)


def console_queue(c: Call) -> dict:
    return {"items": [i.to_json() for i in _console(c).queue()]}


def console_active(c: Call) -> dict:
    return {"items": [i.to_json() for i in _console(c).active()]}


def console_engines(c: Call) -> dict:
    return _console(c).engine_status().to_json()


def console_reviews(c: Call) -> dict:
    return {"items": [v.to_json() for v in _console(c).reviews()]}


def history(c: Call) -> dict:
    return {"items": [i.to_json() for i in _console(c).history(c.id)]}


def console_audit(c: Call) -> dict:
    q: b.ConsoleAuditQuery = c.body
    return {"items": [i.to_json() for i in _console(c).audit(q.text, q.limit)]}


def console_event(c: Call) -> dict:
    return _console(c).event(c.body.seq)


def console_health(c: Call) -> dict:
    return _console(c).health().to_json()


def console_bypass_choices(c: Call) -> dict:
    return {"items": [[target, role] for target, role in _console(c).bypass_choices()]}


def console_settings(c: Call) -> dict:
    return {"keys": dict(c.sv.config.settings.console.keys)}


def ticket(c: Call) -> dict:
    return {"ticket": ticket_to_json(_console(c).ticket(c.number))}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/whoami", "Who the server says you are, how that was proven, your groups", whoami),
    Route("GET", "/v1/requests", "Requests, newest first, with filters and paging", list_requests,
          query=b.ListQuery),
    Route("POST", "/v1/requests", "Ask for elevation (policy decides; approval may follow)", submit,
          body=b.Submit, status=201),
    Route("GET", "/v1/requests/{id}", "One request with its checks, approvals, grant and review", show),
    Route("POST", "/v1/requests/{id}/approve", "Approve a pending request", approve, body=b.Approve),
    Route("POST", "/v1/requests/{id}/deny", "Deny a pending request", deny, body=b.WithReason),
    Route("POST", "/v1/requests/{id}/cancel", "Cancel your own pending or scheduled request", cancel,
          body=b.Empty),
    Route("POST", "/v1/requests/{id}/release", "Task done: de-elevate now", release, body=b.Empty),
    Route("POST", "/v1/requests/{id}/revoke", "Operator: end someone's elevation now", revoke, body=b.WithReason),
    Route("POST", "/v1/requests/{id}/extend", "Extend an elevation (policy is evaluated again)", extend,
          body=b.Extend),
    Route("POST", "/v1/requests/{id}/review", "Security operator: review an emergency bypass", review,
          body=b.Review),
    Route("POST", "/v1/requests/{id}/review/clear",
          "Security operator: let the person of a bypass reviewed as a violation bypass again", clear_violation,
          body=b.WithComment),
    Route("POST", "/v1/requests/{id}/credentials", "STS credentials for your active AWS role grant",
          credentials, body=b.Empty),
    Route("POST", "/v1/bypass", "Emergency: elevate at once (on-call only), reviewed afterwards", bypass,
          body=b.Bypass, status=201),
    Route("POST", "/v1/policy/explain", "The whole decision for a request, without submitting it", explain,
          body=b.Explain),
    Route("GET", "/v1/audit/verify", "Check the audit hash chain; names the first broken event", audit_verify),
    Route("GET", "/v1/audit/head", "The newest audit sequence number (follow /v1/events after it)", audit_head),
    Route("GET", "/v1/audit/export", "Every audit event after a sequence number, as JSON lines", None,
          query=b.AfterQuery, content="application/x-ndjson"),
    Route("GET", "/v1/events", "New audit events as Server-Sent Events, resumable by sequence number", None,
          query=b.AfterQuery, content="text/event-stream"),
    Route("GET", "/v1/stats", "Exposure now: who holds elevated access against who could", stats),
    Route("POST", "/v1/reconcile", "Drift between grants and backends; fix it (security operators)", reconcile,
          body=b.Reconcile),
    Route("GET", "/v1/sync/status", "The ServiceNow sync: last run, watermark, recent errors", sync_status),
    Route("GET", "/v1/requests/{id}/history", "One request's audit events, oldest first", history),
    Route("GET", "/v1/tickets/{number}", "A ServiceNow ticket as the policy sees it (null: ServiceNow is off)",
          ticket),
    Route("GET", "/v1/console/queue", "Pending requests for the console, escalated first, then oldest",
          console_queue),
    Route("GET", "/v1/console/active", "Active grants for the console, soonest expiry first", console_active),
    Route("GET", "/v1/console/reviews", "Emergency bypasses awaiting review", console_reviews),
    Route("GET", "/v1/console/audit", "Audit events, newest first, filtered by text in actor, action or details",
          console_audit, query=b.ConsoleAuditQuery),
    Route("GET", "/v1/console/event", "One audit event in full (its details as recorded), by sequence number",
          console_event, query=b.AuditEventQuery),
    Route("GET", "/v1/console/engines", "Whether an engine was heard from lately, and when one last was",
          console_engines),
    Route("GET", "/v1/console/health", "Engines' heartbeats, the ServiceNow sync, exposure, the audit chain",
          console_health),
    Route("GET", "/v1/console/bypass-choices", "The (target, role) pairs an emergency bypass may name",
          console_bypass_choices),
    Route("GET", "/v1/console/settings", "The console's key bindings from the server's [console] keys",
          console_settings),
    Route("GET", "/v1/agent/hosts/{host}/grants", "A host's agent: the grants its host should hold, once they "
          "differ from the version it knows (a long poll)", None, query=b.AgentPoll),
    Route("PUT", "/v1/agent/hosts/{host}/held", "A host's agent: what its host holds now, what it removed, refused "
          "and the sudo sessions it ended", None, body=b.AgentReport),
    Route("GET", "/v1/openapi.json", "This API, described as OpenAPI 3.1", None),
)

"""One request in full: checks, approvals, grant, review, history from the audit chain, ServiceNow's ticket."""
from __future__ import annotations

from typing import Any, Iterable

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from app.domain.views import RequestView
from app.domain.console import AuditItem
from app.tui import formatting as fmt
from app.tui.screens.base import Chrome, ConsoleScreen
from policies.approvals import approvals_needed

TICKET_FIELDS = (("status", "status"), ("state", "state"), ("approval", "approval"), ("start", "start"),
                 ("end", "end"), ("assignee", "assignee"), ("group", "group"))


class DetailScreen(ConsoleScreen):
    """The request behind a row. The ticket is looked up in its own worker: it may be slow or unavailable."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the list"),
        Binding("a", "approve", "Approve", id="approve", tooltip="Approve this request"),
        Binding("d", "deny", "Deny", id="deny", tooltip="Deny this request, with a reason"),
        Binding("r", "revoke", "Revoke", id="revoke", tooltip="End this grant now, with a reason"),
        Binding("e", "extend", "Extend", id="extend", tooltip="Extend this grant (policy checks run again)"),
        Binding("y", "justified", "Justified", id="justified", tooltip="Review this bypass as justified"),
        Binding("v", "violation", "Violation", id="violation", tooltip="Review this bypass as a violation"),
        Binding("t", "ticket", "Ticket", id="ticket", tooltip="Look the ticket up in ServiceNow again"),
    ]

    AUTO_FOCUS = "#detail-body"

    def __init__(self, data: Any, chrome: Chrome, request_id: int) -> None:
        super().__init__(data, chrome)
        self.request_id = request_id
        self.view: RequestView | None = None

    def body(self) -> Iterable[Widget]:
        with VerticalScroll(id="detail-body"):
            with Vertical(classes="column"):
                yield Static(f"REQ-{self.request_id}: loading…", id="detail-summary")
                yield self._panel("checks", "Checks")
                yield self._panel("approvals", "Approvals")
                yield self._panel("grant", "Grant and review")
            with Vertical(classes="column"):
                yield self._panel("ticket", "Ticket in ServiceNow")
                yield self._panel("history", "History (audit chain)")

    @staticmethod
    def _panel(key: str, title: str) -> Static:
        panel = Static("loading…", id=f"detail-{key}", classes="panel")
        panel.border_title = title
        return panel

    # ------------------------------------------------------------ loading
    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def reload(self) -> None:
        view = self.data.request(self.request_id)
        history = self.data.history(self.request_id)
        self.app.call_from_thread(self._show, view, history)

    @work(thread=True, exclusive=True, group="ticket", exit_on_error=False)
    def load_ticket(self, number: str) -> None:
        self.app.call_from_thread(self._show_ticket, number, self.data.ticket(number), None)

    def worker_failed(self, group: str, error: BaseException) -> None:
        if group == "ticket" and self.view is not None and self.view.ticket:
            # An outage is a state to show, not a crash. The ticket asked for is the view's: a
            # request's ticket is fixed when it is submitted.
            self._show_ticket(self.view.ticket, None, f"{type(error).__name__}: {error}")
        else:
            self.failed(f"REQ-{self.request_id}", error)

    def _show(self, view: RequestView, history: list[AuditItem]) -> None:
        first = self.view is None
        self.view = view
        self._summary(view)
        self._checks(view)
        self._approvals(view)
        self._grant(view)
        lines = Text()
        for e in history:
            lines.append(f"{fmt.stamp(e.at)} ", style="dim")
            lines.append(f"{e.actor} ", style="bold")
            lines.append(f"{e.action}")
            if e.summary:
                lines.append(f"  {e.summary}", style="italic")
            lines.append("\n")
        lines.rstrip()
        self.query_one("#detail-history", Static).update(lines if history else Text("no events"))
        if first:
            if view.ticket:
                self._show_ticket(view.ticket, None, None, loading=True)
                self.load_ticket(view.ticket)
            else:
                self.query_one("#detail-ticket", Static).update("no ticket on this request")
        self.refresh_bindings()

    def _summary(self, v: RequestView) -> None:
        colours = self.app.theme_variables
        text = Text()
        text.append(f"{v.label} ", style="bold")
        text.append(f"[{v.state.upper()}]", style=f"bold {colours.get('accent', 'blue')}")
        if v.kind == "bypass":
            text.append(" EMERGENCY BYPASS", style=f"bold {colours.get('error', 'red')}")
        if v.escalated_at:
            text.append(f" ! escalated {fmt.stamp(v.escalated_at)}", style=f"bold {colours.get('warning', 'yellow')}")
        text.append(f"\n{v.requester} asks for {v.role} on {v.target} ({fmt.env_risk(v.environment, v.tier)}), "
                    f"{fmt.duration(v.expires_at - v.starts_at)}: {fmt.stamp(v.starts_at)} to {fmt.stamp(v.expires_at)}")
        text.append(f"\nreason: {v.reason}")
        text.append(f"\nticket: {v.ticket or '-'} · submitted {fmt.stamp(v.created_at)}")
        if v.closed_by or v.closed_reason:
            text.append(f"\nclosed by {v.closed_by or '-'}: {v.closed_reason or '-'}")
        self.query_one("#detail-summary", Static).update(text)

    def _checks(self, v: RequestView) -> None:
        colours = self.app.theme_variables
        text = Text()
        for i, check in enumerate(v.checks):
            passed = bool(check.get("passed"))
            mark, colour = ("✓ pass", colours.get("success", "green")) if passed else ("✗ FAIL", colours.get("error", "red"))
            if i:
                text.append("\n")
            text.append(mark, style=f"bold {colour}")
            text.append(f" {check.get('name', '?')}: ", style="bold")
            text.append(str(check.get("message", "")))
        failed = sum(1 for c in v.checks if not c.get("passed"))
        panel = self.query_one("#detail-checks", Static)
        panel.border_title = f"Checks: {len(v.checks) - failed} of {len(v.checks)} passed"
        panel.update(text if v.checks else Text("no checks recorded"))

    def _approvals(self, v: RequestView) -> None:
        text = Text(f"model: {v.approval_model}; approvers from: {', '.join(v.approver_groups) or '-'}")
        for a in v.approvals:
            text.append(f"\n✓ {a.approver} ({', '.join(a.groups)}) at {fmt.stamp(a.at)}")
            if a.comment:
                text.append(f": {a.comment!r}", style="italic")
        if not v.approvals:
            text.append("\nno approvals yet")
        panel = self.query_one("#detail-approvals", Static)
        needed = approvals_needed(v.approval_model, tuple(v.approver_groups))
        panel.border_title = f"Approvals: {len(v.approvals)} of {needed}"
        panel.update(text)

    def _grant(self, v: RequestView) -> None:
        text = Text()
        if v.grant:
            g = v.grant
            text.append(f"grant {g.id} {g.status} on {g.backend}; {fmt.stamp(g.starts_at)} to {fmt.stamp(g.expires_at)}")
            if g.applied_at:
                text.append(f"\napplied {fmt.stamp(g.applied_at)}")
            if g.revoked_at:
                text.append(f"\nended {fmt.stamp(g.revoked_at)}")
            if g.last_error:
                text.append(f"\n! last error: {g.last_error}")
        else:
            text.append("no grant yet")
        if v.review:
            r = v.review
            text.append(f"\npost-hoc review: {r.get('state')}")
            if r.get("reviewer"):
                text.append(f" by {r['reviewer']}: {r.get('comment') or ''}")
        self.query_one("#detail-grant", Static).update(text)

    def _show_ticket(self, number: str, ticket: dict[str, Any] | None, error: str | None,
                     loading: bool = False) -> None:
        panel = self.query_one("#detail-ticket", Static)
        panel.border_title = f"Ticket {number} in ServiceNow"
        colours = self.app.theme_variables
        bad = f"bold {colours.get('error', 'red')}"
        if loading:
            panel.update(Text("loading… (asking ServiceNow)", style="italic"))
        elif error is not None:
            panel.update(Text.assemble(("✗ ServiceNow unavailable", bad), f"\n{error}"))
        elif ticket is None:
            panel.update("not looked up: ServiceNow is not configured")
        elif ticket.get("status") == "unavailable":
            panel.update(Text.assemble(("✗ ServiceNow unavailable", bad), f"\n{ticket.get('error') or ''}"))
        elif ticket.get("status") == "missing":
            panel.update(Text.assemble(("✗ not found", bad), f": ServiceNow has no ticket {number}"))
        else:
            text = Text()
            for key, label in TICKET_FIELDS:
                value = ticket.get(key)
                if hasattr(value, "strftime"):
                    value = fmt.stamp(value)
                text.append(f"{label:<9}", style="bold")
                text.append(f"{value if value not in (None, '') else '-'}\n")
            panel.update(text)

    # ------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        states = {"approve": ("pending",), "deny": ("pending",), "revoke": ("active", "approved"),
                  "extend": ("active", "approved")}
        if action in states or action in ("justified", "violation"):
            if not self.offered(action):
                return False
            v = self.view
            if v is None:
                return None
            if action in states:
                return v.state in states[action]
            return bool(v.review and v.review.get("state") == "open")
        if action == "ticket":
            return bool(self.view and self.view.ticket)
        return True

    def _act(self, action: str) -> None:
        v = self.view
        if v is not None:
            self.request_action(action, v.id, f"{v.requester} · {v.role} on {v.target} · {v.state} · "
                                              f"{fmt.stamp(v.starts_at)} to {fmt.stamp(v.expires_at)}")

    def action_approve(self) -> None:
        self._act("approve")

    def action_deny(self) -> None:
        self._act("deny")

    def action_revoke(self) -> None:
        self._act("revoke")

    def action_extend(self) -> None:
        self._act("extend")

    def action_justified(self) -> None:
        self._act("justified")

    def action_violation(self) -> None:
        self._act("violation")

    def action_ticket(self) -> None:
        if self.view and self.view.ticket:
            self._show_ticket(self.view.ticket, None, None, loading=True)
            self.load_ticket(self.view.ticket)

    def action_back(self) -> None:
        self.dismiss()

"""The command palette (ctrl+p): every console action by name, "Approve REQ-42", "Open audit log", ..."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from app.tui import formatting as fmt
from policies.authority import offered

if TYPE_CHECKING:
    from app.tui.console import JitConsole


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[], object]


class ConsoleCommands(Provider):
    """Navigation, plus one command per action the operator is offered on each open request.

    The requests are read once per palette opening, in a worker (never on the UI thread)."""

    async def startup(self) -> None:
        app: JitConsole = self.app  # type: ignore[assignment]
        self.commands: list[Command] = list(self._navigation(app))
        worker = app.run_worker(self._snapshot, thread=True, group="palette", exit_on_error=False)
        try:
            queue, active, reviews = await worker.wait()
        except Exception:  # noqa: BLE001 - the palette still offers navigation
            return
        self.commands += self._requests(app, queue, active, reviews)

    def _snapshot(self) -> tuple[list, list, list]:
        data = self.app.data  # type: ignore[attr-defined]
        return data.queue(), data.active(), data.reviews()

    @staticmethod
    def _navigation(app: "JitConsole"):
        yield Command("Open queue", "Pending requests, most urgent first", partial(app.action_view, "queue"))
        yield Command("Open active grants", "Live countdown to expiry", partial(app.action_view, "grants"))
        yield Command("Open reviews", "Emergency bypasses awaiting review", partial(app.action_view, "reviews"))
        yield Command("Open audit log", "The hash-chained audit log and its verification",
                      partial(app.action_view, "audit"))
        yield Command("Open health", "Engine, ServiceNow sync, exposure, audit chain", partial(app.action_view, "health"))
        yield Command("Show keys", "Every key of this screen and the app", app.action_help)
        if offered(app.operator, "bypass"):
            yield Command("Emergency bypass", "Elevate at once for an incident; reviewed afterwards",
                          app.action_bypass)

    @staticmethod
    def _requests(app: "JitConsole", queue, active, reviews) -> list[Command]:
        op = app.operator
        out: list[Command] = []
        for item in queue:
            about = (f"{item.requester}: {item.role} on {item.target}, {fmt.duration(item.duration)}, "
                     f"{item.approvals}/{item.needed} approvals")
            out.append(Command(f"Open {item.label}", about, partial(app.open_request, item.id)))
            for action in ("approve", "deny"):
                if offered(op, action):
                    out.append(Command(f"{action.capitalize()} {item.label}", about,
                                       partial(app.start_action, action, item.id, about)))
        for grant in active:
            about = f"{grant.requester}: {grant.role} on {grant.target} until {fmt.stamp(grant.expires_at)}"
            out.append(Command(f"Open {grant.label}", about, partial(app.open_request, grant.id)))
            for action in ("revoke", "extend"):
                if offered(op, action):
                    out.append(Command(f"{action.capitalize()} {grant.label}", about,
                                       partial(app.start_action, action, grant.id, about)))
        for view in reviews:
            about = f"{view.requester}: bypass to {view.role} on {view.target} under {view.ticket or '-'}"
            for action in ("justified", "violation"):
                if offered(op, action):
                    out.append(Command(f"Review {view.label}: {action}", about,
                                       partial(app.start_action, action, view.id, about)))
        return out

    async def discover(self) -> Hits:
        for c in self.commands:
            yield DiscoveryHit(c.name, c.run, help=c.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for c in self.commands:
            score = matcher.match(c.name)
            if score > 0:
                yield Hit(score, matcher.highlight(c.name), c.run, text=c.name, help=c.help)

"""Emergency bypasses awaiting their post-hoc review: justified or violation, with a comment."""
from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from app.domain.views import RequestView
from app.tui import formatting as fmt
from app.tui.screens.base import RowScreen
from app.tui.widgets.keyed_table import KeyedTable

COLUMNS = (
    ("id", "Request", 9), ("requester", "Bypassed by", None), ("target", "Target", None), ("role", "Role", None),
    ("incident", "Incident", None), ("state", "State", None), ("at", "At (UTC)", 12), ("reason", "Reason", None),
)
REASON_WIDTH = 40


class ReviewsScreen(RowScreen):
    """Bypasses awaiting review. ``j`` marks one justified, ``v`` a violation; never one's own (the lifecycle says)."""

    VIEW = "reviews"
    LOADS = {"reviews": "the reviews"}
    ROW_ACTIONS = ('justified', 'violation')
    BINDINGS = [
        Binding("enter", "open", "Open", id="open", show=False, tooltip="Open the bypass: checks and history"),
        Binding("y", "justified", "Justified", id="justified",
                tooltip="Review the highlighted bypass as justified, with a comment"),
        Binding("v", "violation", "Violation", id="violation",
                tooltip="Review the highlighted bypass as a policy violation, with a comment"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[RequestView] = []

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="reviews-status", classes="status")
        yield KeyedTable(COLUMNS, id="reviews-table")


    @work(thread=True, exclusive=True, group="reviews", exit_on_error=False)
    def reload(self) -> None:
        self.app.call_from_thread(self._show, self.data.reviews())

    def _show(self, items: list[RequestView]) -> None:
        self.items = sorted(items, key=lambda r: (r.created_at, r.id))
        self.by_key = {str(r.id): r for r in self.items}
        self.table.sync(list(self.by_key), self._cells_of)
        who = "" if self.operator.can_review else " · you are not a reviewer: view only"
        self.query_one("#reviews-status", Static).update(
            Text(f"{len(self.items)} bypass(es) awaiting review, oldest first{who}"))
        self.refresh_bindings()

    def _cells_of(self, key: str) -> list[Text]:
        r = self.by_key[key]
        return [Text(r.label), Text(r.requester), Text(r.target), Text(r.role), Text(r.ticket or "-"), Text(r.state),
                Text(fmt.short_stamp(r.created_at)), Text(fmt.clip(r.reason, REASON_WIDTH))]

    def _summary(self, r: RequestView) -> str:
        return (f"{r.requester} bypassed to {r.role} on {r.target} under {r.ticket or '-'} at "
                f"{fmt.stamp(r.created_at)}: {r.reason!r}")

    def action_justified(self) -> None:
        if r := self.current():
            self.request_action("justified", r.id, self._summary(r))

    def action_violation(self) -> None:
        if r := self.current():
            self.request_action("violation", r.id, self._summary(r))


"""Emergency bypasses awaiting their post-hoc review: justified or violation, with a comment."""
from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import DataTable, Static

from app.lifecycle import RequestView
from app.tui import formatting as fmt
from app.tui.screens.base import ConsoleScreen
from app.tui.widgets.keyed_table import KeyedTable

COLUMNS = (
    ("id", "Request", 9), ("requester", "Bypassed by", None), ("target", "Target", None), ("role", "Role", None),
    ("incident", "Incident", None), ("state", "State", None), ("at", "At (UTC)", 12), ("reason", "Reason", None),
)
REASON_WIDTH = 40


class ReviewsScreen(ConsoleScreen):
    """Bypasses awaiting review. ``j`` marks one justified, ``v`` a violation; never one's own (the lifecycle says)."""

    VIEW = "reviews"
    BINDINGS = [
        Binding("enter", "open", "Open", id="open", show=False, tooltip="Open the bypass: checks and history"),
        Binding("j", "justified", "Justified", id="justified",
                tooltip="Review the highlighted bypass as justified, with a comment"),
        Binding("v", "violation", "Violation", id="violation",
                tooltip="Review the highlighted bypass as a policy violation, with a comment"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[RequestView] = []

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="reviews-status", classes="status")
        yield KeyedTable(COLUMNS, unique_column="id", id="reviews-table")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#reviews-table", KeyedTable)

    @work(thread=True, exclusive=True, group="reviews", exit_on_error=False)
    def reload(self) -> None:
        try:
            items = self.data.reviews()
        except Exception as exc:  # noqa: BLE001 - shown to the operator
            self.failed("the reviews", exc)
            return
        self.app.call_from_thread(self._show, items)

    def _show(self, items: list[RequestView]) -> None:
        self.items = sorted(items, key=lambda r: (r.created_at, r.id))
        self.table.sync([(str(r.id), [Text(r.label), Text(r.requester), Text(r.target), Text(r.role),
                                      Text(r.ticket or "-"), Text(r.state), Text(fmt.short_stamp(r.created_at)),
                                      Text(fmt.clip(r.reason, REASON_WIDTH))]) for r in self.items])
        who = "" if self.operator.can_review else " · you are not a reviewer: view only"
        self.query_one("#reviews-status", Static).update(
            Text(f"{len(self.items)} bypass(es) awaiting review, oldest first{who}"))
        self.refresh_bindings()

    def current(self) -> RequestView | None:
        key = self.table.current_key if self.is_mounted else None
        return next((r for r in self.items if str(r.id) == key), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("justified", "violation"):
            if not self.offered(action):
                return False
            try:
                return True if self.current() else None
            except Exception:  # noqa: BLE001 - not composed yet
                return None
        return True

    def _summary(self, r: RequestView) -> str:
        return (f"{r.requester} bypassed to {r.role} on {r.target} under {r.ticket or '-'} at "
                f"{fmt.stamp(r.created_at)}: {r.reason!r}")

    def action_justified(self) -> None:
        if r := self.current():
            self.request_action("justified", r.id, self._summary(r))

    def action_violation(self) -> None:
        if r := self.current():
            self.request_action("violation", r.id, self._summary(r))

    def action_open(self) -> None:
        if r := self.current():
            self.post_message(self.OpenRequested(self, r.id))

    @on(DataTable.RowSelected, "#reviews-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(self.OpenRequested(self, int(event.row_key.value)))

    @on(DataTable.RowHighlighted, "#reviews-table")
    def _highlighted(self) -> None:
        # The footer recomposes on refresh_bindings (costly): only when a row's presence flips.
        has_row = self.current() is not None
        if has_row != getattr(self, "_had_row", None):
            self._had_row = has_row
            self.refresh_bindings()

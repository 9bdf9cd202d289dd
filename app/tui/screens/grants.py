"""Active grants with a live countdown to expiry; revoke and extend at hand."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from app.domain.console import ActiveItem
from app.tui import formatting as fmt
from app.tui.screens.base import RowScreen
from app.tui.widgets.filter_bar import FilterBar
from app.tui.widgets.keyed_table import KeyedTable

# What decides first, so it stays on screen at 80 columns: who holds what, the countdown, where
# (backend) and how it came (kind); the role and the expiry time scroll into view.
COLUMNS = (
    ("id", "Request", 9), ("requester", "Grantee", None), ("target", "Target", None),
    ("left", "Left", fmt.COUNTDOWN_WIDTH), ("backend", "Backend", None), ("kind", "Kind", None),
    ("role", "Role", None), ("expires", "Expires", 9),
)
LEGEND = "Left: '!' under 15 min, '!!' under 5 min, 'XX' past expiry (the engine revokes it)"


class GrantsScreen(RowScreen):
    """Active grants, soonest expiry first. One timer a second updates only the countdown cells that changed."""

    VIEW = "grants"
    LOADS = {"grants": "the active grants"}
    ROW_ACTIONS = ('revoke', 'extend')
    BINDINGS = [
        Binding("enter", "open", "Open", id="open", show=False, tooltip="Open the request behind the grant"),
        Binding("r", "revoke", "Revoke", id="revoke", tooltip="End the highlighted grant now, with a reason"),
        Binding("e", "extend", "Extend", id="extend",
                tooltip="Extend the highlighted grant (policy checks run again)"),
        Binding("slash", "filter", "Filter", id="filter", tooltip="Show only rows containing some text"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[ActiveItem] = []
        self.by_key: dict[str, ActiveItem] = {}
        self.values: dict[str, set[str]] = {}
        self.loaded = False

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="grants-status", classes="status")
        yield FilterBar(id="filter")
        yield KeyedTable(COLUMNS, id="grants-table")
        yield Static(LEGEND, id="grants-legend", classes="legend")

    def on_mount(self) -> None:
        self.set_interval(1, self._tick)

    @work(thread=True, exclusive=True, group="grants", exit_on_error=False)
    def reload(self) -> None:
        items = self.data.active()
        # What each column will show is gathered here, off the UI thread; a row's cells are made
        # only when it is drawn.
        values = {"requester": {i.requester for i in items}, "target": {i.target for i in items},
                  "role": {i.role for i in items}, "kind": {self._kind(i.kind) for i in items},
                  "backend": {i.backend for i in items}}
        self.app.call_from_thread(self._show, items, values)

    def _show(self, items: list[ActiveItem], values: dict[str, set[str]]) -> None:
        self.items, self.values = items, values
        self.by_key = {str(i.id): i for i in items}
        self.loaded = True
        self._refresh_rows()
        self.app.first_load_shown()

    def shown_items(self) -> list[ActiveItem]:
        needle = self.filter_text.lower().strip()
        if not needle:
            return list(self.items)
        return [i for i in self.items
                if needle in " ".join((i.label, i.requester, i.target, i.role, i.kind, i.backend)).lower()]

    def _countdown(self, item: ActiveItem, now: datetime) -> Text:
        text, level = fmt.countdown(item.expires_at - now)
        colours = self.app.theme_variables
        style = {"warning": f"bold {colours.get('warning', 'yellow')}",
                 "error": f"bold {colours.get('error', 'red')}",
                 "expired": f"bold reverse {colours.get('error', 'red')}"}.get(level, "")
        return Text(text, style=style)

    @staticmethod
    def _kind(kind: str) -> str:
        return "BYPASS" if kind == "bypass" else kind

    def _cells_of(self, key: str) -> list[object]:
        item, now = self.by_key[key], self.data.clock()
        cells = {"id": Text(item.label), "requester": Text(item.requester), "target": Text(item.target),
                 "role": Text(item.role), "left": self._countdown(item, now),
                 "expires": Text(fmt.clock_time(item.expires_at)), "kind": Text(self._kind(item.kind)),
                 "backend": Text(item.backend)}
        return [cells[key] for key, _, _ in COLUMNS]

    def _refresh_rows(self) -> None:
        now = self.data.clock()
        shown = self.shown_items()
        self.table.sync([str(i.id) for i in shown], self._cells_of, self.values)
        soon = sum(1 for i in self.items if fmt.urgency(i.expires_at - now) != "ok")
        parts = [f"{len(self.items)} active", f"{soon} expiring within 15 min" if soon else "none expiring soon",
                 "times UTC"]
        if self.filter_text:
            parts.append(f"filter {self.filter_text!r}: {len(shown)} shown")
        self.query_one("#grants-status", Static).update(Text(" · ".join(parts)))
        self.refresh_bindings()

    def _tick(self) -> None:
        """``expires_at - clock()`` for each row; ``update_cell`` only where the text changed."""
        if not self.loaded or not self.is_current:
            return
        with self.app.batch_update():  # visible rows only: the others are made when drawn
            self.table.refresh_rows(self.table.visible_keys())

    # ------------------------------------------------------------ actions
    def _summary(self, item: ActiveItem) -> str:
        return (f"{item.requester} holds {item.role} on {item.target} ({item.kind}, {item.backend}) until "
                f"{fmt.stamp(item.expires_at)}")

    def action_revoke(self) -> None:
        if item := self.current():
            self.request_action("revoke", item.id, self._summary(item))

    def action_extend(self) -> None:
        if item := self.current():
            self.request_action("extend", item.id, self._summary(item))

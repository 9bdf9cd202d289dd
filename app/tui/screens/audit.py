"""The audit log, newest first, with the hash chain's verification status."""
from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from app.domain.console import AuditItem
from app.tui import formatting as fmt
from app.tui.screens.base import ConsoleScreen
from app.tui.widgets.filter_bar import FilterBar
from app.tui.screens.event import EventScreen
from app.tui.widgets.keyed_table import KeyedTable

COLUMNS = (
    ("seq", "#", 6), ("at", "At (UTC)", 15), ("actor", "Actor", None), ("action", "Action", None),
    ("request", "Request", None), ("summary", "Details", None),
)
LIMIT = 500


class AuditScreen(ConsoleScreen):
    """The newest events (up to 500); ``/`` searches actor, action and details in the database."""

    VIEW = "audit"
    LOADS = {"audit": "the audit log"}
    BINDINGS = [
        Binding("enter", "open", "Open", id="open", show=False,
                tooltip="Open the request the event is about, or the event itself when it is about none"),
        Binding("slash", "filter", "Filter", id="filter", tooltip="Search actor, action and details"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[AuditItem] = []
        self.by_seq: dict[str, AuditItem] = {}
        self.filter_text = ""
        self.chain = "verifying the chain…"

    def body(self) -> Iterable[Widget]:
        yield Static(self.chain, id="audit-chain", classes="status")
        yield FilterBar("search actor, action, details: Enter to keep, Escape to clear", id="filter")
        yield KeyedTable(COLUMNS, id="audit-table")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#audit-table", KeyedTable)

    def reload(self) -> None:
        self._load_events(self.filter_text)
        self._verify()

    @work(thread=True, exclusive=True, group="audit", exit_on_error=False)
    def _load_events(self, text: str) -> None:
        self.app.call_from_thread(self._show, self.data.audit(text, LIMIT), text)

    @work(thread=True, exclusive=True, group="audit-verify", exit_on_error=False)
    def _verify(self) -> None:
        ok, message = self.data.audit_status()
        self.app.call_from_thread(self._show_chain, ok, message)

    def worker_failed(self, group: str, error: BaseException) -> None:
        if group == "audit-verify":  # a failed verification is shown as such, in the chain's status
            self._show_chain(False, f"could not verify: {error}")
        else:
            super().worker_failed(group, error)

    def _show(self, items: list[AuditItem], text: str) -> None:
        if text != self.filter_text:
            return  # an older search answered late
        self.items = items
        self.by_seq = {str(e.seq): e for e in items}
        self.table.sync(list(self.by_seq), self._cells_of)
        self._show_chain(None, None)

    def _cells_of(self, key: str) -> list[Text]:
        e = self.by_seq[key]
        return [Text(str(e.seq)), Text(fmt.table_stamp(e.at)), Text(e.actor), Text(e.action),
                Text(f"REQ-{e.request_id}" if e.request_id else "-"), Text(e.summary)]

    def _show_chain(self, ok: bool | None, message: str | None) -> None:
        colours = self.app.theme_variables
        if ok is not None:
            mark, style = ("✓ verified", colours.get("success", "green")) if ok else \
                ("✗ CHAIN BROKEN", colours.get("error", "red"))
            self.chain = Text.assemble((mark, f"bold {style}"), f": {message}")
        shown = f"{len(self.items)} newest events" + (f" matching {self.filter_text!r}" if self.filter_text else "")
        self.query_one("#audit-chain", Static).update(Text.assemble(self.chain, f" · {shown}"))

    def current(self) -> AuditItem | None:
        key = self.table.current_key if self.is_mounted else None
        return self.by_seq.get(key) if key is not None else None

    def action_open(self) -> None:
        """The request the event is about; an event about none (a refusal, drift) on its own."""
        if e := self.current():
            if e.request_id:
                self.post_message(self.OpenRequested(self, e.request_id))
            else:
                self.app.push_screen(EventScreen(self.data, e.seq))

    @on(KeyedTable.RowSelected, "#audit-table")
    def _selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_filter(self) -> None:
        self.query_one("#filter", FilterBar).open()

    @on(FilterBar.FilterChanged)
    def _filter_changed(self, event: FilterBar.FilterChanged) -> None:
        self.filter_text = event.text
        self._load_events(event.text)

    @on(FilterBar.FilterClosed)
    def _filter_closed(self) -> None:
        self.table.focus()

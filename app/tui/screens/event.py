"""One audit event in full: what the audit screen opens for an event about no request (a refusal
before any request existed, drift found by the reconcile, the sync catching up)."""
from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from app.domain.console import ConsoleSource


class EventScreen(ModalScreen[None]):
    """The event's actor, action, time and every detail as recorded; escape closes it."""

    BINDINGS = [Binding("escape", "close", "Close", id="event-close", tooltip="Back to the audit log")]

    def __init__(self, data: ConsoleSource, seq: int) -> None:
        super().__init__()
        self.data, self.seq = data, seq

    def compose(self) -> ComposeResult:
        with Vertical(id="event-dialog"):
            yield Static(Text(f"Audit event {self.seq}", style="bold"), id="event-title")
            with VerticalScroll(id="event-body"):
                yield Static(Text("loading…", style="italic"), id="event-details")
            yield Static(Text("escape closes"), id="event-foot")

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="event", exit_on_error=False)
    def _load(self) -> None:
        try:
            event = self.data.event(self.seq)
        except Exception as exc:  # noqa: BLE001 - shown in the dialog: the log itself stays usable
            self.app.call_from_thread(self._show_text, Text(f"✗ could not load it: {exc}"))
            return
        self.app.call_from_thread(self._show, event)

    def _show(self, event: dict[str, Any]) -> None:
        text = Text()
        for key in ("at", "actor", "action", "request_id"):
            text.append(f"{key:<11}", style="bold")
            text.append(f"{event.get(key) if event.get(key) is not None else '-'}\n")
        text.append("details\n", style="bold")
        text.append(json.dumps(event.get("details"), indent=2, ensure_ascii=False, sort_keys=True))
        text.append("\nhash       ", style="bold")
        text.append(str(event.get("hash")))
        self._show_text(text)

    def _show_text(self, text: Text) -> None:
        self.query_one("#event-details", Static).update(text)

    def action_close(self) -> None:
        self.dismiss(None)

"""The ``/`` filter: an input that appears above a table and narrows it as you type."""
from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Hidden until opened. Posts ``FilterChanged`` on every keystroke and ``FilterClosed`` on Enter or Escape."""

    DEFAULT_CSS = """
    FilterBar { display: none; height: 1; border: none; padding: 0 1; }
    FilterBar.-open { display: block; }
    """
    BINDINGS = [
        Binding("escape", "clear", "Clear filter", id="filter-clear",
                tooltip="Clear the filter and go back to the table"),
    ]

    @dataclass
    class FilterChanged(Message):
        bar: "FilterBar"
        text: str

        @property
        def control(self) -> "FilterBar":
            return self.bar

    @dataclass
    class FilterClosed(Message):
        bar: "FilterBar"

        @property
        def control(self) -> "FilterBar":
            return self.bar

    def __init__(self, placeholder: str = "filter: type to narrow, Enter to keep, Escape to clear",
                 *, id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, id=id, compact=True)

    def open(self) -> None:
        self.add_class("-open")
        self.focus()

    def action_clear(self) -> None:
        self.value = ""
        self.remove_class("-open")
        self.post_message(self.FilterClosed(self))

    def _on_input_changed(self, event: Input.Changed) -> None:
        if event.input is self:
            event.stop()
            self.post_message(self.FilterChanged(self, event.value))

    def _on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input is self:
            event.stop()
            if not self.value:
                self.remove_class("-open")
            self.post_message(self.FilterClosed(self))

"""The confirmation modal: a title, what will happen, a comment or reason (and a duration), confirm or cancel.

It only dismisses: with the values typed (a dict) on confirm, with None on cancel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    value: str = ""
    required: bool = True
    placeholder: str = ""
    check: Callable[[str], str | None] | None = None  # returns what is wrong, or None


class ConfirmModal(ModalScreen[dict[str, str] | None]):
    """Confirm an action, typing what it needs. Enter moves to the next field, and confirms from the
    last one or once nothing is missing or wrong."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="modal-cancel", tooltip="Close without doing anything"),
    ]

    def __init__(self, title: str, summary: str, fields: list[Field], *, confirm: str = "Confirm",
                 variant: str = "primary", cursor_blink: bool = True, error: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.summary = summary
        self.fields = fields
        self.confirm = confirm
        self.variant = variant
        self.cursor_blink = cursor_blink
        self.error = error  # shown at once: the server refused what was typed, and it is kept to be corrected

    def compose(self) -> ComposeResult:
        with Vertical(id="modal-dialog", classes=f"-{self.variant}"):
            yield Static(Text(self.title_text, style="bold"), id="modal-title")
            yield Static(Text(self.summary), id="modal-summary")
            for f in self.fields:
                yield Label(f.label + ("" if f.required else " (optional)"))
                field = Input(f.value, placeholder=f.placeholder, id=f"field-{f.name}", compact=True)
                field.cursor_blink = self.cursor_blink
                yield field
            yield Static(Text(self.error), id="modal-error")
            with Horizontal(id="modal-buttons"):
                yield Button(self.confirm, variant=self.variant, id="modal-confirm", compact=True)
                yield Button("Cancel", id="modal-cancel", compact=True)

    def values(self) -> dict[str, str]:
        return {f.name: self.query_one(f"#field-{f.name}", Input).value.strip() for f in self.fields}

    def problems(self) -> list[tuple[Field, str]]:
        found = []
        for f in self.fields:
            value = self.query_one(f"#field-{f.name}", Input).value.strip()
            if not value:
                if f.required:
                    found.append((f, f"{f.label.lower()} is required"))
            elif f.check and (problem := f.check(value)):
                found.append((f, f"{f.label.lower()}: {problem}"))
        return found

    def action_confirm(self) -> None:
        problems = self.problems()
        if problems:
            self.query_one("#modal-error", Static).update(Text("✗ " + "; ".join(p for _, p in problems)))
            self.query_one(f"#field-{problems[0][0].name}", Input).focus()
            return
        self.dismiss(self.values())

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        """Enter confirms from the last field, and from any field once every field is right (so the
        Enter after correcting the field an error pointed at confirms); else it moves on."""
        event.stop()
        if (self.fields and event.input.id == f"field-{self.fields[-1].name}") or not self.problems():
            self.action_confirm()
        else:
            self.focus_next()

    @on(Button.Pressed, "#modal-confirm")
    def _confirm_pressed(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#modal-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

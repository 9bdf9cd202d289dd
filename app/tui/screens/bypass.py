"""Emergency bypass: a short form, quick to fill at 03:00; active at once, reviewed afterwards."""
from __future__ import annotations

from datetime import timedelta
from typing import Iterable

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static

from app.domain.errors import Refused
from app.tui import formatting as fmt
from app.tui.screens.base import ConsoleScreen
from policies.durations import parse_duration

DEFAULT_DURATION = "1h"
INTRO = ("Emergency bypass: access is active at once, capped by policy, and a security operator reviews it "
         "afterwards. Use it only for an incident.")


class BypassScreen(ConsoleScreen):
    """Target and role, duration (1h), incident, reason. Enter in the reason (or ctrl+s) submits.

    Dismisses with the lifecycle's message on success; a refusal keeps the form open and says why."""

    AUTO_FOCUS = None  # the incident field, once the targets are loaded
    LOADS = {"bypass-choices": "the targets"}
    BINDINGS = [
        Binding("ctrl+s", "submit", "Bypass now", id="bypass-submit", tooltip="Submit the emergency bypass"),
        Binding("escape", "cancel", "Cancel", id="bypass-cancel", tooltip="Leave the form without doing anything"),
    ]

    def body(self) -> Iterable[Widget]:
        with Vertical(id="bypass-form"):
            yield Static(INTRO, id="bypass-intro")
            with Grid(id="bypass-grid"):
                yield Label("Target / role")
                yield Select([], prompt="loading targets…", id="bypass-choice", compact=True)
                yield Label("Duration")
                duration = Input(DEFAULT_DURATION, placeholder="e.g. 30m, 1h (capped by policy)", id="bypass-duration",
                                 compact=True)
                duration.prefilled = DEFAULT_DURATION  # not typed: leaving it as it is loses nothing
                yield duration
                yield Label("Incident")
                yield Input(placeholder="INC0000000", id="bypass-incident", compact=True)
                yield Label("Reason")
                yield Input(placeholder="what is broken and what you will do", id="bypass-reason", compact=True)
            yield Static("", id="bypass-error")
            with Horizontal(id="bypass-buttons"):
                yield Button("Bypass now", variant="error", id="bypass-go", compact=True)
                yield Button("Cancel", id="bypass-no", compact=True)

    def on_mount(self) -> None:
        self._load_choices()

    @work(thread=True, exclusive=True, group="bypass-choices", exit_on_error=False)
    def _load_choices(self) -> None:
        self.app.call_from_thread(self._show_choices, self.data.bypass_choices())

    def _show_choices(self, choices: list[tuple[str, str]]) -> None:
        select = self.query_one("#bypass-choice", Select)
        select.set_options([(f"{target} · {role}", (target, role)) for target, role in choices])
        select.prompt = "choose a target and role" if choices else "no target you may bypass on"  # not "loading"
        if choices:
            select.value = choices[0]
        self.query_one("#bypass-incident", Input).focus()

    def _error(self, text: str) -> None:
        self.query_one("#bypass-error", Static).update(Text(text))

    def action_submit(self) -> None:
        choice = self.query_one("#bypass-choice", Select).value
        duration = self.query_one("#bypass-duration", Input).value.strip()
        incident = self.query_one("#bypass-incident", Input).value.strip()
        reason = self.query_one("#bypass-reason", Input).value.strip()
        problems = []
        if not isinstance(choice, tuple):
            problems.append("choose a target and role")
        if problem := fmt.duration_error(duration):
            problems.append(f"duration: {problem}")
        if not incident:
            problems.append("incident is required")
        if not reason:
            problems.append("reason is required")
        if problems:
            self._error("✗ " + "; ".join(problems))
            return
        self._error("submitting…")
        self.query_one("#bypass-go", Button).disabled = True
        target, role = choice
        self._submit(target, role, parse_duration(duration), incident, reason)

    @work(thread=True, exclusive=True, group="bypass", exit_on_error=False)
    def _submit(self, target: str, role: str, duration: timedelta, incident: str, reason: str) -> None:
        self.app.call_from_thread(self._done, self.data.bypass(target, role, duration, incident, reason))

    def worker_failed(self, group: str, error: BaseException) -> None:
        """A refused or failed bypass keeps the form open, saying why; a refusal is notified too."""
        if group != "bypass":
            super().worker_failed(group, error)
        elif isinstance(error, Refused):
            self.app.notify(error.message, title=f"Bypass refused: {error.rule}", severity="error",
                            timeout=10, markup=False)
            self._refused(f"✗ refused ({error.rule}): {error.message}")
        else:
            self._refused(f"✗ failed: {type(error).__name__}: {error}")

    def _done(self, message: str) -> None:
        self.dismiss(message)

    def _refused(self, text: str) -> None:
        self._error(text)
        self.query_one("#bypass-go", Button).disabled = False

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        if event.input.id == "bypass-reason":
            self.action_submit()
        else:
            self.focus_next()

    @on(Button.Pressed, "#bypass-go")
    def _go(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#bypass-no")
    def action_cancel(self) -> None:
        self.dismiss(None)

"""Is the system well: engine heartbeat, ServiceNow sync, exposure, audit chain."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from rich.text import Text
from textual import work
from textual.containers import Grid
from textual.widget import Widget
from textual.widgets import Static

from app.domain.console import Health
from app.tui import formatting as fmt
from app.tui.screens.base import ConsoleScreen

PANELS = (("engine", "Engine"), ("sync", "ServiceNow sync"), ("exposure", "Exposure"), ("audit", "Audit chain"))


def _bar(part: int, whole: int, width: int = 20) -> str:
    filled = round(width * part / whole) if whole else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class HealthScreen(ConsoleScreen):
    """Four panels, each saying in words (and marks) whether that part is well."""

    VIEW = "health"
    AUTO_FOCUS = None
    LOADS = {"health": "health"}
    REFRESH_SECONDS = 5  # heartbeats and sync runs change no audit event, so the change token misses them

    def body(self) -> Iterable[Widget]:
        with Grid(id="health-grid"):
            for key, title in PANELS:
                panel = Static("loading…", id=f"health-{key}", classes="panel")
                panel.border_title = title
                yield panel

    def on_mount(self) -> None:
        self.set_interval(self.REFRESH_SECONDS, self._refresh_if_shown)

    def _refresh_if_shown(self) -> None:
        if self.is_current:
            self.reload()

    @work(thread=True, exclusive=True, group="health", exit_on_error=False)
    def reload(self) -> None:
        health = self.data.health()
        now = self.data.clock()
        self.app.call_from_thread(self._show, health, now)

    def _mark(self, ok: bool, text: str) -> Text:
        colours = self.app.theme_variables
        colour = colours.get("success", "green") if ok else colours.get("error", "red")
        return Text.assemble((("✓ " if ok else "✗ ") + text, f"bold {colour}"))

    def _show(self, h: Health, now: datetime) -> None:
        engine = Text()
        engine.append_text(self._mark(h.engine_running, "running" if h.engine_running else "NOT RUNNING"))
        if not h.engine_running:
            engine.append("\nno heartbeat lately: nothing is activated, revoked or escalated until an engine runs")
        for name, seen in h.engines:
            engine.append(f"\n{name}: last seen {fmt.clock_time(seen)} ({fmt.age(now - seen)} ago)")
        self.query_one("#health-engine", Static).update(engine)

        sync = Text()
        if not h.sync_enabled:
            sync.append("off: ServiceNow is not configured")
        else:
            healthy = not h.sync_errors and h.sync_last_ok is not None and h.sync_last_ok == h.sync_last_run
            sync.append_text(self._mark(healthy, "in step" if healthy else "FAILING"))
            behind = "-" if h.sync_behind_s is None else f"{h.sync_behind_s:.0f}s"
            sync.append(f"\nlast run {fmt.stamp(h.sync_last_run)}\nlast ok  {fmt.stamp(h.sync_last_ok)}"
                        f"\nwatermark {fmt.stamp(h.sync_watermark)}\nbehind {behind}")
            for error in h.sync_errors[-3:]:
                sync.append(f"\n! {error}")
        self.query_one("#health-sync", Static).update(sync)

        share = f"{100 * h.elevated_now / h.eligible:.0f}%" if h.eligible else "-"
        exposure = Text(f"elevated now {h.elevated_now} of {h.eligible} eligible ({share})\n"
                        f"{_bar(h.elevated_now, h.eligible)}\n"
                        f"privilege-hours, last 7 days: {h.privilege_hours_7d:g}\n")
        exposure.append_text(self._mark(h.bypasses_awaiting_review == 0,
                                        f"bypasses awaiting review: {h.bypasses_awaiting_review}"))
        self.query_one("#health-exposure", Static).update(exposure)

        audit = self._mark(h.audit_ok, "chain intact" if h.audit_ok else "CHAIN BROKEN")
        audit.append(f"\n{h.audit_message}")
        self.query_one("#health-audit", Static).update(audit)

"""Opening the console on wired services: the one place the CLI and the demo start Textual from."""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.queries.console import ConsoleData
from app.tui.console import JitConsole

if TYPE_CHECKING:
    from app.bootstrap import Services


def run_console(sv: Services, person: str, *, with_engine: bool) -> int:
    console = JitConsole(ConsoleData(sv, person), keymap=dict(sv.config.settings.console.keys),
                         engine=sv.engine if with_engine else None)
    console.run()
    return 0

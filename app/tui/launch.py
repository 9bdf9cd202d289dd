"""Opening the console: the one place the CLI and the demo start Textual from."""
from __future__ import annotations

from typing import Mapping

from app.domain.console import ConsoleSource
from app.tui.console import JitConsole


def run_console(data: ConsoleSource, keymap: Mapping[str, str] | None = None) -> int:
    """The console on ``data`` (``RemoteConsoleData`` for ``jit console``; ``ConsoleData`` in tests),
    keys remapped by binding id, until the operator quits."""
    JitConsole(data, keymap=dict(keymap or {})).run()
    return 0

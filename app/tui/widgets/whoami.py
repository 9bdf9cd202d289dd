"""The operator bar: who is acting, in which groups, and what the console offers them."""
from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from app.domain.console import Operator
from policies.authority import offers as may


class WhoAmI(Static):
    """One line, always at the top: ``JIT console  operator bob  groups managers  may approve, deny``,
    with the app's ``engine_note`` after the name when no engine is heard from (nothing would
    activate or expire grants)."""

    DEFAULT_CSS = """
    WhoAmI { height: 1; width: 1fr; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, operator: Operator, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.operator = operator

    def render(self) -> Content:
        op = self.operator
        groups = ", ".join(sorted(op.groups)) or "no groups"
        actions = ", ".join(may(op)) or "view only"
        warning = getattr(self.app, "engine_note", "")  # first, so a narrow terminal still shows it
        return Content.assemble(
            ("JIT console", "bold $accent"), *((("  ⚠ " + warning, "bold $error"),) if warning else ()),
            "  operator ", (op.person, "bold"), "  groups ", (groups, "bold"), "  may ", (actions, "italic"))

"""The operator bar: who is acting, in which groups, and what the console offers them."""
from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from app.domain.console import Operator
from policies.authority import offers as may


class WhoAmI(Static):
    """One line, always at the top: ``JIT console  operator bob  groups managers  may approve, deny``."""

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
        return Content.assemble(
            ("JIT console", "bold $accent"), "  operator ", (op.person, "bold"),
            "  groups ", (groups, "bold"), "  may ", (actions, "italic"))

"""The view switcher under the operator bar: ``[1 Queue]  2 Grants  3 Reviews ...``."""
from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

VIEWS = (("queue", "Queue"), ("grants", "Grants"), ("reviews", "Reviews"), ("audit", "Audit"),
         ("health", "Health"))


class NavBar(Static):
    """Shows the views with their keys; the current one is bracketed (and highlighted)."""

    DEFAULT_CSS = """
    NavBar { height: 1; width: 1fr; background: $boost; padding: 0 1; }
    """

    def __init__(self, current: str, keys: dict[str, str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.current = current
        self.keys = keys

    def render(self) -> Content:
        parts: list[Content | str | tuple[str, str]] = []
        for view, title in VIEWS:
            key = self.keys.get(view, "")
            text = f"{key} {title}".strip()
            if view == self.current:
                parts.append((f"[{text}]", "bold reverse $accent"))
            else:
                parts.append(Content.from_markup(f" [@click=app.view('{view}')]$text[/] ", text=text))
            parts.append(" ")
        return Content.assemble(*parts)

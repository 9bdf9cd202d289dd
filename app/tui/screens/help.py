"""``?``: the keys of the current screen and of the whole app, as they are bound now (keymap included)."""
from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


@dataclass(frozen=True)
class KeyHelp:
    section: str  # e.g. "Queue" or "Everywhere"
    key: str
    description: str
    tooltip: str
    binding_id: str = ""  # what [console] keys in jit.toml remaps


class HelpScreen(ModalScreen[None]):
    """Lists the keys it is given; any of escape, q or ? closes it."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help-close", tooltip="Close the help"),
    ]

    def __init__(self, title: str, keys: list[KeyHelp]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            yield Static(Text(f"Keys: {self.title_text}", style="bold"), id="help-title")
            with VerticalScroll(id="help-body"):
                yield Static(self._render_keys(), id="help-keys")
            yield Static(Text("escape closes · ctrl+p: the actions by name · remap a key by its id: "
                              "[console.keys] in jit.toml"), id="help-foot")

    def _render_keys(self) -> Text:
        text = Text()
        section = None
        width = max((len(k.key) for k in self.keys), default=4) + 2
        ids = max((len(k.binding_id) for k in self.keys), default=0) + 1
        for k in self.keys:
            if k.section != section:
                if section is not None:
                    text.append("\n")
                text.append(f"{k.section}\n", style="bold underline")
                section = k.section
            text.append(f"  {k.key:<{width}}", style="bold")
            text.append(f"{k.description:<11}")
            text.append(f"{k.binding_id:<{ids}}", style="italic")
            if k.tooltip:
                text.append(f" {k.tooltip}", style="dim")
            text.append("\n")
        return text

    def action_close(self) -> None:
        self.dismiss(None)

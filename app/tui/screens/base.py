"""What every console screen shares: the operator bar, the view switcher, the footer, reloading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from app.domain.console import ConsoleSource, Operator
from app.tui.widgets.filter_bar import FilterBar
from app.tui.widgets.keyed_table import KeyedTable
from app.tui.widgets.nav import NavBar
from app.tui.widgets.whoami import WhoAmI
from policies.authority import offered


@dataclass(frozen=True)
class Chrome:
    """What the app hands every screen: who is acting and which key opens which view."""

    operator: Operator
    nav_keys: dict[str, str] = field(default_factory=dict)


class ConsoleScreen(Screen):
    """A console view. Subclasses compose ``body()`` and start their loading worker in ``reload()``.

    A worker that raises is shown to the operator by ``on_worker_state_changed``: workers need no
    try/except of their own."""

    VIEW: ClassVar[str] = ""  # the NavBar entry to highlight
    AUTO_FOCUS = "KeyedTable"
    LOADS: ClassVar[dict[str, str]] = {}  # worker group -> what it loads: "Could not load the queue"

    @dataclass
    class ActionRequested(Message):
        """The operator asked for an action on a request (the app asks for confirmation and runs it)."""

        screen: "ConsoleScreen"
        action: str  # approve | deny | revoke | extend | justified | violation
        request_id: int
        summary: str

        @property
        def control(self) -> "ConsoleScreen":
            return self.screen

    @dataclass
    class OpenRequested(Message):
        """The operator asked to see one request in detail."""

        screen: "ConsoleScreen"
        request_id: int

        @property
        def control(self) -> "ConsoleScreen":
            return self.screen

    def __init__(self, data: ConsoleSource, chrome: Chrome) -> None:
        super().__init__()
        self.data = data
        self.chrome = chrome

    @property
    def operator(self) -> Operator:
        return self.chrome.operator

    def compose(self) -> ComposeResult:
        yield WhoAmI(self.operator, id="whoami")
        yield NavBar(self.VIEW, self.chrome.nav_keys, id="nav")
        yield from self.body()
        yield Footer(compact=True)

    def body(self) -> Iterable[Widget]:
        return ()

    def on_mount(self) -> None:
        """Runs as well as a subclass's own ``on_mount`` (Textual dispatches along the MRO)."""
        if not getattr(self.app, "cursor_blink", True):
            for box in self.query(Input):
                box.cursor_blink = False

    def reload(self) -> None:
        """Fetch what the screen shows again (in a worker) and update it in place."""

    def on_screen_resume(self) -> None:
        self.reload()

    def offered(self, action: str) -> bool:
        return offered(self.operator, action)

    def request_action(self, action: str, request_id: int, summary: str) -> None:
        self.post_message(self.ActionRequested(self, action, request_id, summary))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every worker this screen starts reports here, on the app's thread (``exit_on_error=False``
        keeps a raising worker from closing the app; its exception is then ``worker.error``)."""
        if event.state is WorkerState.ERROR:
            self.worker_failed(event.worker.group, event.worker.error)

    def worker_failed(self, group: str, error: BaseException) -> None:
        """Show that the worker of ``group`` raised ``error``: a notification, and the screen keeps what
        it shows. A screen that shows some failure as state instead overrides this for that group."""
        self.failed(self.LOADS.get(group, group), error)

    def failed(self, what: str, exc: BaseException) -> None:
        """Say that loading ``what`` failed; keep what is shown."""
        self.app.notify(f"{type(exc).__name__}: {exc}", title=f"Could not load {what}", severity="error",
                        timeout=8, markup=False)


class RowScreen(ConsoleScreen):
    """A view over one ``KeyedTable`` of requests: the row under the cursor, the actions that need
    one (``ROW_ACTIONS``, offered only to those allowed), and opening it in the detail view."""

    ROW_ACTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data: ConsoleSource, chrome: Chrome) -> None:
        super().__init__(data, chrome)
        self.by_key: dict[str, Any] = {}  # row key -> item, kept by the subclass's loader
        self.filter_text = ""

    def _refresh_rows(self) -> None:
        """Show the loaded rows again (after a filter or order change)."""

    @property
    def table(self) -> KeyedTable:
        return self.query_one(KeyedTable)

    def current(self) -> Any:
        key = self.table.current_key if self.is_mounted else None
        return self.by_key.get(key) if key is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Row actions: hidden when never offered to this operator, dimmed when not possible on the
        highlighted row (the app says why when the key is pressed: ``why_not``)."""
        if action in self.ROW_ACTIONS:
            if not self.offered(action):
                return False
            try:
                return None if self.why_not(action) else True
            except Exception:  # noqa: BLE001 - not composed yet
                return None
        return True

    def why_not(self, action: str) -> str | None:
        """Why ``action`` cannot be taken on the highlighted row now, in a sentence; None when it can."""
        if not self.offered(action):
            return f"not offered to {self.operator.person} (none of their groups may)"
        item = self.current()
        if item is None:
            return "no row is highlighted"
        return self.row_refusal(action, item)

    def row_refusal(self, action: str, item: Any) -> str | None:
        """What rules out ``action`` on ``item`` for this operator, known without asking the server."""
        return None

    def action_open(self) -> None:
        if item := self.current():
            self.post_message(self.OpenRequested(self, item.id))

    @on(KeyedTable.RowSelected)
    def _selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.post_message(self.OpenRequested(self, int(event.key)))

    @on(KeyedTable.RowHighlighted)
    def _highlighted(self) -> None:
        # The footer recomposes on refresh_bindings (costly): only when a row's presence flips.
        has_row = self.current() is not None
        if has_row != getattr(self, "_had_row", None):
            self._had_row = has_row
            self.refresh_bindings()

    # A screen that composes a FilterBar (id "filter") and binds "filter" gets these.
    def action_filter(self) -> None:
        self.query_one("#filter", FilterBar).open()

    @on(FilterBar.FilterChanged)
    def _filter_changed(self, event: FilterBar.FilterChanged) -> None:
        self.filter_text = event.text
        self._refresh_rows()

    @on(FilterBar.FilterClosed)
    def _filter_closed(self) -> None:
        self.table.focus()

"""The queue: pending requests, most urgent first, with approve and deny at hand."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from app.domain.console import QueueItem
from app.tui import formatting as fmt
from app.tui.screens.base import RowScreen
from app.tui.widgets.filter_bar import FilterBar
from app.tui.widgets.keyed_table import KeyedTable

# What decides first: at 80 columns the table shows who asks what, the verdict and the ticket; the
# rest (approvals, age, risk, duration) scrolls into view.
COLUMNS = (
    ("id", "Request", 8), ("requester", "Requester", None), ("target", "Target", None), ("role", "Role", None),
    ("verdict", "Verdict", None), ("ticket", "Ticket", None), ("approvals", "Appr", 4), ("age", "Age", 5),
    ("risk", "Env/risk", None), ("duration", "Dur", None),
)
SORTS = ("urgency", "oldest", "requester", "target")


def _text(item: QueueItem) -> str:
    return " ".join([item.label, item.requester, item.target, item.role, item.environment, item.tier,
                     item.ticket or "", item.verdict, *item.approvers, "holds" if item.holding else ""]).lower()


class QueueScreen(RowScreen):
    """Pending requests. Escalated ones are marked ``!`` and highlighted; ``/`` filters, ``s`` re-orders."""

    VIEW = "queue"
    LOADS = {"queue": "the queue"}
    ROW_ACTIONS = ('approve', 'deny')
    BINDINGS = [
        Binding("enter", "open", "Open", id="open", show=False,
                tooltip="Open the request: checks, approvals, history, ticket"),
        Binding("a", "approve", "Approve", id="approve", tooltip="Approve the highlighted request"),
        Binding("d", "deny", "Deny", id="deny", tooltip="Deny the highlighted request, with a reason"),
        Binding("slash", "filter", "Filter", id="filter", tooltip="Show only rows containing some text"),
        Binding("s", "sort", "Sort", id="sort", tooltip="Order by urgency, then oldest, requester, target"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[QueueItem] = []
        self.by_key: dict[str, QueueItem] = {}
        self.texts: dict[str, str] = {}
        self.values: dict[str, set[str]] = {}
        self.loaded = False
        self.sort_index = 0

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="queue-status", classes="status")
        yield FilterBar(id="filter")
        yield KeyedTable(COLUMNS, id="queue-table")

    def on_mount(self) -> None:
        self.set_interval(1, self._tick)

    # ------------------------------------------------------------ loading
    @work(thread=True, exclusive=True, group="queue", exit_on_error=False)
    def reload(self) -> None:
        items = self.data.queue()  # if it raises, the operator is told and the screen keeps its rows
        # Search text and what each column will show are made here, off the UI thread; a row's
        # cells are made only when it is drawn.
        texts = {str(i.id): _text(i) for i in items}
        values = {"requester": {i.requester for i in items}, "target": {i.target for i in items},
                  "role": {i.role for i in items}, "ticket": {i.ticket or "-" for i in items},
                  "risk": {fmt.env_risk(e, t) for e, t in {(i.environment, i.tier) for i in items}},
                  "duration": {fmt.duration(d) for d in {i.duration for i in items}},
                  "verdict": {self._verdict_text(i.verdict, i.holding) for i in items}}
        self.app.call_from_thread(self._show, items, texts, values)

    def _show(self, items: list[QueueItem], texts: dict[str, str], values: dict[str, set[str]]) -> None:
        self.items, self.texts, self.values = items, texts, values
        self.by_key = {str(i.id): i for i in items}
        self.loaded = True
        self._refresh_rows()
        self.app.first_load_shown()

    def shown_items(self) -> list[QueueItem]:
        needle = self.filter_text.lower().strip()
        items = [i for i in self.items if needle in self.texts[str(i.id)]] if needle else list(self.items)
        order = SORTS[self.sort_index]
        if order == "oldest":
            items.sort(key=lambda i: (i.created_at, i.id))
        elif order == "requester":
            items.sort(key=lambda i: (i.requester, i.created_at, i.id))
        elif order == "target":
            items.sort(key=lambda i: (i.target, i.role, i.created_at, i.id))
        return items  # "urgency": as the data source orders them (escalated, then oldest)

    def _refresh_rows(self) -> None:
        shown = self.shown_items()
        self.table.sync([str(i.id) for i in shown], self._cells_of, self.values)
        escalated = sum(1 for i in self.items if i.escalated)
        parts = [f"{len(self.items)} pending", f"{escalated} escalated (marked !)" if escalated else "none escalated",
                 f"order: {SORTS[self.sort_index]}"]
        if self.filter_text:
            parts.append(f"filter {self.filter_text!r}: {len(shown)} shown")
        self.query_one("#queue-status", Static).update(Text(" · ".join(parts)))
        self.refresh_bindings()

    def _style(self, item: QueueItem) -> str:
        return f"bold {self.app.theme_variables.get('warning', 'yellow')}" if item.escalated else ""

    def _age(self, item: QueueItem, now: datetime) -> Text:
        return Text(fmt.age(now - item.created_at), style=self._style(item))

    @staticmethod
    def _verdict(verdict: str) -> str:
        return ("✓ " if verdict == "pass" else "✗ ") + verdict

    def _verdict_text(self, verdict: str, holding: str) -> str:
        """The verdict, and when the requester already holds what is asked: ``✓ pass · holds REQ-5``."""
        return self._verdict(verdict) + (f" · holds {holding.split()[0]}" if holding else "")

    def _cells_of(self, key: str) -> list[Text]:
        return self._cells(self.by_key[key], self.data.clock())

    def _cells(self, item: QueueItem, now: datetime) -> list[Text]:
        style = self._style(item)
        text = {"id": f"{'!' if item.escalated else ' '} {item.label}", "requester": item.requester,
                "target": item.target, "role": item.role, "approvals": f"{item.approvals}/{item.needed}",
                "risk": fmt.env_risk(item.environment, item.tier), "duration": fmt.duration(item.duration),
                "verdict": self._verdict_text(item.verdict, item.holding),
                "ticket": item.ticket or "-"}
        return [self._age(item, now) if key == "age" else Text(text[key], style=style) for key, _, _ in COLUMNS]

    def _tick(self) -> None:
        """Ages move on: update the cells whose text changed, nothing else."""
        if not self.loaded or not self.is_current:
            return
        with self.app.batch_update():  # visible rows only: the others are made when drawn
            self.table.refresh_rows(self.table.visible_keys())

    # ------------------------------------------------------------ actions
    def _summary(self, item: QueueItem) -> str:
        return (f"{item.requester} asks for {item.role} on {item.target} ({fmt.env_risk(item.environment, item.tier)}) "
                f"for {fmt.duration(item.duration)}; ticket {item.ticket or '-'}; approvals {item.approvals} of "
                f"{item.needed} ({item.approval_model}: {', '.join(item.approver_groups) or '-'})"
                + (f". {item.requester} already holds this role on {item.target}: {item.holding}" if item.holding
                   else ""))

    def row_refusal(self, action: str, item: QueueItem) -> str | None:
        me = self.operator.person
        if action == "approve" and item.requester == me:
            return f"REQ-{item.id} is your own request: a requester never approves their own"
        if action == "approve" and me in item.approvers:
            return f"you approved REQ-{item.id} already: one person counts once"
        return None

    def action_approve(self) -> None:
        if item := self.current():
            self.request_action("approve", item.id, self._summary(item))

    def action_deny(self) -> None:
        if item := self.current():
            self.request_action("deny", item.id, self._summary(item))

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self._refresh_rows()

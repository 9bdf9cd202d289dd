"""A table of keyed rows that draws only the lines on screen (Textual's Line API).

Why not ``DataTable``: it builds and measures every row as a widget-side structure, so 10,000
rows cost seconds to load and every update repaints the table. Here a row is a tuple of cells
kept in a dict; ``render_line`` draws the few rows in view (cached per row), a cursor move
repaints two lines and a changed cell repaints one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

CellsOf = Callable[[str], Sequence[object]]  # a row's cells, made when the row is first drawn
PAD = 1  # blank cells on each side of a column


def _text(value: object) -> Text:
    return value if isinstance(value, Text) else Text(str(value))


def _same(a: object, b: object) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return type(a) is type(b) and a == b


def measure(columns: Sequence[tuple[str, str, int | None]], rows: Iterable[Sequence[object]],
            values: Mapping[str, Iterable[str]] | None = None) -> list[int]:
    """Column widths: the fixed width, else the widest of the label and the column's ``values``
    (the texts it will show, when the caller knows them cheaply), else of every row's cell."""
    values = values or {}
    rows = list(rows) if any(fixed is None and key not in values for key, _, fixed in columns) else []
    widths = []
    for index, (key, label, fixed) in enumerate(columns):
        if fixed is not None:
            widths.append(fixed)
        elif key in values:
            widths.append(max(cell_len(label), max(map(cell_len, set(values[key])), default=0)))
        else:
            widths.append(max(cell_len(label), max((_text(cells[index]).cell_len for cells in rows), default=0)))
    return widths


class KeyedTable(ScrollView, can_focus=True):
    """Rows are set by key in order; the cursor stays on its row across updates; rows update by key."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]
    COMPONENT_CLASSES = {"keyed-table--header", "keyed-table--cursor", "keyed-table--even-row"}
    DEFAULT_CSS = """
    KeyedTable {
        background: $surface;
        color: $foreground;
        & > .keyed-table--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .keyed-table--header { background: ansi_bright_blue; color: ansi_default; }
        & > .keyed-table--even-row { background: $surface-lighten-1 50%; }
        &:dark > .keyed-table--even-row { background: $surface-darken-1 40%; }
        & > .keyed-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .keyed-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
    }
    """

    @dataclass
    class RowHighlighted(Message):
        table: "KeyedTable"
        key: str | None

        @property
        def control(self) -> "KeyedTable":
            return self.table

    @dataclass
    class RowSelected(Message):
        table: "KeyedTable"
        key: str

        @property
        def control(self) -> "KeyedTable":
            return self.table

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._columns = list(columns)
        self._keys = [key for key, _, _ in columns]
        self._widths = measure(self._columns, [])
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._cells_of: CellsOf = lambda key: ()
        self._shown: dict[str, tuple[object, ...]] = {}  # the cells made so far, by key
        self._cursor = 0
        self._lines: dict[tuple[str, bool, bool, int], Strip] = {}  # (key, cursor, even, width) -> strip
        self._header: Strip | None = None

    # ------------------------------------------------------------ data
    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def shown_keys(self) -> list[str]:
        return list(self._order)

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        return self._order[self._cursor] if self._order else None

    def cell(self, key: str, column: str) -> object:
        return self._row(key)[self._keys.index(column)]

    def _row(self, key: str) -> tuple[object, ...]:
        cells = self._shown.get(key)
        if cells is None:
            cells = self._shown[key] = tuple(self._cells_of(key))
        return cells

    def sync(self, keys: Sequence[str], cells_of: CellsOf, values: Mapping[str, Iterable[str]] | None = None) -> None:
        """Show the rows ``keys`` in this order. ``cells_of(key)`` makes a row's cells when it is first
        drawn (so 10,000 rows cost only the ones on screen); ``values`` as for ``measure``.

        Only lines whose cells changed are drawn again, unless the order or the widths changed."""
        keep = self.current_key
        old_cursor, old_order, old_shown, old_widths = self._cursor, self._order, self._shown, self._widths
        self._order, self._cells_of, self._shown = list(keys), cells_of, {}
        self._widths = measure(self._columns, (self._row(k) for k in self._order), values)
        if self._order != old_order:
            self._index = {key: i for i, key in enumerate(self._order)}
        if keep is not None and keep in self._index:
            self._cursor = self._index[keep]
        else:
            self._cursor = min(old_cursor, max(0, len(self._order) - 1))
        if self._order != old_order or self._widths != old_widths:
            self._lines.clear()
            self._header = None
            self.virtual_size = Size(self._total_width(), len(self._order) + 1)
            self.refresh()
        else:  # same rows in the same order: draw again only the drawn lines whose cells changed
            self._redraw_changed({k[0] for k in self._lines}, old_shown)
        self._scroll_to_cursor()
        if self.current_key != keep:
            self.post_message(self.RowHighlighted(self, self.current_key))

    def refresh_rows(self, keys: Iterable[str]) -> None:
        """Make the cells of ``keys`` again (e.g. a countdown moved on); draw again only changed lines."""
        keys = [k for k in keys if k in self._index]
        old = {k: self._shown.pop(k) for k in keys if k in self._shown}
        self._redraw_changed(keys, old)

    def _redraw_changed(self, keys: Iterable[str], old: Mapping[str, tuple[object, ...]]) -> None:
        for key in keys:
            before = old.get(key)
            if before is not None and all(map(_same, before, self._row(key))):
                continue
            for cache_key in [k for k in self._lines if k[0] == key]:
                del self._lines[cache_key]
            self.refresh_line(self._index[key] + 1)

    def visible_keys(self) -> list[str]:
        """Keys of the rows on screen now: the only ones a timer needs to update."""
        first = int(self.scroll_y)
        return self._order[first:first + max(1, self._page())]

    # ------------------------------------------------------------ cursor
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)  # less the header line

    def move_cursor(self, row: int) -> None:
        if not self._order:
            return
        row = max(0, min(row, len(self._order) - 1))
        if row == self._cursor:
            return
        old, self._cursor = self._cursor, row
        self.refresh_line(old + 1)
        self.refresh_line(row + 1)
        self._scroll_to_cursor()
        self.post_message(self.RowHighlighted(self, self.current_key))

    def _scroll_to_cursor(self) -> None:
        top, page = int(self.scroll_y), self._page()
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, immediate=True)
        elif self._cursor >= top + page:
            self.scroll_to(y=self._cursor - page + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self._cursor + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(self._cursor + step * self._page())

    def action_edge(self, end: int) -> None:
        self.move_cursor(len(self._order) - 1 if end else 0)

    def action_select(self) -> None:
        if (key := self.current_key) is not None:
            self.post_message(self.RowSelected(self, key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        row = int(self.scroll_y) + offset.y - 1
        if row >= len(self._order):
            return
        if row == self._cursor:
            self.action_select()
        else:
            self.move_cursor(row)

    # ------------------------------------------------------------ drawing
    def _total_width(self) -> int:
        return sum(w + 2 * PAD for w in self._widths)

    def _line(self, cells: Sequence[object], style: Style, post: Style | None) -> Strip:
        text = Text(no_wrap=True, end="")
        for value, width in zip(cells, self._widths):
            cell = _text(value).copy()
            cell.truncate(width, overflow="ellipsis", pad=True)
            text.append(" " * PAD)
            text.append_text(cell)
            text.append(" " * PAD)
        width = max(self._total_width(), self.size.width)
        segments = Segment.apply_style(text.render(self.app.console), style, post)
        return Strip(segments).extend_cell_length(width, style)

    def render_line(self, y: int) -> Strip:
        width, x = self.size.width, int(self.scroll_x)
        if y == 0:
            if self._header is None:
                style = self.rich_style + self.get_component_rich_style("keyed-table--header")
                self._header = self._line([label for _, label, _ in self._columns], style, None)
            return self._header.crop_extend(x, x + width, self.rich_style)
        row = int(self.scroll_y) + y - 1
        if row >= len(self._order):
            return Strip.blank(width, self.rich_style)
        key = self._order[row]
        cursor, even = row == self._cursor, row % 2 == 0
        cache_key = (key, cursor, even, self.size.width)
        strip = self._lines.get(cache_key)
        if strip is None:
            if cursor:
                post = self.get_component_rich_style("keyed-table--cursor")
                style = self.rich_style + post
            else:
                post = None
                style = self.rich_style + (self.get_component_rich_style("keyed-table--even-row") if even
                                           else Style())
            strip = self._lines[cache_key] = self._line(self._row(key), style, post)
        return strip.crop_extend(x, x + width, self.rich_style)

    def on_focus(self) -> None:
        self.notify_style_update()
        self.refresh()

    def on_blur(self) -> None:
        self.notify_style_update()
        self.refresh()

    def notify_style_update(self) -> None:
        """Focus, theme or CSS changed: cached lines carry old styles."""
        super().notify_style_update()
        self._lines.clear()
        self._header = None

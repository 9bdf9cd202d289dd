"""A DataTable kept in step with a list of keyed rows, without ever being rebuilt."""
from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.geometry import Size
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

Row = tuple[str, Sequence[object]]


def _same(a: object, b: object) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return type(a) is type(b) and a == b


class KeyedTable(DataTable):
    """Rows are added, removed, updated cell by cell and reordered by key; the cursor stays on its row.

    ``unique_column`` names a column whose text is unique per row (the request label, the audit
    sequence number): reordering sorts on it."""

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], *, unique_column: str,
                 id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True, cell_padding=1)
        self._columns = list(columns)
        self._keys = [key for key, _, _ in columns]
        self._unique = self._keys.index(unique_column)
        self._shown: dict[str, tuple[object, ...]] = {}

    def on_mount(self) -> None:
        for key, label, width in self._columns:
            self.add_column(label, key=key, width=width)

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        # DataTable measures new cells on idle, but caches rendered cells under keys that do not
        # include the column width (textual 8.2.8): a row drawn before the measuring would keep its
        # too-narrow cells (seen on the cursor row once a modal blurs the table). Drop them.
        if old.width != new.width:
            self.notify_style_update()

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except RowDoesNotExist:
            return None

    @property
    def shown_keys(self) -> list[str]:
        return [row.key.value for row in self.ordered_rows]

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show ``rows`` in this order, touching only what changed."""
        keep = self.current_key
        wanted = {key: tuple(cells) for key, cells in rows}
        with self.app.batch_update():
            for key in [k for k in self._shown if k not in wanted]:
                self.remove_row(key)
                del self._shown[key]
            for key, cells in wanted.items():
                old = self._shown.get(key)
                if old is None:
                    self.add_row(*cells, key=key)
                else:
                    for column, new, before in zip(self._keys, cells, old):
                        if not _same(new, before):
                            self.update_cell(key, column, new)
                self._shown[key] = cells
            order = list(wanted)
            if self.shown_keys != order:
                rank = {str(cells[self._unique]): i for i, cells in enumerate(wanted.values())}
                self.sort(self._keys[self._unique], key=lambda cell: rank.get(str(cell), len(rank)))
            if keep is not None and keep in self._shown:
                self.move_cursor(row=self.get_row_index(keep), animate=False)

    def visible_keys(self) -> list[str]:
        """Keys of the rows on screen now (rows are one line high): the only ones a tick updates."""
        first = int(self.scroll_y)
        rows = self.ordered_rows[first:first + max(1, self.size.height)]
        return [row.key.value for row in rows]

    def set_cell(self, key: str, column: str, value: object) -> bool:
        """Update one cell if its value changed; say whether it did."""
        old = self._shown.get(key)
        if old is None:
            return False
        index = self._keys.index(column)
        if _same(old[index], value):
            return False
        self.update_cell(key, column, value)
        self._shown[key] = old[:index] + (value,) + old[index + 1:]
        return True

    def cell(self, key: str, column: str) -> object:
        return self._shown[key][self._keys.index(column)]

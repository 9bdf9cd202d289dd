"""The console's table: draws only the rows on screen, keeps the cursor on its row, moves by key."""
from __future__ import annotations

from textual.app import App, ComposeResult

from app.tui.widgets.keyed_table import KeyedTable, measure

COLUMNS = (("id", "Id", 6), ("name", "Name", None), ("left", "Left", None))


class TableApp(App[None]):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.values = {str(i): [str(i), f"person{i}", "10m"] for i in range(rows)}
        self.made: list[str] = []
        self.selected: list[str] = []
        self.highlighted: list[str | None] = []

    def cells_of(self, key: str) -> list[str]:
        self.made.append(key)
        return self.values[key]

    def compose(self) -> ComposeResult:
        yield KeyedTable(COLUMNS)

    def on_mount(self) -> None:
        self.table.sync(list(self.values), self.cells_of, {"name": [v[1] for v in self.values.values()],
                                                            "left": ["10m"]})
        self.table.focus()

    @property
    def table(self) -> KeyedTable:
        return self.query_one(KeyedTable)

    def on_keyed_table_row_selected(self, message: KeyedTable.RowSelected) -> None:
        self.selected.append(message.key)

    def on_keyed_table_row_highlighted(self, message: KeyedTable.RowHighlighted) -> None:
        self.highlighted.append(message.key)


async def test_ten_thousand_rows_make_only_the_cells_on_screen() -> None:
    app = TableApp(10_000)
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        assert app.table.row_count == 10_000
        assert 0 < len(set(app.made)) <= 20  # one screen of rows, not 10,000
        await pilot.press("end")
        await pilot.pause()
        assert app.table.current_key == "9999" and "9999" in app.table.visible_keys()
        assert len(set(app.made)) <= 40


async def test_cursor_keys_pages_and_the_view_follows() -> None:
    app = TableApp(100)
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down")
        assert app.table.current_key == "2" and app.highlighted[-1] == "2"
        await pilot.press("pagedown")
        page = len(app.table.visible_keys())
        assert app.table.current_key == str(2 + page)
        assert app.table.current_key in app.table.visible_keys()
        await pilot.press("home")
        assert app.table.current_key == "0" and app.table.visible_keys()[0] == "0"
        await pilot.press("up")  # already at the top: stays
        assert app.table.current_key == "0"
        await pilot.press("enter")
        assert app.selected == ["0"]


async def test_the_cursor_stays_on_its_row_when_rows_are_reordered_or_removed() -> None:
    app = TableApp(50)
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "down")
        assert app.table.current_key == "3"
        app.table.sync([str(i) for i in reversed(range(50))], app.cells_of)
        await pilot.pause()
        assert app.table.current_key == "3" and app.table.shown_keys[0] == "49"
        assert "3" in app.table.visible_keys()
        app.table.sync([k for k in app.table.shown_keys if k != "3"], app.cells_of)  # its row went away
        await pilot.pause()
        assert app.table.current_key is not None and app.table.current_key != "3"


async def test_a_changed_row_is_drawn_again_and_nothing_else() -> None:
    app = TableApp(30)
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        drawn: list[str] = []
        original = app.table._line
        app.table._line = lambda cells, *a: (drawn.append(str(cells[0])), original(cells, *a))[1]
        app.table.refresh_rows(app.table.visible_keys())  # nothing changed
        await pilot.pause()
        assert drawn == []
        app.values["2"] = ["2", "person2", "9m"]
        app.table.refresh_rows(app.table.visible_keys())
        await pilot.pause()
        assert set(drawn) == {"2"} and app.table.cell("2", "left") == "9m"


async def test_a_click_moves_the_cursor_and_a_second_click_selects() -> None:
    app = TableApp(30)
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        await pilot.click(KeyedTable, offset=(3, 3))  # the header is line 0: line 3 is row 2
        assert app.table.current_key == "2" and app.selected == []
        await pilot.click(KeyedTable, offset=(3, 3))
        assert app.selected == ["2"]


def test_widths_fit_the_widest_text_or_the_label() -> None:
    rows = [["1", "al", "5m"], ["22", "a much longer name", "10m"]]
    assert measure(COLUMNS, rows) == [6, len("a much longer name"), 4]
    assert measure(COLUMNS, [], {"name": ["bo"], "left": ["1h00m"]}) == [6, 4, 5]

"""Keyed table rows repaint every change (style included); dialogs answer Enter at once."""
from __future__ import annotations

from rich.text import Text
from textual.app import App
from textual.widgets import DataTable

from tui.widgets.tables import KeyedRows


class _Table(App):
    def compose(self):
        yield DataTable()


async def test_a_cell_that_only_changes_style_is_repainted():
    app = _Table()
    async with app.run_test() as pilot:
        table = app.query_one(DataTable)
        table.add_column("#", key="it")
        table.add_column("outcome", key="outcome")
        rows = KeyedRows(["it", "outcome"])
        assert rows.set(table, "2", {"it": Text("2"), "outcome": "training"})
        # the verdict: same text, now bold (Text's == ignores the base style: the bug this guards)
        assert not rows.set(table, "2", {"it": Text("2", style="bold"), "outcome": "keep"})
        await pilot.pause()
        assert str(table.get_cell("2", "it").style) == "bold" and table.get_cell("2", "outcome") == "keep"
        assert not rows.set(table, "2", {"it": Text("2", style="bold"), "outcome": "keep"})  # nothing new


async def test_enter_before_the_dialog_has_focused_a_button_still_answers():
    from tui.screens.confirm import ConfirmScreen

    app = _Table()
    answers: list[str | None] = []
    async with app.run_test() as pilot:
        app.push_screen(ConfirmScreen("Abort?", "", [("abort", "Abort run", "error")]), answers.append)
        await pilot.pause()
        app.screen.set_focus(None)  # as on a busy box: the key arrives before on_mount's focus lands
        await pilot.press("enter")
        await pilot.pause()
    assert answers == ["abort"]

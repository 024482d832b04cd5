"""Widgets that change without re-laying out the screen still take the room their new content needs."""
from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import ScrollableContainer
from textual.widgets import Static

from tui.widgets.growing import update_static


class OneStatic(App):
    CSS = "#box { height: auto; } #wide { width: auto; min-width: 100%; height: auto; } ScrollableContainer { height: 10; }"

    def compose(self) -> ComposeResult:
        yield Static("one line", id="box")
        with ScrollableContainer():
            yield Static("short", id="wide")


async def test_a_static_updated_in_place_grows_and_shrinks_with_its_text():
    app = OneStatic()
    async with app.run_test(size=(40, 20)) as pilot:
        box, wide = app.query_one("#box", Static), app.query_one("#wide", Static)
        await pilot.pause()
        update_static(box, "first\nsecond\nthird")
        await pilot.pause()
        assert box.region.height == 3
        update_static(box, "a\nb\nc")  # as tall: drawn in place, still three rows
        await pilot.pause()
        assert box.region.height == 3 and "b" in str(box.render())
        update_static(box, "back to one")
        await pilot.pause()
        assert box.region.height == 1
        update_static(wide, "x" * 90)  # wider than its container: it scrolls sideways
        await pilot.pause()
        assert wide.region.width == 90
        update_static(wide, "narrow again")
        await pilot.pause()
        assert wide.region.width == 40

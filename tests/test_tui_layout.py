"""The layouts: one pane at a time at 80×24 with header and key bar whole; the width used from 160 columns."""
from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from tui.app import BilevelApp
from tui.sources import ReplaySource
from tui.widgets.tabs import PaneTabs
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import until


def replay(path: Path) -> BilevelApp:
    return BilevelApp(ReplaySource(path, follow=False), deterministic=True)


def shown(app: BilevelApp) -> list[str]:
    """The panes on screen (with a size), by id."""
    return [p.id for p in app.panes if p.display and p.region.width and p.region.height]


async def test_at_80x24_one_pane_shows_at_a_time_and_number_keys_switch(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=6, progress_per_run=3, outer_period=3))
    app = replay(tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.caught_up()
        await until(pilot, lambda: shown(app) == ["trace"], what="the trace alone")
        assert app.base.query_one(PaneTabs).display
        for key, pane in (("2", "strategy"), ("3", "research"), ("4", "patches"), ("5", "events"), ("1", "trace")):
            await pilot.press(key)
            await until(pilot, lambda: shown(app) == [pane], what=f"{pane} alone")
            assert app.base.query_one(PaneTabs).current == pane
            assert app.base.query_one(pane_focus(pane)).has_focus
        await pilot.press("l")  # the event log key shows the log, and again goes back
        await until(pilot, lambda: shown(app) == ["events"], what="the log")
        await pilot.press("l")
        await until(pilot, lambda: shown(app) == ["trace"], what="back to the trace")


def pane_focus(pane: str) -> str:
    from tui.app import PANE_FOCUS

    return PANE_FOCUS[pane]


async def test_at_80x24_the_header_and_key_bar_are_whole_with_help_and_quit(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=6, progress_per_run=3, outer_period=3))
    app = replay(tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.caught_up()
        await pilot.pause()
        lines = app.screen_text().splitlines()
    assert "…" not in lines[0] and "…" not in lines[1]  # nothing cut: pieces left out instead
    assert "● completed" in lines[0] and "iter 6/6" in lines[1] and "best" in lines[1]
    assert "? Help" in lines[-1] and "q Quit" in lines[-1] and "palette" in lines[-1]
    assert "1 Trace" in lines[2] and "5 Events" in lines[2]


async def test_back_from_80_columns_the_panes_share_the_screen_again(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=3, progress_per_run=3))
    app = replay(tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.caught_up()
        await until(pilot, lambda: shown(app) == ["trace"], what="compact")
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: len(shown(app)) == 5, what="every pane back")
        assert not app.base.query_one(PaneTabs).display


async def test_from_160_columns_the_changes_column_grows_to_its_text(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=8, slots=4, progress_per_run=4))
    for size, grows in (((120, 40), False), ((160, 48), True)):
        app = replay(tmp_path / "s")
        async with app.run_test(size=size) as pilot:
            await app.caught_up()
            await pilot.pause()
            table = app.base.query_one("#trace-table", DataTable)
            longest = max(len(str(table.get_cell(row.key, "changes"))) for row in table.ordered_rows)
            width = table.columns["changes"].width  # type: ignore[index]
        assert longest > 26  # two-parameter proposals: wider than the column was
        assert (width > 26) is grows and (not grows or width >= longest or width >= 30), (size, width, longest)


def test_progress_line_says_the_phase_and_time_against_budget_and_grace():
    from tui import render

    text = render.progress_text(12, 0.0, None, None, None, None, "gpu0", "compiling", 14.0, 300.0, 150.0,
                                width=120).plain
    assert "0% compiling 0:14/5:00 +2:30 grace" in text and "gpu0" in text
    late = render.progress_text(12, 100.0, 900, 2.9, None, 0.0, "gpu0", "evaluating", 306.0, 300.0, 150.0, width=120)
    assert "evaluating 5:06/5:00 +2:30 grace" in late.plain
    assert any("red" in str(span.style) for span in late.spans)  # past the budget: said in red
    assert render.progress_text(3, 50.0, 10, 3.0, None, None, "", width=80).cell_len <= 80  # old engines: no phase


def test_the_grace_follows_the_configs_rule():
    from core.record import events as ev
    from tui.model import ViewModel

    model = ViewModel()
    model.apply(ev.SessionStarted(config={"budget": {"time_s": 300.0}}))
    assert model.grace_s == 150.0  # max(60, half the budget) when the config sets none
    model.apply(ev.SessionStarted(config={"budget": {"time_s": 300.0, "grace_s": 20.0}}))
    assert model.grace_s == 20.0
    model.apply(ev.SessionStarted(config={"budget": {"time_s": "soon"}}))
    assert model.grace_s is None


async def test_a_cell_that_only_changes_style_is_repainted():
    """A row first shown while it trained, then kept: its number turns bold (Rich's Text == ignores style)."""
    from rich.text import Text
    from textual.app import App

    from tui.widgets.tables import KeyedRows

    class Table(App):
        def compose(self):
            yield DataTable()

    app = Table()
    async with app.run_test():
        table = app.query_one(DataTable)
        table.add_column("#", key="it")
        rows = KeyedRows(["it"])
        rows.set(table, "1", {"it": Text("1")})
        rows.set(table, "1", {"it": Text("1", style="bold")})
        assert str(table.get_cell("1", "it").style) == "bold"

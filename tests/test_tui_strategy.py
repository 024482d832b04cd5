"""The Strategy pane: parameters the search can move first, the guidance's source and next rewrite, the pin."""
from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from core.record import events as ev
from tui.app import BilevelApp
from tui.screens.guidance import GuidanceScreen
from tui.sources import ReplaySource
from tui.widgets.parts import PartsView
from tui.widgets.strategy import StrategyPane
from tests.support.scripted_engine import SCHEMA, Plan, record_session
from tests.test_tui_app import SLOW, live_app, logged, on_screen, press, received, type_text, until


def guidance_shown(app: BilevelApp) -> str:
    return str(app.base.query_one(StrategyPane).query_one("#guidance", Static).render())


async def test_tried_kept_and_net_gain_fit_at_140_columns_with_locked_parameters_last(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=6, progress_per_run=3, outer_period=3))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(140, 45)) as pilot:
        await app.caught_up()
        await pilot.pause()
        table = app.base.query_one("#params-table", DataTable)
        assert table.max_scroll_x == 0, f"{table.virtual_size.width} columns in {table.scrollable_content_region.width}"
        order = [key.value for key in table.rows]
        text = app.screen_text()
    locked = [n for n, spec in SCHEMA.items() if spec[2]]
    assert locked and order[-len(locked):] == locked
    assert order[:-len(locked)] == [n for n in SCHEMA if n not in locked]
    assert "net gain" in text and "tried" in text and "kept" in text


async def test_guidance_shows_its_source_and_after_which_iteration_level_1_5_rewrites_it(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**{**SLOW, "outer_period": 3})) as (app, pilot, engine):
        await until(pilot, lambda: "from the configuration" in guidance_shown(app), what="the config's guidance")
        assert "may rewrite it after #3" in guidance_shown(app)
        await until(pilot, lambda: app.model.state.guidance_source == "strategy", what="the first cycle")
        await until(pilot, lambda: "from Level 1.5 cycle 1" in guidance_shown(app), what="the cycle as source")
        await until(pilot, lambda: "after #6" in guidance_shown(app), what="the next cycle's iteration")


async def test_pinned_guidance_survives_the_next_cycle_which_says_it_was_not_applied(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**{**SLOW, "outer_period": 3})) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "", what="session start")
        await press(app, "g")
        await until(pilot, on_screen(app, GuidanceScreen))
        app.screen.query_one("TextArea").text = ""
        await type_text(app, "Only the learning rates.")
        await press(app, "ctrl+t")  # pin
        await press(app, "ctrl+s")
        await until(pilot, lambda: app.model.state.guidance_pinned, what="the pinned guidance")
        await until(pilot, lambda: "from you · 📌 pinned" in guidance_shown(app), what="the pin on screen")
        await until(pilot, lambda: any(c.guidance_not_applied for c in app.model.cycles), what="a cycle that lost")

        def cycles() -> str:
            return " ".join(app.base.query_one(StrategyPane).query_one("#cycles-scroll", PartsView).text.split())
        # the live app repaints one pane a tick: wait for the strategy pane's turn, not for a pause
        await until(pilot, lambda: "guidance not applied" in cycles(), what="the lost cycle in the pane")
        assert app.model.state.guidance == "Only the learning rates."
        assert "guidance not applied (the user's guidance is pinned)" in cycles()
    assert [c.args for c in received(engine, "set_guidance")] == [{"guidance": "Only the learning rates.", "pinned": True}]
    assert logged(engine, ev.GuidanceNotApplied) and not [
        e for e in logged(engine, ev.GuidanceChanged) if e.source == "strategy"]

"""The Research pane's reasoning section: a thinking model's reasoning deltas, collapsed until asked for."""
from __future__ import annotations

from pathlib import Path

from textual.widgets import Collapsible

from tui.app import BilevelApp
from tui.sources import ReplaySource
from tui.widgets.research import ResearchPane
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import until


async def test_reasoning_deltas_show_in_a_collapsed_section_that_t_opens(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2, reasoning=True))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.caught_up()
        await pilot.press("3")
        await pilot.pause()
        pane = app.base.query_one(ResearchPane)
        section = pane.query_one("#research-reasoning", Collapsible)
        assert section.has_class("-present") and section.collapsed
        assert "Reasoning ·" in app.screen_text() and "Thinking about the explore round" not in app.screen_text()
        await pilot.press("t")
        await until(pilot, lambda: not section.collapsed, what="expanded")
        await pilot.pause()
        text = app.screen_text()
        assert "── explore ──" in text and "Thinking about the explore round" in text
        await pilot.press("t")
        await until(pilot, lambda: section.collapsed, what="collapsed again")


async def test_no_reasoning_section_when_the_model_streamed_none(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.caught_up()
        await pilot.press("3", "t")
        await pilot.pause()
        assert not app.base.query_one("#research-reasoning").has_class("-present")
        assert "Reasoning ·" not in app.screen_text()
        assert any("no reasoning" in str(n.message) for n in app._notifications)

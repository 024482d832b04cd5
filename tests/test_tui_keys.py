"""Key hygiene: ? lists the focused pane's own keys first; the command palette has no duplicate entries."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tui.app import BilevelApp
from tui.screens.help import HelpScreen
from tui.sources import ReplaySource
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import until


async def test_help_lists_the_focused_panes_keys_hidden_ones_included(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        for number, title, ids in (("4", "Patches", {"patches.toggle_diff", "patches.next", "patches.previous"}),
                                   ("3", "Mechanism research", {"research.reasoning", "research.previous"})):
            await pilot.press(number, "question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
            screen = app.screen
            assert ids <= {bid for _, _, bid in screen.pane_keys} and screen.pane_title.startswith(title)
            assert not ids & {bid for _, _, bid in screen.keys}  # listed once, in the pane's section
            await pilot.pause()
            assert f"Keys of the focused pane: {title}" in app.screen_text()
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="closed")


async def test_the_command_palette_has_no_duplicate_entries(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        titles = [c.title for c in app.get_system_commands(app.screen)]
    assert [t for t, n in Counter(titles).items() if n > 1] == []
    assert titles.count("Quit") == 1 and "Keys" not in titles

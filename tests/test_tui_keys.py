"""Key hygiene: ? lists the focused pane's own keys first, and the keys that do nothing now dimmed; the command
palette has no duplicate entries; the key bar keeps ? Help and q Quit whole at every size; the focused pane alone
is lit."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from textual.color import Color

import msgspec

from core.record import events as ev
from tests.support.queue_source import QueueSource
from tui.app import BilevelApp
from tui.screens.help import HelpScreen
from tui.sources import ReplaySource
from tui.widgets.keybar import KeyBar
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


async def test_the_help_lists_the_keys_that_do_nothing_now_dimmed_and_says_so():
    source = QueueSource()
    app = BilevelApp(source, deterministic=True)
    stamped = [msgspec.structs.replace(e, seq=i + 1, ts=1_700_000_000.0 + i) for i, e in enumerate(
        [ev.SessionStarted(session="s", name="s", provider="offline", group="C", levels=["inner"]),
         ev.IterationStarted(iteration=0), ev.TrainingStarted(iteration=0, budget_s=60)])]
    async with app.run_test(size=(120, 40)) as pilot:
        for events, idle in ((stamped[:1], True), (stamped[1:], False)):  # no run to abort, then one
            source.push(*events)
            await app.caught_up()
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
            await pilot.pause()
            assert "abort_training" in {bid for _, _, bid in app.screen.keys}  # listed either way
            assert ("abort_training" in app.screen.idle) is idle
            assert ("[abort_training] not now" in app.screen_text()) is idle
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


def key_bar_line(app: BilevelApp) -> str:
    return app.screen_text().rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_key_bar_keeps_help_and_quit_whole_with_each_pane_focused(tmp_path: Path, size: tuple[int, int]):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=size) as pilot:
        await app.caught_up()
        for number, pane in (("2", "strategy"), ("3", "research"), ("4", "patches"), ("5", "events"), ("1", "trace")):
            await pilot.press(number)
            await until(pilot, lambda: app._focused_pane() is app.base.query_one(f"#{pane}"), what=pane)
            await pilot.pause()
            line = key_bar_line(app)
            assert len(line) == size[0], line
            assert " ? Help " in line and " q Quit " in line and line.endswith("▏^p palette "), (pane, line)
            if size[0] >= 200:  # the width for the pane's own keys too
                own = {"research": "[ Prev research  ] Next research", "patches": "d Source/diff"}.get(pane)
                assert own is None or own in line, (pane, line)


async def test_the_key_bar_shows_a_panes_keys_all_or_none(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        await pilot.press("3")
        await until(pilot, lambda: app._focused_pane() is app.base.query_one("#research"), what="research")
        await pilot.pause()
        line = key_bar_line(app)
        assert ("Prev research" in line) == ("Next research" in line), line
        assert "z Maximise" in line  # the app's keys come before a pane's


async def test_a_click_on_a_key_in_the_key_bar_presses_it(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        await pilot.pause()
        column = key_bar_line(app).index(" ? Help ") + 2
        await pilot.click(KeyBar, offset=(column, 0))
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")


async def test_the_focused_pane_alone_has_the_accent_border(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        accent = Color.parse(app.theme_variables["accent"])
        for number, pane in (("2", "strategy"), ("4", "patches"), ("1", "trace")):
            await pilot.press(number)
            await until(pilot, lambda: app._focused_pane() is app.base.query_one(f"#{pane}"), what=pane)
            await pilot.pause()
            lit = {p.id for p in app.panes if p.styles.border.top[1] == accent}
            assert lit == {pane} and [p.id for p in app.panes if p.lit] == [pane]
        app.theme = "nord"  # another accent: the lit border follows the theme
        trace = app.base.query_one("#trace")
        await until(pilot, lambda: trace.styles.border.top[1] == Color.parse(app.theme_variables["accent"]) != accent,
                    what="the new accent")

"""What each pane looks like, as SVG snapshots, on a recorded session at 120×40 and 80×24; the main
screen, the iteration detail view and the slots pane of a four-GPU run also at 200×50.

The session is the scripted one with a stepped clock, so every byte of it is the same on
every run; the app runs in its deterministic mode (no wall clock, no blinking cursor, no
animation). Update the snapshots after a deliberate change with ``--snapshot-update``.
"""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from core.record import events as ev
from tui.app import BilevelApp
from tui.sources import LiveSource, ReplaySource
from tests.support.scripted_engine import Plan, ScriptedEngine, StepClock, record_session

SIZES = {"120x40": (120, 40), "80x24": (80, 24)}
LAYOUT_SIZES = {**SIZES, "200x50": (200, 50)}  # compact (one pane at a time), the usual, and broad
PANES = {"trace": "1", "strategy": "2", "research": "3", "patches": "4", "events": "5"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snapshots") / "demo-session"
    asyncio.run(record_session(path, Plan(iterations=12, progress_per_run=6, outer_period=5, research_period=1)))
    return path


def replay_app(path: Path) -> BilevelApp:
    return BilevelApp(ReplaySource(path, follow=False), deterministic=True)


def settle(*keys: str):
    async def run_before(pilot) -> None:
        await pilot.app.caught_up()
        for key in keys:
            await pilot.press(key)
        await pilot.app.caught_up()
        await pilot.pause()
    return run_before


@pytest.fixture(scope="module")
def four_gpus(tmp_path_factory) -> Path:
    """A four-GPU run (one more GPU skipped) cut while four trials train: the log up to its ninth verdict."""
    whole = tmp_path_factory.mktemp("slots") / "whole"
    asyncio.run(record_session(whole, Plan(iterations=16, slots=4, gpus=True, skipped_gpus=1, progress_per_run=9,
                                           outer_period=5)))
    cut = whole.parent / "four-gpus"
    shutil.copytree(whole, cut)
    lines = (cut / "events.jsonl").read_bytes().splitlines(keepends=True)
    verdicts = [i for i, line in enumerate(lines) if ev.decode(line).type == "iteration_finished"]
    end = verdicts[8] - 3  # a few progress lines before the ninth verdict: every slot busy
    (cut / "events.jsonl").write_bytes(b"".join(lines[:end]))
    return cut


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_whole_screen_after_a_session(snap_compare, recorded: Path, size: str):
    assert snap_compare(replay_app(recorded), terminal_size=LAYOUT_SIZES[size], run_before=settle())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pane", PANES)
def test_each_pane_maximised(snap_compare, recorded: Path, pane: str, size: str):
    assert snap_compare(replay_app(recorded), terminal_size=SIZES[size], run_before=settle(PANES[pane], "z"))


def test_mechanism_awaiting_approval(snap_compare, tmp_path: Path):
    plan = Plan(iterations=6, progress_per_run=4, outer_period=2, approval="manual", finish=False)
    engine = ScriptedEngine(tmp_path / "pending-session", plan, clock=StepClock())
    source = LiveSource(engine)
    app = BilevelApp(source, deterministic=True)
    # No toasts: which "waits for approval" toasts are up, and whether one is still leaving, depends
    # on how the repaints fell while the run streamed in; the subject here is the approval screen.
    app.notify = lambda *args, **kwargs: None  # type: ignore[method-assign]

    async def run_before(pilot) -> None:
        source.engine_task = asyncio.create_task(engine.run())
        await source.engine_task  # the run goes on while a mechanism waits; this one ends unfinished
        await app.caught_up()
        while not app.model.pending:  # the last batch may still be on its way into the model
            await pilot.pause(0.05)
        await app._repaint()
        table = app.base.query_one("#trace-table")
        table.move_cursor(row=table.row_count - 1, animate=False)  # where the cursor ends up also raced
        await pilot.press("v")
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
    finally:
        engine.writer.close()


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_iteration_detail_view(snap_compare, recorded: Path, size: str):
    async def run_before(pilot) -> None:
        await pilot.app.caught_up()
        table = pilot.app.base.query_one("#trace-table")
        table.focus()
        table.move_cursor(row=4, animate=False)  # the crashed iteration: its log tail and reason
        await pilot.press("enter")
        await pilot.pause()
        await pilot.app.caught_up()
        await pilot.pause()

    assert snap_compare(replay_app(recorded), terminal_size=LAYOUT_SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_slots_pane_with_four_gpus(snap_compare, four_gpus: Path, size: str):
    assert snap_compare(replay_app(four_gpus), terminal_size=LAYOUT_SIZES[size], run_before=settle())

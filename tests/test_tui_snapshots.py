"""What each pane looks like, as SVG snapshots, on a recorded session at 120×40 and 80×24.

The session is the scripted one with a stepped clock, so every byte of it is the same on
every run; the app runs in its deterministic mode (no wall clock, no blinking cursor, no
animation). Update the snapshots after a deliberate change with ``--snapshot-update``.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tui.app import BilevelApp
from tui.sources import LiveSource, ReplaySource
from tests.support.scripted_engine import Plan, ScriptedEngine, StepClock, record_session

SIZES = {"120x40": (120, 40), "80x24": (80, 24)}
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


@pytest.mark.parametrize("size", SIZES)
def test_whole_screen_after_a_session(snap_compare, recorded: Path, size: str):
    assert snap_compare(replay_app(recorded), terminal_size=SIZES[size], run_before=settle())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pane", PANES)
def test_each_pane_maximised(snap_compare, recorded: Path, pane: str, size: str):
    assert snap_compare(replay_app(recorded), terminal_size=SIZES[size], run_before=settle(PANES[pane], "z"))


def test_mechanism_awaiting_approval(snap_compare, tmp_path: Path):
    plan = Plan(iterations=6, progress_per_run=4, outer_period=2, approval="manual", finish=False)
    engine = ScriptedEngine(tmp_path / "pending-session", plan, clock=StepClock())
    source = LiveSource(engine)
    app = BilevelApp(source, deterministic=True)

    async def run_before(pilot) -> None:
        source.engine_task = asyncio.create_task(engine.run())
        await source.engine_task  # the run goes on while a mechanism waits; this one ends unfinished
        await app.caught_up()
        await pilot.press("v")
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
    finally:
        engine.writer.close()

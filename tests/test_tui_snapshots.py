"""What each pane looks like, as SVG snapshots, on a recorded session at 120×40 and 80×24; the main
screen, the iteration detail view, the slots pane of a four-GPU run and the approval states also at
200×50.

The session is the scripted one with a stepped clock, so every byte of it is the same on
every run; the app runs in its deterministic mode (no wall clock, no blinking cursor, no
animation). Update the snapshots after a deliberate change with ``--snapshot-update``.
"""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from textual.widget import Widget

from core.record import events as ev
from tui.app import BilevelApp
from tui.sources import LiveSource, ReplaySource
from tui.widgets.parts import PartsView
from tests.support.patience import patience
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
        await drawn(pilot)
    return run_before


def views_drawn(app: BilevelApp) -> bool:
    """Every text view the layout shows is drawn at its laid-out width and, if it follows, at its end.

    A view shown by a key (the compact layout's pane switch) is laid out on the screen's next update,
    a timer's tick, and drawn in its resize handler after that; a following view's scroll to the end
    lands after a refresh. Waiting for idle covers none of these: on a loaded machine the snapshot
    was taken before them (a blank research pane at 80×24)."""
    maximized = app.screen.maximized
    for view in app.screen.query(PartsView):
        if not all(node.display for node in view.ancestors_with_self if isinstance(node, Widget)):
            continue  # hidden (the compact layout shows one pane)
        if maximized is not None and maximized not in view.ancestors_with_self:
            continue  # another pane is maximised: this one is not laid out, so it is never drawn
        if not view.drawn or (view.following and view.scroll_y < view.max_scroll_y):
            return False
    return True


async def drawn(pilot) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience(60)  # a hang guard, not a target
    await pilot.pause()
    while not views_drawn(pilot.app):
        if loop.time() > deadline:
            raise AssertionError("a shown text view was never drawn")
        await pilot.pause(0.02)


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


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_mechanism_awaiting_approval(snap_compare, tmp_path: Path, size: str):
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
        while not approve_key(app).enabled:  # and whether the key bar had caught up
            await pilot.pause(0.05)
        await pilot.press("v")
        await drawn(pilot)

    try:
        assert snap_compare(app, terminal_size=LAYOUT_SIZES[size], run_before=run_before)
    finally:
        engine.writer.close()


def approve_key(app: BilevelApp):
    from tui.widgets.keybar import KeyBar

    return next(k for k in app.base.query_one(KeyBar).keys if k.action == "review_mechanism")


RESEARCH_ID, MECHANISM = "r1-0001", "TabuMemory1"  # the scripted run's one research session (after #3)
APPROVAL_STATES: dict[str, list[ev.Event]] = {
    "pending": [],
    "approved": [ev.MechanismApproved(research_id=RESEARCH_ID, name=MECHANISM, activates_at=4)],
    "active": [ev.MechanismApproved(research_id=RESEARCH_ID, name=MECHANISM, activates_at=4),
               ev.MechanismActivated(name=MECHANISM, origin="generated", hooks=["review_proposal", "observe"],
                                     description=f"generated by research {RESEARCH_ID}"),
               ev.ResearchFinished(research_id=RESEARCH_ID, outcome="activated", name=MECHANISM,
                                   reason="approved; activated at the boundary before #4"),
               ev.IterationStarted(iteration=4)],
    "declined": [ev.ResearchFinished(research_id=RESEARCH_ID, outcome="declined", name=MECHANISM,
                                     reason="rejected by the user (app)")],
    "expired": [ev.ResearchFinished(research_id=RESEARCH_ID, outcome="expired", name=MECHANISM,
                                    reason="the run ended (stopped) before it was approved"),
                ev.RunFinished(status="stopped", reason="stopped from the app", iterations=3)],
}


@pytest.fixture(scope="module")
def awaiting(tmp_path_factory) -> Path:
    """A five-iteration run cut where its one validated mechanism starts to wait for the user (after #3)."""
    path = tmp_path_factory.mktemp("approval") / "awaiting"
    asyncio.run(record_session(path, Plan(iterations=5, progress_per_run=4, outer_period=3, approval="manual",
                                          finish=False)))
    lines = (path / "events.jsonl").read_bytes().splitlines(keepends=True)
    pending = next(i for i, line in enumerate(lines) if ev.decode(line).type == "mechanism_pending")
    (path / "events.jsonl").write_bytes(b"".join(lines[:pending + 1]))
    return path


def approval_state(awaiting: Path, into: Path, state: str) -> Path:
    """The awaiting session with what the engine logs for ``state`` appended (timestamps stepped on)."""
    from core.record.session import SessionReader, SessionWriter

    session = into / f"approval-{state}"
    shutil.copytree(awaiting, session)
    last = list(SessionReader(session).events())[-1]
    clock = StepClock(start=last.ts)
    writer = SessionWriter(session, clock=clock)
    try:
        for event in APPROVAL_STATES[state]:
            clock.advance(0.5)
            writer.append(event)
    finally:
        writer.close()
    return session


@pytest.mark.parametrize("size", LAYOUT_SIZES)
@pytest.mark.parametrize("state", APPROVAL_STATES)
def test_approval_states(snap_compare, awaiting: Path, tmp_path: Path, state: str, size: str):
    session = approval_state(awaiting, tmp_path, state)
    assert snap_compare(replay_app(session), terminal_size=LAYOUT_SIZES[size], run_before=settle("3"))


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
        await drawn(pilot)

    assert snap_compare(replay_app(recorded), terminal_size=LAYOUT_SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_slots_pane_with_four_gpus(snap_compare, four_gpus: Path, size: str):
    assert snap_compare(replay_app(four_gpus), terminal_size=LAYOUT_SIZES[size], run_before=settle())

"""The app with parallel trials: the slots pane, the trace in finish order, aborting one trial or all.

Real Textual pilots against the scripted engine running four trials at once
(:mod:`tests.support.scripted_slots`), live and replayed.
"""
from __future__ import annotations

from pathlib import Path

from textual.widgets import Button, DataTable

from core.record import events as ev
from core.record.session import SessionReader
from tui.app import BilevelApp
from tui.screens.confirm import ConfirmScreen
from tui.sources import ReplaySource
from tui.widgets.slots import SlotsView
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import SIZE, live_app, logged, on_screen, press, received, until

LONG_TRIALS = dict(iterations=40, slots=4, gpus=True, skipped_gpus=1, step_s=0.004, progress_per_run=1000,
                   crash_at=None, reask_at=None)


def table_order(app: BilevelApp) -> list[int]:
    table = app.base.query_one("#trace-table", DataTable)
    return [int(row.key.value) for row in table.ordered_rows]


async def test_slots_pane_shows_each_slot_with_its_trial_progress_and_gpu(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**LONG_TRIALS)) as (app, pilot, engine):
        await until(pilot, lambda: len(app.model.in_flight) == 4, what="four trials in flight")
        await until(pilot, lambda: all(s.sample is not None for s in app.model.trials.working_slots),
                    what="a GPU sample of every slot")
        await app._repaint()
        text = app.screen_text()
        running = app.model.in_flight
        assert app.base.query_one(SlotsView).display
    lines = {line.split("│")[1].split()[0]: line for line in text.splitlines()
             if line.startswith("│gpu")}
    assert sorted(lines) == ["gpu0", "gpu1", "gpu2", "gpu3", "gpu4"], text
    for n in running:
        assert any(f"#{n} " in line for line in lines.values()), (n, lines)
    for name in ("gpu0", "gpu1", "gpu2", "gpu3"):
        assert "/80G" in lines[name] and "%" in lines[name]  # memory against size, utilisation
    assert "skipped: another user's process" in lines["gpu4"]
    assert "slots 4/4 busy" in text


async def test_replayed_trace_is_in_finish_order_with_the_slot_named(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=12, slots=4, progress_per_run=6))
    verdicts = [e.iteration for e in SessionReader(tmp_path / "s").events() if isinstance(e, ev.IterationFinished)]
    slots = {e.iteration: e.slot for e in SessionReader(tmp_path / "s").events() if isinstance(e, ev.TrainingStarted)}
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await pilot.pause()
        order = table_order(app)
        table = app.base.query_one("#trace-table", DataTable)
        shown_slots = {n: str(table.get_cell(str(n), "slot")) for n in order}
        phases = {n: app.model.row(n).phase for n in order}
    assert verdicts != sorted(verdicts)  # the plan finishes out of order, so the order below means something
    assert order == verdicts
    assert shown_slots == slots
    assert all(phases[n] in ("baseline", "keep", "discard", "crash") for n in order)  # every verdict shown


async def test_a_one_slot_run_has_no_slots_pane_and_no_slot_column(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=3, progress_per_run=3))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZE):
        await app.caught_up()
        table = app.base.query_one("#trace-table", DataTable)
        assert not app.base.query_one(SlotsView).display
        assert "slot" not in [str(c.key.value) for c in table.ordered_columns]
        assert table_order(app) == [0, 1, 2, 3]


async def test_x_aborts_the_highlighted_trial_and_the_other_slots_go_on(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**LONG_TRIALS)) as (app, pilot, engine):
        await until(pilot, lambda: len(app.model.in_flight) == 4, what="four trials in flight")
        await app._repaint()
        highlighted = app.base.query_one("TracePane").highlighted_iteration()
        others = [n for n in app.model.in_flight if n != highlighted]
        assert highlighted in app.model.in_flight  # the cursor follows the newest row: a trial in flight
        await press(app, "x")
        await until(pilot, on_screen(app, ConfirmScreen))
        assert app.screen.query(Button).first().id == f"answer-it-{highlighted}"
        await press(app, "enter")  # the focused first answer: the highlighted trial
        await until(pilot, lambda: app.model.row(highlighted).phase == "cancelled", what="the cancelled verdict")
        still = [n for n in others if n in app.model.in_flight]
    assert [c.args for c in received(engine, "abort_training")] == [{"iteration": highlighted}]
    cancelled = [e.iteration for e in logged(engine, ev.IterationFinished) if e.decision == "cancelled"]
    assert cancelled == [highlighted]
    assert still  # the other trials were still training when it was cancelled


async def test_x_all_aborts_every_trial_in_flight(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**LONG_TRIALS)) as (app, pilot, engine):
        await until(pilot, lambda: len(app.model.in_flight) == 4, what="four trials in flight")
        await press(app, "x")
        await until(pilot, on_screen(app, ConfirmScreen))
        app.screen.query_one("#answer-all", Button).press()
        await until(pilot, lambda: bool(received(engine, "abort_training")), what="the abort")
        await until(pilot, lambda: len([r for r in app.model.rows.values()
                                        if app.model.row(r.iteration).phase == "cancelled"]) == 4,
                    what="four cancelled verdicts")
    ack = received(engine, "abort_training")
    assert [a.args for a in ack] == [{"iteration": None}] and ack[0].ok
    assert len([e for e in logged(engine, ev.IterationFinished) if e.decision == "cancelled"]) == 4


async def test_a_replay_jump_keeps_the_latest_progress_of_every_trial_in_flight(tmp_path: Path):
    from tui.sources import SessionLog

    await record_session(tmp_path / "s", Plan(iterations=8, slots=4, progress_per_run=12, crash_at=None))
    log = SessionLog()
    log.extend((tmp_path / "s" / "events.jsonl").read_bytes())
    evs = log.events(0, len(log))
    # cut in the middle of a stretch where four trials stream progress
    cut = next(i for i, e in enumerate(evs) if isinstance(e, ev.TrainingProgress) and e.iteration == 4) + 8
    latest = {}
    for e in evs[:cut]:
        if isinstance(e, ev.TrainingProgress):
            latest[e.iteration] = e
    shown = [e for e in log.for_display(0, cut) if isinstance(e, ev.TrainingProgress)]
    assert {e.iteration: e for e in shown[-4:]} == {n: latest[n] for n in (1, 2, 3, 4)}

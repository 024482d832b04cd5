"""What a demanding researcher notices in the app's first hour (issue 28), each at 80×24, 120×40 and 200×50.

Real pilots on recorded or hand-written sessions (a stepped clock: every timestamp is fixed), the
app in its deterministic mode; nothing waits on the wall clock, every wait is for a state.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.change import ParamChange
from core.record.session import SessionWriter
from tui.app import BilevelApp
from tui.detail import iteration_detail
from tui.model import ViewModel
from tui.screens.confirm import ConfirmScreen
from tui.sources import LiveSource, ReplaySource
from tui.widgets.keybar import KeyBar
from tui.widgets.strategy import PARAM_COLUMNS, param_rows
from tui.widgets.trace import COLUMNS
from tests.support.scripted_engine import Plan, ScriptedEngine, StepClock, record_session
from tests.test_tui_app import on_screen, until

SIZES = {"80x24": (80, 24), "120x40": (120, 40), "200x50": (200, 50)}
SCHEMA = {name: {"kind": kind, "value": value, "locked": False} for name, kind, value in (
    ("MATRIX_LR", "float", 0.04), ("EMBEDDING_LR", "float", 0.6), ("ADAM_BETAS", "tuple", (0.8, 0.95)),
    ("WEIGHT_DECAY", "float", 0.2), ("WARMUP_RATIO", "float", 0.0), ("WARMDOWN_RATIO", "float", 0.5),
    ("DEVICE_BATCH_SIZE", "int", 128))}


def write(path: Path, events: list[tuple[float, ev.Event]]) -> Path:
    """A session by hand: each event after the given seconds on a stepped clock."""
    clock = StepClock()
    writer = SessionWriter(path, clock=clock)
    try:
        for after, event in events:
            clock.advance(after)
            writer.append(event)
    finally:
        writer.close()
    return path


def started(iterations: int = 4) -> ev.SessionStarted:
    return ev.SessionStarted(session="by-hand", group="A", levels=["inner"], provider="offline", schema=SCHEMA,
                             config={"budget": {"iterations": iterations, "time_s": 300}})


def verdict(n: int, decision: str, val: float | None, best: float, **kw) -> ev.IterationFinished:
    return ev.IterationFinished(iteration=n, decision=decision, val_bpb=val, best_before=best,  # type: ignore[arg-type]
                                changes=ParamChange(params={"MATRIX_LR": 0.05 + n / 100}) if n else ParamChange(params={}), **kw)


async def shown(app: BilevelApp, pilot, *keys: str) -> str:
    await app.caught_up()
    for key in keys:
        await pilot.press(key)
    await app.caught_up()
    await pilot.pause()
    return app.screen_text()


# --- 1 and 4: the plot, and failures named for what they were ---------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_an_out_of_memory_run_is_named_so_and_marked_on_the_plots_axis(tmp_path: Path, size: str):
    await record_session(tmp_path / "s", Plan(iterations=6, progress_per_run=3, outer_period=5, crash_at=4))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        text = await shown(app, pilot, "1", "z")  # the trace maximised: its plot shows at every size
        row = next(line for line in text.splitlines() if line.strip("│ ").startswith("4 "))
        assert "out of mem" in row and "crash" not in row
        lines = text.splitlines()
        axis = next(i for i, line in enumerate(lines) if line.strip("│ ").startswith("iter #0"))
        legend = max(i for i in range(axis) if "val_bpb" in lines[i] and "━ best" in lines[i])  # a row of its own
        assert axis - legend >= 3
        assert "✗" in lines[axis] and "✗" not in "".join(lines[legend + 1:axis])  # on the axis, not a value's row


def test_the_outcome_column_holds_a_retry_and_a_failures_name():
    width = dict((key, w) for key, _, w in COLUMNS)["outcome"]
    assert width >= len("training (2)") and width >= len("out of mem")


# --- 2: the Strategy pane ---------------------------------------------------------------------------------------


def test_a_value_too_long_for_its_column_is_cut_with_an_ellipsis():
    model = ViewModel()
    model.apply(started())
    cells = param_rows(model)["ADAM_BETAS"]
    width = dict((key, w) for key, _, w in PARAM_COLUMNS)["value"]
    assert cells["value"].endswith("…") and len(cells["value"]) < width
    assert cells["value"].startswith("(0.8, 0")


@pytest.mark.parametrize("size", SIZES)
async def test_the_strategy_pane_shows_six_parameter_rows(tmp_path: Path, size: str):
    await record_session(tmp_path / "s", Plan(iterations=6, progress_per_run=3, outer_period=5))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        text = await shown(app, pilot, "2")
        from tests.support.scripted_engine import SCHEMA as SCRIPTED

        rows = [line for line in text.splitlines()
                if re.search(rf"\b({'|'.join(SCRIPTED)})\S*\s*(active|frozen|locked)\b", line)]
        assert len(rows) >= 6, text  # the scripted script has eleven parameters


# --- 3: a run that has printed no step yet ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_a_starting_run_shows_its_own_clock_and_what_it_waits_for(tmp_path: Path, size: str):
    session = write(tmp_path / "s", [
        (0, started()), (1, ev.IterationStarted(iteration=0)),
        (1, ev.TrainingStarted(iteration=0, slot="gpu0", budget_s=300)),
        (0, ev.TrainingProgress(iteration=0, phase="starting")),
        (41, ev.TrainingOutput(iteration=0, stream="stderr", line="UserWarning: loading the data shards")),
    ])
    app = BilevelApp(ReplaySource(session, follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        text = await shown(app, pilot, "1")
        bar = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("#0 "))
        assert "starting 0:41" in bar and ("waiting for the first step" in bar or "no step yet" in bar)
        assert "0:00/" not in bar  # the budget is not counting yet: no frozen budget clock


# --- 5: parallel trials: one abort button per running trial -----------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_the_abort_dialog_has_a_button_for_every_running_trial(tmp_path: Path, size: str):
    import shutil

    whole = tmp_path / "whole"
    await record_session(whole, Plan(iterations=12, slots=4, gpus=True, progress_per_run=9, outer_period=5))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    lines = (cut / "events.jsonl").read_bytes().splitlines(keepends=True)
    verdicts = [i for i, line in enumerate(lines) if ev.decode(line).type == "iteration_finished"]
    (cut / "events.jsonl").write_bytes(b"".join(lines[:verdicts[6] - 3]))  # four trials training
    app = BilevelApp(ReplaySource(cut, follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        await shown(app, pilot)
        running = app.model.in_flight
        assert len(running) == 4
        app._abort_which()  # what x asks in a live run (a replay sends nothing)
        await until(pilot, on_screen(app, ConfirmScreen), what="the abort dialog")
        await pilot.pause()
        ids = [b.id for b in app.screen.query("Button")]
        assert sorted(ids[:-2]) == sorted(f"answer-it-{n}" for n in running) and ids[-2:] == ["answer-all", "answer-cancel"]
        assert all(b.region.right <= SIZES[size][0] and b.size.width >= 6 for b in app.screen.query("Button"))
        text = app.screen_text()
        assert all(f"#{n} gpu" in text for n in running)


# --- 6: manual approval -----------------------------------------------------------------------------------------


def _pending_events(builtin: bool) -> list[tuple[float, ev.Event]]:
    return [(0, started(iterations=6)), (1, verdict(0, "baseline", 1.0, 1.0)), (1, verdict(1, "keep", 0.99, 1.0)),
            (1, ev.ResearchStarted(research_id="r1-0001", cycle=1, after_iteration=1, source="offline")),
            (1, ev.MechanismPending(research_id="r1-0001", name="TabuMemory", source="mechanisms/r1-0001-TabuMemory.py"
                                    if builtin else ""))]


@pytest.mark.parametrize("size", SIZES)
async def test_a_pending_builtin_says_its_key_when_it_expires_and_is_listed_in_patches(tmp_path: Path, size: str):
    session = write(tmp_path / "s", _pending_events(builtin=True))
    app = BilevelApp(ReplaySource(session, follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        header = (await shown(app, pilot)).splitlines()[0]
        assert "to approve (v) before #6" in header or "to approve (v)" in header and size == "80x24"
        assert app.model.expiry_text() == " before #6 is proposed (4 iterations left), or it expires"
        text = await shown(app, pilot, "4")
        assert "TabuMemory ⚑ pending" in text
        text = await shown(app, pilot, "5" if size == "80x24" else "1")
        assert "waits for your approval: press v" in text and "bilevel attach, then approve" not in text
        assert any("press v before #6 is proposed" in line for line in app.model.log)


def test_a_pending_mechanism_in_patches_takes_its_outcome():
    model = ViewModel()
    for _, event in _pending_events(builtin=True):
        model.apply(event)
    model.apply(ev.ResearchFinished(research_id="r1-0001", outcome="expired", name="TabuMemory", reason="late"))
    labels = [p.label for p in model.patches.values()]
    assert labels == ["TabuMemory ⌛ expired (r1-0001)"]


# --- 7: the event log and the palette ---------------------------------------------------------------------------


def test_every_event_log_line_has_a_timestamp_and_level2_lines_no_raw_newline():
    model = ViewModel()
    model.apply(ev.SessionStarted(session="s", ts=100.0))
    model.apply(ev.NoiseStarted(runs=3, seeds=[1, 2, 3], fingerprint="f", seed_note="the script fixes its seed",
                                ts=101.0))
    model.apply(ev.ResearchRound(research_id="r1", round="critique", summary="first line\nsecond line", ts=102.0))
    lines = list(model.log)
    assert lines and all(line[:7].count(":") == 2 for line in lines), lines  # H:MM:SS on every line
    assert any("the seed is fixed" in line for line in lines)
    research = next(line for line in lines if "critique" in line)
    assert "\\n" not in research and "first line second line" in research


@pytest.mark.parametrize("size", SIZES)
async def test_the_palette_has_no_near_twin_entries(tmp_path: Path, size: str):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        await shown(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        words = [frozenset(t.lower().replace("/", " ").split()) - {"the", "a"} for t in titles]
        assert len(titles) == len(set(titles))
        assert "Show / hide the event log" in titles and "Focus the events pane" not in titles
        assert not any(a < b or b < a for i, a in enumerate(words) for b in words[i + 1:]), titles


# --- 8: the detail view ------------------------------------------------------------------------------------------


def _detail_model() -> ViewModel:
    model = ViewModel()
    for event in [started(), verdict(0, "baseline", 1.0, 1.0, values={"MATRIX_LR": 0.04}),
                  ev.IterationStarted(iteration=1), ev.ProposalMade(iteration=1, changes=ParamChange(params={"MATRIX_LR": 0.06})),
                  verdict(1, "keep", 0.99, 1.0, values={"MATRIX_LR": 0.06}),
                  ev.IterationStarted(iteration=2), ev.ProposalMade(iteration=2, changes=ParamChange(params={"MATRIX_LR": 0.08})),
                  ev.MechanismEffect(iteration=2, name="Tabu", hook="shape_prompt", effect="prompt", detail="listed 1"),
                  ev.TrainingStarted(iteration=2, slot="gpu0", budget_s=300),
                  ev.IterationInterrupted(iteration=2, reason="detached"),
                  ev.IterationStarted(iteration=2), ev.ProposalMade(iteration=2, changes=ParamChange(params={"MATRIX_LR": 0.08})),
                  ev.MechanismEffect(iteration=2, name="Tabu", hook="shape_prompt", effect="prompt", detail="listed 1"),
                  ev.TrainingStarted(iteration=2, slot="gpu0", budget_s=300),
                  ev.TrainingProgress(iteration=2, phase="starting")]:
        model.apply(event)
    return model


def test_the_detail_view_shows_the_value_replaced_one_prompt_after_a_rerun_and_no_step_none():
    text = iteration_detail(_detail_model(), 2, lambda rel: None).plain
    assert "MATRIX_LR = 0.08   (was 0.06; baseline 0.04)" in text  # the kept 0.06 it replaced
    assert text.count("shape_prompt → prompt") == 1
    assert "None" not in text and "starting" in text


@pytest.mark.parametrize("size", SIZES)
async def test_the_detail_view_on_screen(tmp_path: Path, size: str):
    model_events = [started(), verdict(0, "baseline", 1.0, 1.0, values={"MATRIX_LR": 0.04}),
                    ev.IterationStarted(iteration=1), ev.ProposalMade(iteration=1, changes=ParamChange(params={"MATRIX_LR": 0.06})),
                    verdict(1, "keep", 0.99, 1.0, values={"MATRIX_LR": 0.06}),
                    ev.IterationStarted(iteration=2), ev.ProposalMade(iteration=2, changes=ParamChange(params={"MATRIX_LR": 0.08})),
                    ev.TrainingStarted(iteration=2, slot="gpu0", budget_s=300),
                    ev.TrainingProgress(iteration=2, phase="starting")]
    session = write(tmp_path / "s", [(1, e) for e in model_events])
    app = BilevelApp(ReplaySource(session, follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        await shown(app, pilot, "1")
        table = app.base.query_one("#trace-table")
        table.move_cursor(row=table.row_count - 1, animate=False)
        await pilot.press("enter")
        from tui.screens.detail import IterationDetailScreen

        await until(pilot, on_screen(app, IterationDetailScreen), what="the detail view")
        await pilot.pause()
        text = app.screen_text()
        assert "(was 0.06; baseline 0.04)" in text and "step None" not in text


# --- 9: after the run ends ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_an_ended_live_run_offers_no_dead_keys_and_counts_trained_and_rejected(tmp_path: Path, size: str):
    engine = ScriptedEngine(tmp_path / "live", Plan(iterations=3, progress_per_run=2, outer_period=5), clock=StepClock())
    source = LiveSource(engine)
    app = BilevelApp(source, deterministic=True)
    try:
        async with app.run_test(size=SIZES[size]) as pilot:
            source.engine_task = asyncio.create_task(engine.run())
            await source.engine_task
            await until(pilot, lambda: app.model.finished is not None, what="the end of the run")
            await app.caught_up()
            await app._repaint(everything=True)
            await until(pilot, lambda: "Pause" not in app.base.query_one(KeyBar).text(), what="the key bar")
            keys = app.base.query_one(KeyBar).text()
            for word in ("Pause", "Abort", "Guidance", "Freeze", "Approve"):
                assert word not in keys, keys
            header = app.screen_text().splitlines()[1]
            assert "iter 3/3" in header and "(3 trained, 0 rejected)" in header
    finally:
        engine.writer.close()


@pytest.mark.parametrize("size", SIZES)
async def test_the_header_says_how_many_were_rejected(tmp_path: Path, size: str):
    session = write(tmp_path / "s", [(0, started(iterations=4)), (1, verdict(0, "baseline", 1.0, 1.0)),
                                     (1, verdict(1, "keep", 0.99, 1.0)), (1, verdict(2, "rejected", None, 0.99)),
                                     (1, verdict(3, "rejected", None, 0.99)), (1, verdict(4, "discard", 1.01, 0.99)),
                                     (1, ev.RunFinished(status="completed", iterations=4))])
    app = BilevelApp(ReplaySource(session, follow=False), deterministic=True)
    async with app.run_test(size=SIZES[size]) as pilot:
        header = (await shown(app, pilot)).splitlines()[1]
        assert "iter 4/4" in header and "(2 trained, 2 rejected)" in header


# --- 5: parallel trials: the header, the trace and the slots in one frame --------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_the_header_repaints_with_the_trace_and_its_slots_in_parallel_runs(monkeypatch, size: str):
    """A live app repaints a pane a tick; with several slots the header's running list and busy count change
    on the trace pane's turn (which holds the slots view), so the three never show different trials."""
    import msgspec

    from tests.support.queue_source import QueueSource
    from tests.test_tui_repaint_turns import folded
    from tui.widgets.slots import SlotsView

    monkeypatch.setattr(BilevelApp, "_tick", lambda self: None)  # the header's clock: not a repaint
    source = QueueSource()
    app = BilevelApp(source, deterministic=False, refresh_hz=0.001)  # its timer never fires here
    events: list[ev.Event] = [
        started(iterations=8),
        ev.SlotsConfigured(slots=[ev.SlotInfo(name=f"gpu{i}", devices=str(i)) for i in range(3)]),
        ev.IterationStarted(iteration=0), ev.TrainingStarted(iteration=0, slot="gpu0", budget_s=60),
        ev.TrainingFinished(iteration=0, val_bpb=1.0, duration_s=60), verdict(0, "baseline", 1.0, 1.0)]
    for n, slot in ((1, "gpu0"), (2, "gpu1"), (3, "gpu2")):
        events += [ev.IterationStarted(iteration=n), ev.TrainingStarted(iteration=n, slot=slot, budget_s=60)]
    events = [msgspec.structs.replace(e, seq=i + 1, ts=1_700_000_000.0 + i) for i, e in enumerate(events)]
    async with app.run_test(size=SIZES[size]) as pilot:
        await pilot.pause()
        await folded(app, source, events)
        for _ in range(len(app.panes) + 1):
            await app._repaint()  # every pane and the header once: all show #1 #2 #3
        later = [ev.TrainingFinished(iteration=2, val_bpb=0.99, duration_s=60), verdict(2, "keep", 0.99, 1.0),
                 ev.IterationStarted(iteration=4), ev.TrainingStarted(iteration=4, slot="gpu1", budget_s=60)]
        await folded(app, source, [msgspec.structs.replace(e, seq=len(events) + i + 1, ts=1_700_000_100.0 + i)
                                   for i, e in enumerate(later)])
        painted: list[str] = []
        original, sync = app.header.refresh, app.panes[0].sync

        async def trace_sync(*args, **kwargs):
            painted.append("trace")
            await sync(*args, **kwargs)

        app.header.refresh = lambda *a, **k: (painted.append("header"), original(*a, **k))[1]  # type: ignore[method-assign]
        app.panes[0].sync = trace_sync  # type: ignore[method-assign]
        for _ in range(len(app.panes) + 1):  # a turn each: whichever of the two comes first brings the other
            before = len(painted)
            await app._repaint()
            if len(painted) > before:
                assert sorted(painted[before:]) == ["header", "trace"], painted
                break
        else:
            raise AssertionError("neither the trace nor the header was repainted")
        await pilot.pause()
        assert app.model.in_flight == [1, 3, 4]
        slots = [s.iteration for s in app.model.trials.working_slots]
        assert sorted(n for n in slots if n is not None) == [1, 3, 4]
        header = app.screen_text().splitlines()[1]
        if size != "80x24":
            assert "#1 #3 #4 running" in header
        assert app.base.query_one(SlotsView).display

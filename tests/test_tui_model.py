"""The app's view model, drawing helpers and event sources — plain Python, no screen."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.session import SessionReader
from tui import render
from tui.model import HEADER, PATCHES, PLOT, RESEARCH, TRACE, ViewModel
from tui.sources import RESET, LiveSource, ReplaySource, TailSource
from tests.support.scripted_engine import Plan, ScriptedEngine, StepClock, record_session
from tests.support.patience import patience


def started(**kw) -> ev.SessionStarted:
    base = dict(session="s1", name="t", provider="offline", group="C", levels=["inner", "strategy", "research"],
                config={"budget": {"iterations": 10}}, schema={"LR": {"kind": "float", "value": 0.1, "locked": False},
                                                               "DEPTH": {"kind": "int", "value": 8, "locked": True}})
    base.update(kw)
    return ev.SessionStarted(seq=1, ts=100.0, **base)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "recorded"
    asyncio.run(record_session(path, Plan(iterations=10, outer_period=5)))
    return path


# --- the model ---------------------------------------------------------------------------------------


def test_iteration_row_follows_its_phases_and_is_updated_in_place():
    m = ViewModel()
    m.apply(started())
    m.take_dirty()
    m.apply(ev.IterationStarted(iteration=3, ts=101))
    assert m.rows[3].phase == "proposing" and m.take_dirty()[1] == {3}
    m.apply(ev.ProposalMade(iteration=3, changes={"LR": 0.2}, hypothesis="faster"))
    m.apply(ev.TrainingStarted(iteration=3, diff="artifacts/iterations/0003/diff.patch", slot="gpu1", budget_s=5))
    assert m.rows[3].phase == "training" and m.training_iteration == 3 and m.slot == "gpu1"
    m.apply(ev.IterationFinished(iteration=3, decision="keep", changes={"LR": 0.2}, val_bpb=0.9, best_before=1.0,
                                 duration_s=7.0, mechanisms={"tabu": {"observe": 1}, "idle": {}}))
    row = m.rows[3]
    assert (row.phase, row.final, row.delta, row.mechanisms) == ("keep", True, pytest.approx(-0.1), {"tabu": ""})
    parts, rows, _ = m.take_dirty()
    assert rows == {3} and {TRACE, PLOT}.issubset(parts)
    assert list(m.rows) == [3]


def test_interrupted_iteration_rerun_reuses_its_row():
    m = ViewModel()
    m.apply(started())
    m.apply(ev.IterationStarted(iteration=4))
    m.apply(ev.IterationInterrupted(iteration=4, reason="stopped"))
    assert m.rows[4].phase == "interrupted"
    m.apply(ev.IterationStarted(iteration=4))
    assert m.rows[4].phase == "proposing" and not m.rows[4].final and len(m.rows) == 1


def test_pause_shows_pausing_until_the_engine_has_paused():
    m = ViewModel()
    m.apply(started())
    m.local_pause = True  # the user pressed space
    assert m.status == "pausing…"
    m.apply(ev.CommandReceived(command="pause", source="tui"))
    m.apply(ev.PauseRequested())
    assert m.status == "pausing…"
    m.apply(ev.Paused(next_iteration=5))
    assert m.status == "paused"
    m.local_pause = False
    assert m.status == "resuming…"
    m.apply(ev.Unpaused())
    assert m.status == "running"


def test_a_refused_pause_clears_pausing():
    m = ViewModel()
    m.apply(started())
    m.local_pause = True
    m.apply(ev.CommandReceived(command="pause", ok=False, error="nope"))
    assert m.status == "running"


def test_research_dialogue_streams_by_call_id_into_one_document():
    m = ViewModel()
    m.apply(started())
    m.apply(ev.ResearchStarted(research_id="r1", cycle=2, after_iteration=10))
    m.apply(ev.LLMRequest(call_id="a", level="research", purpose="explore"))
    for piece in ("Tabu ", "memory ", "helps."):
        m.apply(ev.LLMDelta(call_id="a", level="research", text=piece))
    m.apply(ev.LLMDelta(call_id="inner1", level="inner", text="ignored"))
    doc = m.research_markdown("r1")
    assert doc.index("Research r1") < doc.index("Round 1 · explore") < doc.index("Tabu memory helps.")
    assert "ignored" not in doc
    assert m.round_counters("r1") == [("explore", 3, "streaming")]
    m.apply(ev.LLMResponse(call_id="a", level="research", prompt_tokens=100, completion_tokens=40))
    m.apply(ev.ResearchRound(research_id="r1", round="explore", call_id="a"))
    assert m.round_counters("r1") == [("explore", 40, "done")]
    assert m.tokens_by_level == {"research": 140}
    m.apply(ev.LLMRequest(call_id="b", level="research", purpose="critique"))
    m.apply(ev.LLMDelta(call_id="b", level="research", text="{}"))
    assert m.research_markdown("r1").startswith(doc)  # the document only grows at its end


def test_pending_mechanism_is_cleared_by_its_outcome():
    m = ViewModel()
    m.apply(started())
    m.apply(ev.ResearchStarted(research_id="r1"))
    m.apply(ev.MechanismValidated(research_id="r1", name="Tabu", ok=True, source="artifacts/m.py", report="r.md"))
    m.apply(ev.MechanismPending(research_id="r1", name="Tabu", source="artifacts/m.py"))
    assert list(m.pending) == ["r1"]
    assert any(p.kind == "mechanism" and p.report == "r.md" for p in m.patches.values())
    m.apply(ev.ResearchFinished(research_id="r1", outcome="declined", name="Tabu"))
    assert m.pending == {}
    assert "Outcome: declined" in m.research_markdown("r1")


def test_inner_level_token_text_is_not_kept():
    m = ViewModel()
    for i in range(100):
        m.apply(ev.LLMRequest(call_id=f"c{i}", level="inner"))
        m.apply(ev.LLMDelta(call_id=f"c{i}", level="inner", text="x" * 100))
        m.apply(ev.LLMResponse(call_id=f"c{i}", level="inner", prompt_tokens=10, completion_tokens=5))
    assert m.calls == {} and m.tokens_by_level == {"inner": 1500}


def test_remaining_time_is_mean_iteration_time_times_iterations_left():
    m = ViewModel()
    m.apply(started(config={"budget": {"iterations": 4}}))
    for i in (1, 2):
        m.apply(ev.IterationFinished(iteration=i, decision="discard", duration_s=10.0))
    assert m.remaining_s(now=None) == pytest.approx(20.0)
    m.apply(ev.RunFinished(status="completed"))
    assert m.remaining_s(now=None) is None and m.status == "completed"


def test_folding_a_recorded_session_matches_the_engine_fold(session: Path):
    m = ViewModel()
    m.apply_all(list(SessionReader(session).events()))
    assert m.state.best_val_bpb is not None
    assert m.iterations_done == 10 and m.status == "completed"
    kept = [r.iteration for r in m.rows.values() if r.phase == "keep"]
    assert kept == [r.iteration for r in m.state.records if r.decision == "keep"]
    assert m.research_order and all(v.finished is not None for v in m.research.values())
    assert {PATCHES, RESEARCH, HEADER}.issubset(m.take_dirty()[0])


# --- drawing ----------------------------------------------------------------------------------------------


def test_bar_is_exactly_its_width_at_any_fraction():
    for width in (1, 7, 30):
        for fraction in (-1, 0, 0.013, 0.5, 0.999, 1, 2):
            assert len(render.bar(fraction, width)) == width
    assert render.bar(1, 4) == "████" and render.bar(0, 4) == "    "


def test_best_plot_fills_its_box_and_labels_the_range():
    points = [(0, 1.0, "baseline"), (1, 0.99, "keep"), (2, 1.02, "discard"), (3, 0.97, "keep")]
    text = render.best_plot(points, 40, 5)
    lines = text.plain.split("\n")
    assert len(lines) == 5 and all(len(line) == 40 for line in lines)
    assert lines[0].split()[0] == "val_bpb"  # a title row of its own
    labels = [float(line[:8]) for line in lines[1:-1] if line[:8].strip()]
    assert len(labels) == 3 and labels == sorted(labels, reverse=True)  # top, middle, bottom
    assert 1.0 < labels[0] < 1.03 and 0.96 < labels[-1] < 0.98
    assert lines[-1].split() == ["iter", "#0", "#1", "#2", "#3"]  # the last row is the iteration axis
    assert "no scored iteration" in render.best_plot([], 40, 5).plain


def test_best_plot_keeps_its_legend_off_the_data_and_failures_off_the_best_row():
    """The legend has a row of its own (a discard at the worst value stays visible under it), and runs
    with no score are marked on the iteration axis, not on the row labelled with the best value."""
    points = [(0, 1.0, "baseline"), (1, 0.99, "keep"), (2, None, "crash"), (3, 1.02, "discard"),
              (4, None, "cancelled"), (5, 0.97, "keep"), (6, 0.98, "discard"), (9, 1.02, "discard"),
              (12, None, "timeout")]
    for width, height in ((90, 7), (60, 6), (200, 7)):
        text = render.best_plot(points, width, height)
        lines = text.plain.split("\n")
        assert len(lines) == height and all(len(line) == width for line in lines)
        assert "━ best" in lines[0] and "keep" in lines[0] and "discard" in lines[0] and "✗ no score" in lines[0]
        assert sum(0x2800 <= ord(c) <= 0x28FF for c in lines[0]) == 2  # the legend's two marks, no data under it
        assert any(0x2800 < ord(c) <= 0x28FF for c in lines[1][9:])  # the worst discards: the first data row
        assert "✗" not in "".join(lines[1:-1]) and "⊘" not in "".join(lines[1:-1])
        axis = lines[-1]
        assert axis.split()[0] == "iter" and "#0" in axis and axis.count("✗") == 2 and "⊘" in axis
        assert len([t for t in axis.split() if t.startswith("#")]) >= 3  # ticks between the ends
    styles = {str(span.style) for span in render.best_plot(points, 90, 7).spans}
    assert {"bold green", "yellow", "bold red", "magenta"} <= styles


def test_progress_line_fits_its_width():
    text = render.progress_text(12, 58.0, 412, 3.2143, 52_100, 63, "gpu0", width=100)
    assert text.cell_len <= 100
    assert "58%" in text.plain and "loss 3.2143" in text.plain and "52.1k tok/s" in text.plain
    assert "1:03 left" in text.plain and "gpu0" in text.plain


# --- sources --------------------------------------------------------------------------------------------------


async def _take(source, count: int, timeout: float = 5.0) -> list:
    out: list = []

    async def run() -> None:
        async for batch in source.batches():
            out.append(batch)
            if sum(len(b) if b != RESET else 0 for b in out) >= count:
                return
    await asyncio.wait_for(run(), timeout)
    return out


async def test_tail_source_waits_for_a_line_to_be_complete(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    first = ev.to_json(ev.IterationStarted(seq=1, iteration=1))
    second = ev.to_json(ev.IterationStarted(seq=2, iteration=2))
    log.write_text(first + "\n" + second[:10])
    src = TailSource(tmp_path, poll_s=0.01)
    gen = src.batches()
    batch = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert [e.seq for e in batch] == [1]
    with open(log, "a") as fh:
        fh.write(second[10:] + "\n")
    batch = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert [e.seq for e in batch] == [2]
    await gen.aclose()


async def _drain(source: ReplaySource, timeout: float = 5.0) -> list:
    """Every batch a source hands over until it has handed over its whole log."""
    out: list = []

    async def run() -> None:
        async for batch in source.batches():
            out.append(batch)
            if source.position >= len(source.events) and source._step_to is None and source._reset_to is None:
                return
    await asyncio.wait_for(run(), timeout)
    return out


async def test_replay_instant_skips_superseded_lines_yet_reaches_the_same_state(session: Path):
    src = ReplaySource(session, follow=False)
    batches = await _drain(src)
    every = list(SessionReader(session).events())
    handed = [e for b in batches for e in b]
    assert src.position == len(src.events) == len(every)
    progress = [e for e in handed if isinstance(e, ev.TrainingProgress)]
    assert len(progress) <= 2 * len(shown_rows := {e.iteration for e in every if isinstance(e, ev.IterationStarted)})
    assert len(handed) < len(every) and shown_rows  # progress and stdout lines mostly skipped
    shown, full = ViewModel(), ViewModel()
    shown.apply_all(handed)
    full.apply_all(every)
    assert shown.rows == full.rows and shown.state.records == full.state.records
    assert [shown.research_parts(r) for r in shown.research_order] == [full.research_parts(r) for r in full.research_order]
    assert shown.patches == full.patches and list(shown.log) == list(full.log)
    assert shown.status == full.status and shown.state.best_val_bpb == full.state.best_val_bpb


async def test_replay_at_speed_keeps_the_recorded_spacing(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    log.write_text("".join(ev.to_json(ev.IterationStarted(seq=i + 1, ts=1000.0 + i, iteration=i)) + "\n"
                           for i in range(3)))
    clock = [0.0]
    src = ReplaySource(tmp_path, speed=10.0, follow=False, clock=lambda: clock[0])
    gen = src.batches()
    first = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert [e.iteration for e in first] == [0]  # the others are 1 s and 2 s of session time away
    clock[0] = 0.1  # 0.1 s at 10× is 1 s of session time
    second = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert [e.iteration for e in second] == [1]
    await gen.aclose()


async def test_replay_seek_backwards_resets_then_replays_to_the_iteration(session: Path):
    src = ReplaySource(session, follow=False)
    await _drain(src)
    target = src.seek(3)
    gen = src.batches()
    items = []
    async for batch in gen:
        items.append(batch)
        if batch != RESET and src.position >= target:
            break
    await gen.aclose()
    assert items[0] == RESET and src.paused
    m = ViewModel()
    for batch in items[1:]:
        m.apply_all(batch)
    assert max(m.rows) == 3 and m.rows[3].final


async def test_replay_step_advances_one_iteration(session: Path):
    src = ReplaySource(session, follow=False)
    src.step()
    batch = await asyncio.wait_for(src.batches().__anext__(), patience(2))
    finished = [e for e in batch if isinstance(e, ev.IterationFinished)]
    assert len(finished) == 1 and finished[0].iteration == 0 and src.paused


async def test_replay_follows_a_session_still_being_written(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    log.write_text(ev.to_json(ev.IterationStarted(seq=1, iteration=0)) + "\n")
    src = ReplaySource(tmp_path, follow=True, poll_s=0.01)
    gen = src.batches()
    assert [e.seq for e in await asyncio.wait_for(gen.__anext__(), patience(2))] == [1]
    with open(log, "a") as fh:
        fh.write(ev.to_json(ev.IterationStarted(seq=2, iteration=1)) + "\n")
    assert [e.seq for e in await asyncio.wait_for(gen.__anext__(), patience(2))] == [2]
    await gen.aclose()


async def test_live_source_gives_history_then_new_events_without_duplicates(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=1, finish=False, progress_per_run=2))
    history = len(list(SessionReader(path).events()))
    engine = ScriptedEngine(path, Plan(iterations=1, progress_per_run=2), clock=StepClock())
    src = LiveSource(engine)
    gen = src.batches()
    first = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert len(first) == history
    engine.emit(ev.GuidanceChanged(guidance="new"))
    src._on_event(first[-1])  # an event already in the history is never shown twice
    second = await asyncio.wait_for(gen.__anext__(), patience(2))
    assert [type(e) for e in second] == [ev.GuidanceChanged] and second[0].seq == history + 1
    await gen.aclose()
    engine.writer.close()


def test_artifacts_outside_the_session_are_not_read(session: Path, tmp_path: Path):
    (tmp_path / "secret.txt").write_text("no")
    src = ReplaySource(session)
    assert src.read_artifact("../" * 5 + str(tmp_path / "secret.txt")) is None
    assert src.read_artifact("artifacts/baseline/train.py").startswith('"""Synthetic')


def test_recorded_sessions_are_deterministic(tmp_path: Path):
    a, b = tmp_path / "a" / "s", tmp_path / "b" / "s"
    for path in (a, b):
        asyncio.run(record_session(path, Plan(iterations=3, progress_per_run=3)))
    assert (a / "events.jsonl").read_text() == (b / "events.jsonl").read_text()
    assert json.loads((a / "events.jsonl").read_text().splitlines()[0])["type"] == "session_started"


async def test_a_30_iteration_session_with_full_dialogue_opens_whole(tmp_path: Path):
    """Every iteration and row of a long session shows on opening (its time: bench/bench_replay_open.py)."""
    from tui.app import BilevelApp

    path = tmp_path / "thirty"
    # 300 s runs at 5 progress lines a second, 400 output lines each, ~1,500-token research rounds
    await record_session(path, Plan(iterations=30, progress_per_run=1500, output_per_run=400, outer_period=5,
                                    research_period=1, dialogue_scale=15))
    lines = (path / "events.jsonl").read_bytes().count(b"\n")
    assert lines > 90_000
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up(60)
        await pilot.pause()
        assert app.model.iterations_done == 30 and app.base.query_one("#trace-table").row_count == 31


def test_the_strategy_pane_shows_a_frozen_direction_and_the_cycle_names_it():
    from tui.widgets.strategy import cycles_parts, param_rows

    m = ViewModel()
    m.apply(started(schema={"LR": {"kind": "float", "value": 0.1, "locked": False},
                            "BATCH": {"kind": "int", "value": 64, "locked": False, "pow2": True},
                            "DEPTH": {"kind": "int", "value": 8, "locked": True}}))
    m.apply(ev.StrategyStarted(seq=2, ts=101.0, cycle=1, after_iteration=5))
    m.apply(ev.ParamFrozen(seq=3, ts=101.5, name="BATCH", direction="up", source="strategy", reason="3 failed increases"))
    m.apply(ev.StrategyDecision(seq=4, ts=102.0, cycle=1, source="offline", candidates=["BATCH up"],
                                freeze=["BATCH up"]))
    rows = param_rows(m)
    assert rows["BATCH"]["state"].plain == "↑frozen" and rows["LR"]["state"].plain == "active"
    cycle = cycles_parts(m)[0].plain
    assert "froze BATCH up — 3 failed increases" in cycle
    m.apply(ev.ParamUnfrozen(seq=5, ts=103.0, name="BATCH", direction="up", source="user", reason="try again"))
    assert param_rows(m)["BATCH"]["state"].plain == "active"

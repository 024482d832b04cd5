"""A diverged run (NaN and infinite losses and metrics) replays, attaches and reports, and its values stay floats.

The session is written through the real SessionWriter, as the engine writes a run whose
training diverged; a second copy holds the same events as the old writer wrote them
(non-finite floats as the strings "nan"/"inf", plus an unknown field and an unknown event
type), which must load the same way.
"""
from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from core.cli import main
from core.record import config
from core.record import events as ev
from core.record.session import SessionReader, SessionWriter
from core.record.change import ParamChange
from core.record.state import fold
from tui.app import BilevelApp
from tui.sources import ReplaySource, TailSource
from tests.support.patience import patience

NAN, INF = math.nan, math.inf


def diverged_session_events() -> list[ev.Event]:
    cfg = config.demo_config()
    schema = {"MATRIX_LR": {"kind": "float", "value": 0.04, "locked": False},
              "DEPTH": {"kind": "int", "value": 4, "locked": True}}
    out: list[ev.Event] = [
        ev.SessionStarted(session="s", name="diverged", provider="offline", model="offline", group="A",
                          levels=["inner"], config=cfg.to_dict(), script="artifacts/baseline/train.py",
                          schema=schema, seed=0, version="test"),
        ev.IterationStarted(iteration=0),
        ev.TrainingStarted(iteration=0, budget_s=4.0, slot="cpu"),
        ev.TrainingProgress(iteration=0, step=10, percent=50.0, loss=3.2, tok_per_s=1e4, remaining_s=2.0),
        ev.TrainingFinished(iteration=0, outcome="ok", val_bpb=1.25, metrics={"val_bpb": 1.25, "mfu_percent": 3.0},
                            exit_code=0, duration_s=4.1),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=1.25, best_after=1.25, outcome="ok",
                             rule="baseline", values={"MATRIX_LR": 0.04, "DEPTH": 4}, duration_s=4.1),
        ev.IterationStarted(iteration=1),
        ev.ProposalMade(iteration=1, changes={"MATRIX_LR": 4.0}, hypothesis="far too high", source="offline"),
        ev.TrainingStarted(iteration=1, budget_s=4.0, slot="cpu"),
        ev.TrainingProgress(iteration=1, step=10, percent=50.0, loss=INF, tok_per_s=1e4, mfu=NAN, remaining_s=2.0),
        ev.TrainingProgress(iteration=1, step=20, percent=100.0, loss=NAN, tok_per_s=-INF, remaining_s=0.0),
        ev.TrainingOutput(iteration=1, stream="stderr", line="loss: nan"),
        ev.TrainingFinished(iteration=1, outcome="diverged", metrics={"val_bpb": NAN, "mfu_percent": INF},
                            exit_code=0, duration_s=4.0, reason="the loss became NaN"),
        ev.IterationFinished(iteration=1, decision="crash", changes={"MATRIX_LR": 4.0}, best_before=1.25,
                             best_after=1.25, outcome="diverged", reason="the loss became NaN",
                             values={"MATRIX_LR": 4.0, "DEPTH": 4}, duration_s=4.0,
                             acceptance={"best": 1.25, "candidate": NAN}),
        ev.RunFinished(status="completed", reason="1 iterations done", iterations=1, baseline_val_bpb=1.25,
                       best_val_bpb=1.25),
    ]
    return out


def write_session(folder: Path) -> Path:
    writer = SessionWriter(folder)
    for event in diverged_session_events():
        writer.append(event)
    writer.close()
    return folder


def write_old_format_session(folder: Path) -> Path:
    """The same events as the old writer wrote them: "nan"/"inf" strings, plus fields and types it did not know."""
    folder.mkdir(parents=True)

    def old(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: old(v) for k, v in value.items()}
        if isinstance(value, list):
            return [old(v) for v in value]
        if isinstance(value, ParamChange):  # the old writer wrote a change as its name -> value mapping
            return old(dict(value.params))
        return value

    rows = []
    for n, event in enumerate(diverged_session_events(), 1):
        data = {"type": event.type, **old(event.payload())}
        data["field_from_a_newer_writer"] = {"x": 1}
        rows.append(data)
        if n == 3:
            rows.append({"type": "event_from_a_newer_writer", "x": "nan"})
    lines = [json.dumps({"seq": seq, "ts": 1_700_000_000.0 + seq, **row}) for seq, row in enumerate(rows, 1)]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(params=["current", "old"])
def session(request, tmp_path: Path) -> Path:
    if request.param == "current":
        return write_session(tmp_path / "diverged")
    return write_old_format_session(tmp_path / "diverged-old")


def assert_nonfinite_values_are_floats(events: list[ev.Event]) -> None:
    progress = [e for e in events if isinstance(e, ev.TrainingProgress) and e.iteration == 1]
    assert progress[0].loss == INF and math.isnan(progress[0].mfu)
    assert math.isnan(progress[-1].loss) and progress[-1].tok_per_s == -INF
    finished = [e for e in events if isinstance(e, ev.TrainingFinished) and e.iteration == 1][0]
    assert math.isnan(finished.metrics["val_bpb"]) and finished.metrics["mfu_percent"] == INF
    assert all(isinstance(v, float) for v in finished.metrics.values())


def test_the_session_reader_gives_back_floats(session: Path):
    events = list(SessionReader(session).events())
    assert_nonfinite_values_are_floats(events)
    state = fold(events)
    assert state.best_val_bpb == 1.25 and [r.decision for r in state.records] == ["baseline", "crash"]


def test_headless_replay_prints_the_diverged_run_without_error(session: Path, capsys):
    assert main(["replay", str(session), "--headless", "--no-follow"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "CRASH" in captured.out or "crash" in captured.out


def test_report_of_the_diverged_run_succeeds(session: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(session), "--out", str(out), "--no-plots"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (out / "report.md").read_text(encoding="utf-8")


async def _all_batches(source, expected: int) -> list[ev.Event]:
    got: list[ev.Event] = []

    async def collect() -> None:
        async for batch in source.batches():
            if isinstance(batch, list):
                got.extend(batch)
            if len(got) >= expected:
                return

    await asyncio.wait_for(collect(), patience(30))
    return got


async def test_the_app_replay_source_gives_back_floats(session: Path):
    source = ReplaySource(session, follow=False)
    count = len(list(SessionReader(session).events()))
    jumped = await _all_batches(source, 1)  # an instant replay hands over what the screen needs
    timed = ReplaySource(session, follow=False, speed=1e9)
    every = await _all_batches(timed, count)
    assert_nonfinite_values_are_floats(every)
    assert any(isinstance(e, ev.TrainingFinished) and math.isnan(e.metrics["val_bpb"]) for e in jumped + every)


async def test_the_attach_source_gives_back_floats(session: Path):
    count = len(list(SessionReader(session).events()))
    events = await _all_batches(TailSource(session, poll_s=0.01), count)
    assert_nonfinite_values_are_floats(events)


@pytest.mark.parametrize("make_source", [lambda s: ReplaySource(s, follow=False), lambda s: TailSource(s)],
                         ids=["replay", "attach"])
async def test_the_app_shows_the_diverged_run(session: Path, make_source):
    app = BilevelApp(make_source(session), deterministic=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await app.caught_up()
        await pilot.pause(0.1)
        text = app.screen_text()
        assert app.model.finished is not None
        assert [r.decision for r in app.model.state.records] == ["baseline", "crash"]
    assert "1.25" in text


def write_session_mid_training(folder: Path) -> Path:
    """A run being written, stopped right after the NaN progress line: what an attached viewer sees live."""
    events = diverged_session_events()
    last_progress = max(i for i, e in enumerate(events) if isinstance(e, ev.TrainingProgress))
    writer = SessionWriter(folder)
    for event in events[:last_progress + 1]:
        writer.append(event)
    writer.close()
    return folder


@pytest.mark.parametrize("make_source", [lambda s: ReplaySource(s, follow=False), lambda s: TailSource(s)],
                         ids=["replay", "attach"])
async def test_the_app_shows_a_nan_loss_while_the_run_trains(tmp_path: Path, make_source):
    session = write_session_mid_training(tmp_path / "training")
    app = BilevelApp(make_source(session), deterministic=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await app.caught_up()
        await pilot.pause(0.1)
        assert app.model.training_iteration == 1
        progress = app.model.state.progress
        text = app.screen_text()
    assert math.isnan(progress.loss)
    assert "nan" in text.lower()

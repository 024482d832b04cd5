"""The `bilevel` command as a user runs it: headless runs, kill -9 and resume, the demo."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.processes import recorded_processes
from core.record.session import SessionReader
from core.record.state import fold
from tests.support.patience import patience
from tests.conftest import run_engine
from tests.support.cli import start_bilevel, write_fast_config
from tests.support import ScriptedOpenAI

def finished_iterations(session: Path) -> list[int]:
    return [e.iteration for e in SessionReader(session).events() if isinstance(e, ev.IterationFinished)]


def test_kill_9_mid_run_then_resume_loses_no_event_and_repeats_no_kept_iteration(tmp_path):
    cfg = write_fast_config(tmp_path, name="killme", iterations=6)
    slow = {"FAKE_STEP_S": "0.15"}
    proc = start_bilevel("run", str(cfg), "--headless", cwd=tmp_path, env=slow)
    sessions = tmp_path / "sessions"
    deadline = time.monotonic() + patience(60)
    session = None
    while time.monotonic() < deadline:
        found = list(sessions.glob("*/events.jsonl")) if sessions.exists() else []
        if found:
            session = found[0].parent
            events = list(SessionReader(session).events())
            if any(isinstance(e, ev.TrainingProgress) and e.iteration == 3 for e in events):
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run never reached iteration 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = list(SessionReader(session).events())
    assert not isinstance(before[-1], ev.RunFinished)

    out = start_bilevel("resume", str(session), "--headless", cwd=tmp_path, env=slow)
    stdout, stderr = out.communicate(timeout=patience(120))
    assert out.returncode == 0, stderr
    after = list(SessionReader(session).events())
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    assert [e.seq for e in after] == list(range(1, len(after) + 1))
    done = finished_iterations(session)
    assert done == list(range(0, 7))  # every iteration finished exactly once
    interrupted = [e.iteration for e in after if isinstance(e, ev.IterationInterrupted)]
    assert interrupted == [3]  # the one cut short was re-run, with its number
    assert isinstance(after[-1], ev.RunFinished) and after[-1].status == "completed"
    state = fold(after)
    kept = [r.iteration for r in state.records if r.decision == "keep"]
    assert len(kept) == len(set(kept))
    assert "resumed at iteration 3" in stdout


def test_ctrl_c_writes_a_clean_stop_event_and_exits_130(tmp_path):
    cfg = write_fast_config(tmp_path, name="killme", iterations=50)
    proc = start_bilevel("run", str(cfg), "--headless", cwd=tmp_path, env={"FAKE_STEP_S": "0.2"})
    sessions = tmp_path / "sessions"
    deadline = time.monotonic() + patience(60)
    while time.monotonic() < deadline:
        found = list(sessions.glob("*/events.jsonl")) if sessions.exists() else []
        if found and any(isinstance(e, ev.TrainingStarted) and e.iteration == 1
                         for e in SessionReader(found[0].parent).events()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=patience(30))
    assert proc.returncode == 130
    events = list(SessionReader(found[0].parent).events())
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "stopped"
    assert "Ctrl-C" in events[-1].reason


def test_resume_of_a_completed_session_says_how_to_extend_it(tmp_path):
    cfg = write_fast_config(tmp_path, name="killme", iterations=1)
    proc = start_bilevel("run", str(cfg), "--headless", cwd=tmp_path)
    proc.communicate(timeout=patience(60))
    assert proc.returncode == 0
    session = next((tmp_path / "sessions").iterdir())
    again = start_bilevel("resume", str(session), "--headless", cwd=tmp_path)
    _, err = again.communicate(timeout=patience(60))
    assert again.returncode == 2 and "--iterations" in err
    more = start_bilevel("resume", str(session), "--headless", "--iterations", "2", cwd=tmp_path)
    more.communicate(timeout=patience(60))
    assert more.returncode == 0 and finished_iterations(session) == [0, 1, 2]


@pytest.mark.slow
def test_demo_runs_offline_on_the_real_workload_and_replays(tmp_path):
    proc = start_bilevel("run", "--demo", "--headless", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=patience(400))
    assert proc.returncode == 0, stderr[-3000:]
    assert "offline: no LLM" in stdout and "run completed" in stdout
    session = next((tmp_path / "sessions").iterdir())
    state = fold(SessionReader(session).events())
    assert state.provider == "offline" and state.baseline_val_bpb is not None
    assert 0.5 < state.baseline_val_bpb < 10
    assert len(state.records) == 5 and all(r.source in ("offline", "baseline") for r in state.records)
    replay = start_bilevel("replay", str(session), "--headless", cwd=tmp_path)
    out, _ = replay.communicate(timeout=patience(60))
    assert replay.returncode == 0 and "run completed" in out


@pytest.mark.slow
async def test_real_training_with_the_scripted_llm_baseline_and_three_iterations(tmp_path):
    from core.record import config

    replies = iter([
        {"changes": {"MATRIX_LR": 0.05}, "hypothesis": "a bit more LR for the matrices"},
        {"changes": {"WINDOW_PATTERN": "SL", "WARMDOWN_RATIO": 0.4}, "hypothesis": "more full-context layers"},
        {"changes": {"ADAM_BETAS": [0.85, 0.95]}, "hypothesis": "smoother Adam"},
    ])
    with ScriptedOpenAI(responder=lambda req: json.dumps(next(replies))) as server:
        cfg = config.demo_config(**{
            "endpoint.provider": "openai", "endpoint.base_url": server.base_url, "endpoint.model": "test-model",
            "budget.iterations": 3, "budget.time_s": 2.0, "run.sessions_dir": str(tmp_path / "sessions")})
        engine, rec = await run_engine(cfg)
    finished = rec.of(ev.IterationFinished)
    assert [e.decision for e in finished][0] == "baseline" and len(finished) == 4
    assert all(e.decision in ("keep", "discard") for e in finished[1:]), [e.reason for e in finished]
    script2 = (engine.dir / rec.of(ev.TrainingStarted)[2].script).read_text()
    assert 'WINDOW_PATTERN = "SL"' in script2
    script3 = (engine.dir / rec.of(ev.TrainingStarted)[3].script).read_text()
    assert "ADAM_BETAS = (0.85, 0.95)" in script3
    assert all(e.val_bpb is not None and 0.5 < e.val_bpb < 10 for e in finished)
    # One warm worker ran the baseline and the learning-rate change; the window pattern is a shape: a new one.
    assert [e.worker for e in rec.of(ev.TrainingFinished)] == ["warm"] * 4
    pids = [p.pid for p in recorded_processes(engine.dir)]  # one per TrainingProcess, in its order
    assert len(pids) == len(rec.of(ev.TrainingProcess))
    assert pids[0] == pids[1] and pids[2] != pids[1]
    # Iteration 3 has the shape of 2 if 2 was kept, else the baseline's: either way a kept worker runs it.
    assert pids[3] == (pids[2] if 'WINDOW_PATTERN = "SL"' in script3 else pids[0])
    for it in range(4):  # the bar says "starting" from the run's start until its first step
        phases = [e.phase for e in rec.of(ev.TrainingProgress) if e.iteration == it]
        assert phases[0] == "starting" and "starting" not in phases[1:], phases

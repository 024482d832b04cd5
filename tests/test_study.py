"""Studies: `run --group … --repeats N` as one folder, resumable as a whole, same baseline for every repeat."""
from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from core.record import config
from core.record import events as ev
from core.cli import main
from core.record.session import SessionReader
from core.record.state import fold
from core.record.study import Study
from core.run.study import StudyRunner
from tests.conftest import fast_config
from tests.support.cli import QUADRATIC, start_bilevel, write_fast_config
from tests.support.patience import patience



def the_study(tmp_path: Path) -> Path:
    (study,) = [p for p in (tmp_path / "sessions").iterdir() if "-study-" in p.name]
    return study


def events_of(path: Path) -> list[ev.Event]:
    return list(SessionReader(path).events())


def test_groups_times_repeats_write_a_study_listing_sessions_groups_and_seeds(tmp_path, capsys):
    assert main(["run", str(write_fast_config(tmp_path, name="abl", iterations=1)), "--group", "A,B", "--repeats", "2", "--headless"]) == 0
    study_dir = the_study(tmp_path)
    data = json.loads((study_dir / "study.json").read_text())
    assert data["groups"] == ["A", "B"] and data["repeats"] == 2
    members = [(m["group"], m["repeat"], m["seed"], m["session"]) for m in data["members"]]
    assert members == [("A", 1, 0, "A-r1"), ("A", 2, 1, "A-r2"), ("B", 1, 0, "B-r1"), ("B", 2, 1, "B-r2")]
    baselines = set()
    for group, _, seed, name in members:
        state = fold(events_of(study_dir / name))
        assert state.status == "completed" and state.group == group
        assert state.records[0].decision == "baseline"  # every repeat evaluates its own baseline
        baselines.add((study_dir / name / state.baseline_script).read_text())
        first_run = next(e for e in events_of(study_dir / name) if isinstance(e, ev.TrainingStarted))
        assert first_run.seed == seed
    assert len(baselines) == 1  # … of the same script
    out = capsys.readouterr().out
    assert "Per group" in out and (study_dir / "report" / "report.md").is_file()


def test_a_study_killed_midway_resumes_unfinished_members_and_starts_missing_ones(tmp_path):
    cfg = write_fast_config(tmp_path, name="abl", iterations=2)
    slow = {"FAKE_STEP_S": "0.15"}
    proc = start_bilevel("run", str(cfg), "--group", "A,B", "--repeats", "2", "--headless", cwd=tmp_path, env=slow)
    deadline = time.monotonic() + patience(90)
    while time.monotonic() < deadline:
        log = tmp_path / "sessions"
        found = list(log.glob("*-study-*/A-r2/events.jsonl")) if log.exists() else []
        if found and any(isinstance(e, ev.TrainingProgress) for e in events_of(found[0].parent)):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the study never reached its second member")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    study_dir = the_study(tmp_path)
    first_before = events_of(study_dir / "A-r1")
    assert not (study_dir / "B-r1").exists()

    again = start_bilevel("resume", str(study_dir), "--headless", cwd=tmp_path)
    out, err = again.communicate(timeout=patience(120))
    assert again.returncode == 0, err
    assert events_of(study_dir / "A-r1") == first_before  # a finished member is left alone
    resumed = events_of(study_dir / "A-r2")
    assert any(isinstance(e, ev.RunResumed) for e in resumed)
    for name in ("A-r1", "A-r2", "B-r1", "B-r2"):
        finished = [e.iteration for e in events_of(study_dir / name) if isinstance(e, ev.IterationFinished)]
        assert finished == [0, 1, 2], name
    assert not any(isinstance(e, ev.RunResumed) for e in events_of(study_dir / "B-r2"))  # started fresh
    assert "Per repeat" in out


def test_ctrl_c_stops_the_study_cleanly_with_exit_130_and_it_stays_resumable(tmp_path):
    cfg = write_fast_config(tmp_path, name="abl", iterations=20)
    proc = start_bilevel("run", str(cfg), "--group", "A", "--repeats", "2", "--headless",
                   cwd=tmp_path, env={"FAKE_STEP_S": "0.2"})
    deadline = time.monotonic() + patience(60)
    while time.monotonic() < deadline:
        found = list((tmp_path / "sessions").glob("*-study-*/A-r1/events.jsonl")) if (tmp_path / "sessions").exists() else []
        if found and any(isinstance(e, ev.TrainingStarted) and e.iteration == 1 for e in events_of(found[0].parent)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=patience(30))
    assert proc.returncode == 130 and "bilevel resume" in err
    study_dir = the_study(tmp_path)
    last = events_of(study_dir / "A-r1")[-1]
    assert isinstance(last, ev.RunFinished) and last.status == "stopped"
    assert not (study_dir / "A-r2").exists()  # no member starts after the stop


def test_resuming_a_complete_study_runs_nothing(tmp_path, capsys):
    assert main(["run", str(write_fast_config(tmp_path, name="abl", iterations=1)), "--group", "A", "--repeats", "2", "--headless"]) == 0
    study_dir = the_study(tmp_path)
    before = {p.name: (p / "events.jsonl").read_bytes() for p in study_dir.iterdir() if p.name.startswith("A-")}
    assert main(["resume", str(study_dir), "--headless"]) == 0
    assert before == {p.name: (p / "events.jsonl").read_bytes() for p in study_dir.iterdir() if p.name.startswith("A-")}


async def test_a_member_never_starts_from_a_baseline_script_that_changed(tmp_path):
    script = tmp_path / "train.py"
    shutil.copy(QUADRATIC, script)
    base = fast_config(tmp_path, **{"script.path": str(script), "budget.iterations": 0})
    plan = [config.with_overrides(base, {"search.seed": s, "name": f"t-A-r{s + 1}"}) for s in range(2)]
    study = Study.create(plan, "t", base.sessions_path())
    script.write_text(script.read_text().replace("LR = 0.04", "LR = 0.05"))
    runner = StudyRunner(study)
    outcomes = await runner.run()
    assert [o.status for o in outcomes] == ["failed"]  # the first refuses; no second is started after a failure
    assert "changed since this study started" in outcomes[0].reason
    assert not (study.dir / "A-r1" / "events.jsonl").exists()


def test_members_run_concurrently_one_per_gpu_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    cfg = write_fast_config(tmp_path, name="abl", iterations=1, gpus="0,1")  # two devices: the stand-in script ignores CUDA_VISIBLE_DEVICES
    assert main(["run", str(cfg), "--group", "A", "--repeats", "2", "--headless"]) == 0
    study_dir = the_study(tmp_path)
    spans, slots = [], set()
    for name in ("A-r1", "A-r2"):
        events = events_of(study_dir / name)
        runs = [e for e in events if isinstance(e, ev.TrainingStarted)]
        assert len({e.slot for e in runs}) == 1  # a member stays on its own GPU
        slots.add(runs[0].slot)
        spans.append((events[0].ts, events[-1].ts))
    assert slots == {"gpu0", "gpu1"}  # the slot as events name it
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1  # the two members overlapped in time

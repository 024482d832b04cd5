"""One engine per session, processes that die with the engine, and inputs that cannot crash it (issue 10)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import events as ev
from core.record.processes import recorded_processes
from core.record.session import SessionReader
from core.services import trainer
from core.services.trainer import run_training
from tests.conftest import fast_config, llm_config, run_engine
from tests.support.cli import run_bilevel, start_bilevel, write_fast_config
from tests.support.processes import alive as _alive

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"


def _wait_for(predicate, what: str, limit_s: float = 120.0):
    """Poll until ``predicate()`` is truthy; the limit only stops a broken test from hanging."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------- the trainer


async def test_a_child_that_calls_setsid_is_killed_and_the_run_does_not_wait_for_its_pipe(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "DRAIN_TIMEOUT_S", 3600.0)  # waiting for the pipe would hang the test
    lines: list[str] = []
    result = await run_training(SCRIPTS / "setsid_child.py", cwd=tmp_path, budget_s=30, grace_s=5,
                                on_line=lambda stream, line: lines.append(line))
    assert result.outcome == "ok" and result.val_bpb == 1.25
    child = int(next(line.split()[1] for line in lines if line.startswith("child ")))
    assert not _alive(child)


@pytest.mark.parametrize("printed", ["-1", "0", "1e-400", "-0.5"])
async def test_a_val_bpb_that_is_not_a_measurement_is_a_crash_invalid_metric(tmp_path, printed):
    result = await run_training(SCRIPTS / "bad_metric.py", cwd=tmp_path, budget_s=30, grace_s=5,
                                env={"BAD_VAL_BPB": printed})
    assert result.outcome == "crash" and result.val_bpb is None
    assert result.reason.startswith("invalid metric")


async def test_a_val_bpb_above_the_configured_range_is_an_invalid_metric(tmp_path):
    result = await run_training(SCRIPTS / "bad_metric.py", cwd=tmp_path, budget_s=30, grace_s=5,
                                env={"BAD_VAL_BPB": "42.0"}, valid_bpb=(0.0, 10.0))
    assert result.outcome == "crash" and "invalid metric" in result.reason


def test_configured_val_bpb_range_makes_the_run_fail_with_invalid_metric(tmp_path):
    cfg = write_fast_config(tmp_path, iterations=1)
    cfg.write_text(cfg.read_text() + "\n[acceptance]\nmax_val_bpb = 0.5\n")
    proc = run_bilevel("run", "--headless", str(cfg), cwd=tmp_path)
    assert proc.returncode == 1
    assert "invalid metric: val_bpb" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- one engine, no orphans


def _hanging_session(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int], Path]:
    """An engine whose baseline run hangs with a same-group child and a setsid child."""
    script = tmp_path / "src" / "train.py"
    script.parent.mkdir()
    shutil.copy(SCRIPTS / "hang_with_escapees.py", script)
    (script.parent / "HANG").write_text("")
    cfg = write_fast_config(tmp_path, iterations=1, script=script, search_extra="")
    engine = start_bilevel("run", "--headless", str(cfg), cwd=tmp_path)
    sessions = tmp_path / "sessions"
    session = _wait_for(lambda: next(iter(sessions.iterdir()), None) if sessions.is_dir() else None, "a session")

    def pids() -> list[int] | None:
        log = session / "artifacts" / "baseline" / "train.log"
        text = log.read_text() if log.exists() else ""
        return [int(p) for p in text.split("pids ", 1)[1].split()[:3]] if "pids " in text else None

    return engine, session, _wait_for(pids, "the script's pids"), script.parent / "HANG"


def test_a_second_engine_is_refused_with_the_holders_pid_and_the_lock_frees_when_it_dies(tmp_path):
    engine, session, pids, hang = _hanging_session(tmp_path)
    try:
        second = run_bilevel("resume", "--headless", str(session), cwd=tmp_path)
        assert second.returncode == 2
        assert f"another engine is running this session (pid {engine.pid})" in second.stderr
        into = run_bilevel("run", "--headless", "--into", str(session), str(tmp_path / "exp.toml"), cwd=tmp_path)
        assert into.returncode == 2 and f"pid {engine.pid}" in into.stderr
    finally:
        engine.kill()
        engine.communicate()
    hang.unlink()
    resumed = run_bilevel("resume", "--headless", str(session), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    seqs = [e.seq for e in SessionReader(session).events()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_every_process_of_a_killed_engines_run_is_gone_before_resume_starts_anything(tmp_path):
    engine, session, (script_pid, same_group, escaped), hang = _hanging_session(tmp_path)
    engine.send_signal(signal.SIGKILL)
    engine.communicate()
    # The kernel's parent-death signal ends the script itself at once.
    _wait_for(lambda: not _alive(script_pid), "the script dies with the engine")
    assert _alive(same_group) and _alive(escaped)  # orphans: only resume can end them now
    hang.unlink()
    resumed = run_bilevel("resume", "--headless", str(session), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not _alive(same_group) and not _alive(escaped)
    events = list(SessionReader(session).events())
    recorded = [e for e in events if isinstance(e, ev.TrainingProcess)]
    assert recorded[0].tag and recorded_processes(session)[0].tag == recorded[0].tag
    assert recorded_processes(session)[0].pid == script_pid  # the pid sits beside the log, under its tag
    assert [e.iteration for e in events if isinstance(e, ev.IterationFinished)] == [0, 1]


# ---------------------------------------------------------------- session_started first


async def test_session_started_is_durable_before_data_preparation(tmp_path, monkeypatch):
    prepared = asyncio.Event()
    release = asyncio.Event()

    async def slow_prepare(self):
        prepared.set()
        await release.wait()
        return {"source": "stdlib", "dir": str(tmp_path / "data")}

    monkeypatch.setattr(Engine, "_prepare_data", slow_prepare)
    cfg = fast_config(tmp_path, **{"data.source": "stdlib"})
    engine = Engine.create(cfg)
    task = asyncio.create_task(engine.run())
    await prepared.wait()
    on_disk = list(SessionReader(engine.dir).events())
    assert [type(e) for e in on_disk] == [ev.SessionStarted]  # written (and fsync'd) before the slow part
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    resumed = Engine.resume(engine.dir)  # a folder killed during preparation is resumable
    assert resumed.state.session == engine.dir.name
    resumed.close()


# ---------------------------------------------------------------- LLM replies, prompts


async def test_replies_of_any_depth_or_unicode_are_recorded_and_reasked(tmp_path, scripted_openai):
    deep = '{"changes":' * 200_000 + "{}" + "}" * 200_000
    surrogate = '{"changes": {"PATTERN": "S\ud800"}, "hypothesis": "\ud800"}'
    scripted_openai.enqueue(deep, surrogate, json.dumps({"changes": {"LR": 0.03}, "hypothesis": "ok"}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    assert engine.state.status == "completed"
    rejected = rec.of(ev.ProposalRejected)
    assert rejected[0].kind == "unparseable" and "nests brackets" in rejected[0].reason
    assert len(rejected) >= 1
    assert all(isinstance(e, ev.Event) for e in SessionReader(engine.dir).events())


async def test_a_crashed_runs_output_reaches_the_next_prompts_only_fenced(tmp_path, scripted_openai):
    propose = lambda changes: json.dumps({"changes": changes, "hypothesis": "h"})  # noqa: E731
    scripted_openai.enqueue(propose({"LR": 5.0}), propose({"LR": 0.03}), propose({"LR": 0.025}))
    await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 3}))
    prompts = [r["messages"][1]["content"] for r in scripted_openai.requests
               if "ML research assistant" in r["messages"][0]["content"]]
    for prompt in prompts[1:]:
        parts = prompt.split("~~~~")
        outside = "".join(parts[0::2])
        assert "fake crash" not in outside and "RuntimeError" not in outside
    assert "fake crash" in prompts[1]  # it is there, fenced, right after the crash


# ---------------------------------------------------------------- a base install


def test_the_demo_without_the_training_extra_says_which_extra_to_install(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'torch'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, _Block())\n")
    root = Path(__file__).resolve().parents[1]
    proc = run_bilevel("run", "--demo", "--headless", cwd=tmp_path,
                       env={"PYTHONPATH": os.pathsep.join([str(blocker), str(root)])})
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "pip install 'bilevel-autoresearch[train]'" in line and "numpy" in line
    assert not (tmp_path / "sessions").exists()

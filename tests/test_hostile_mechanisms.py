"""The hostile corpus through the real engine path: the scripted endpoint serves each module
in the Level 2 generate (and repair) rounds, and the wall must hold for every one of them.

One engine run per batch of modules (the generate round serves the first, each repair round
the next); every module's own outcome and reason is still asserted, from its
MechanismValidated event (rejected) or its MechanismDeactivated event (hostile only later).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import events as ev
from tests.conftest import Recorder, llm_config
from tests.fixtures.hostile.corpus import MODULES, late
from tests.support import ScriptedOpenAI
from tests.support.patience import patience

SECRET_VAR = "HOSTILE_TEST_API_KEY"
SECRET = "sk-hostile-test-7f3a9c1e5b"
MAX_ATTEMPTS = 11  # level2.max_repairs is at most 10


def _batches() -> list[list[str]]:
    rejected = [n for n, (_, outcome, _) in MODULES.items() if outcome == "rejected"]
    late = [n for n, (_, outcome, _) in MODULES.items() if outcome == "deactivated"]
    batches = []
    for name in late:  # each batch ends with the one module that passes the dry run
        take, rejected = rejected[:MAX_ATTEMPTS - 1], rejected[MAX_ATTEMPTS - 1:]
        batches.append(take + [name])
    while rejected:
        batches.append(rejected[:MAX_ATTEMPTS])
        rejected = rejected[MAX_ATTEMPTS:]
    return batches


BATCHES = _batches()


def test_the_corpus_covers_every_class_of_attack() -> None:
    assert len(MODULES) >= 40
    for needle in ("fork_exec", "thread", "setattr_sandbox", "mkfifo", "str_subclass", "dict_subclass", "finaliser",
                   "train_py", "path_name", "forge_events", "commands", "acceptance", "stdout", "passwd", "home",
                   "secret_env", "c_spin", "import_loops", "init_loops", "os_exit", "signal", "system_exit",
                   "proc_environ", "gc_objects", "frame_walk", "multiprocessing", "posix_spawn", "socket_inet",
                   "socket_unix", "socket_netlink", "huge_output", "deep_recursion", "memory", "fork_bomb"):
        assert any(needle in name for name in MODULES), needle


class Hostile:
    """Serves one batch of modules in the generate and repair rounds, like a model would."""

    def __init__(self, names: list[str], marks: Path) -> None:
        self.queue = [MODULES[n][0].replace("MARKS", repr(str(marks))).replace("SECRET_VAR", repr(SECRET_VAR))
                      for n in names]
        self.served_all = threading.Event()
        self.proposals = 0

    def __call__(self, req: dict) -> str:
        system, last = req["messages"][0]["content"], req["messages"][-1]["content"]
        if "ML research assistant" in system:
            self.proposals += 1
            if self.proposals > 2:  # keep iterations for the late modules to turn hostile in
                self.served_all.wait(60)
            return json.dumps({"changes": {"LR": round(0.01 * (1 + self.proposals % 7), 3)}, "hypothesis": "h"})
        if "search strategy" in system:
            return json.dumps({"diagnosis": "", "freeze": [], "unfreeze": [], "guidance": "", "reasoning": ""})
        if "Critique each candidate" in last:
            selected = "" if self.served_all.is_set() else "tabu"  # one research session per batch
            return json.dumps({"scores": {}, "selected": selected, "reason": "r"})
        if "Write the mechanism" in last or "failed validation" in last:
            source = self.queue.pop(0)
            if not self.queue:
                self.served_all.set()
            return f"```python\n{source}\n```\n"
        return "1. an idea"


def _session_text(session: Path) -> dict[str, str]:
    return {str(p.relative_to(session)): p.read_text(errors="replace") for p in session.rglob("*") if p.is_file()}


async def _run_batch(tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SECRET_VAR, SECRET)
    marks = tmp_path / "marks"
    marks.mkdir()
    responder = Hostile(names, marks)
    logs: list[str] = []
    with ScriptedOpenAI(responder=responder) as server:
        cfg = llm_config(tmp_path, server, **{
            "endpoint.api_key_env": SECRET_VAR, "search.group": "D", "search.outer_period": 1,
            "search.research_period": 1, "budget.iterations": 9, "level2.max_repairs": len(names) - 1,
            "level2.hook_timeout_s": 0.5, "level2.import_timeout_s": 2.0})
        engine = Engine.create(cfg, log=logs.append)
        rec = Recorder()
        engine.subscribe(rec)
        await asyncio.wait_for(engine.run(), patience(240))
        bodies = [json.dumps(r) for r in server.requests]
    return engine, rec, marks, logs, bodies


@pytest.mark.parametrize("batch", range(len(BATCHES)), ids=lambda i: f"batch{i}")
async def test_every_hostile_module_is_stopped_and_leaves_no_trace(tmp_path, monkeypatch, batch: int) -> None:
    names = BATCHES[batch]
    engine, rec, marks, logs, bodies = await _run_batch(tmp_path, names, monkeypatch)

    assert engine.state.status == "completed"  # the run completes
    first = rec.of(ev.ResearchStarted)[0].research_id
    validated = [v for v in rec.of(ev.MechanismValidated) if v.research_id == first]
    assert len(validated) == len(names), [v.failure[:100] for v in validated]
    for name, v in zip(names, validated):
        _, outcome, said = MODULES[name]
        if outcome == "rejected":
            assert not v.ok and said in v.failure, f"{name}: {v.failure[:400]}"
        else:
            assert v.ok, f"{name} should pass the dry run: {v.failure[:400]}"
            off = [d for d in rec.of(ev.MechanismDeactivated) if d.name == "Hostile"]
            assert off and said in off[0].reason, f"{name}: {[d.reason[:300] for d in off]}"
            assert "Hostile" not in engine.state.mechanisms
    # nothing written outside the worker's scratch: the markers folder stays empty
    assert list(marks.iterdir()) == []
    texts = _session_text(engine.dir)
    for rel, text in texts.items():
        assert SECRET not in text, rel
        if not rel.startswith("artifacts/mechanisms/") and not rel.startswith("artifacts/llm/"):
            assert "FORGED" not in text and "pwned" not in text, rel
    assert not any(SECRET in line for line in logs)
    assert not any(SECRET in body for body in bodies)
    # the session's events are the engine's own: contiguous sequence numbers, nothing forged
    lines = (engine.dir / "events.jsonl").read_text().splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(r.val_bpb is None or r.val_bpb > 0.001 for r in engine.state.records)
    for script in engine.dir.rglob("*.py"):
        if "mechanisms" not in script.parts:
            assert "pwned" not in script.read_text()


async def test_event_loop_keeps_ticking_while_a_hook_spins_in_c_code(tmp_path, monkeypatch) -> None:
    lags: list[tuple[float, float]] = []  # (when, how late)

    async def ticker() -> None:
        period = 0.01
        while True:
            before = time.monotonic()
            await asyncio.sleep(period)
            now = time.monotonic()
            lags.append((now, now - before - period))

    task = asyncio.create_task(ticker())
    try:
        engine, rec, marks, _, _ = await _run_batch(tmp_path, ["late_c_spin"], monkeypatch)
    finally:
        task.cancel()
    off = [d for d in rec.of(ev.MechanismDeactivated) if d.name == "Hostile"]
    assert off and "did not finish within 0.5 s" in off[0].reason
    # the window in which the hook spun: the 0.5 s before its worker was killed
    killed_at = time.monotonic() - (time.time() - off[0].ts)
    window = [lag for when, lag in lags if killed_at - 0.5 <= when <= killed_at]
    assert len(window) > 10, "the ticker did not run while the hook spun"
    assert max(window) < 0.1, f"event loop lag {max(window) * 1000:.0f} ms while a hook spun in C code"


async def test_a_mechanism_that_fills_its_scratch_is_deactivated_the_run_finishes_and_resume_leaves_it_off(
        tmp_path, monkeypatch) -> None:
    from core.record.session import SessionReader
    from tests.support.cli import start_bilevel

    monkeypatch.setenv(SECRET_VAR, SECRET)
    marks = tmp_path / "marks"
    marks.mkdir()
    responder = Hostile(["late_fill_scratch"], marks)
    # the audit's case: quiet in the dry run, then 15 MB files on each call (the per-file limit holds, the count did not)
    responder.queue = [late("for i in range(40):\n    try:\n"
                            "        with zipfile.ZipFile(f'fill{len(state.records)}_{i}.zip', 'w') as z:\n"
                            "            z.writestr('x', b'x' * (15 << 20))\n"
                            "    except OSError:\n        pass", imports="import zipfile")]
    with ScriptedOpenAI(responder=responder) as server:
        cfg = llm_config(tmp_path, server, **{
            "endpoint.api_key_env": SECRET_VAR, "search.group": "D", "search.outer_period": 1,
            "search.research_period": 1, "budget.iterations": 6, "level2.max_repairs": 0,
            "level2.hook_timeout_s": 5.0, "level2.import_timeout_s": 5.0})
        engine = Engine.create(cfg)
        rec = Recorder()
        engine.subscribe(rec)
        await asyncio.wait_for(engine.run(), patience(240))

        off = [d for d in rec.of(ev.MechanismDeactivated) if d.name == "Hostile"]
        assert off and "filled its scratch folder" in off[0].reason, [(type(e).__name__, str(e)[:300]) for e in rec.events
                                                                        if "Mechanism" in type(e).__name__]
        assert engine.state.status == "completed" and rec.of(ev.RunFinished)
        assert "Hostile" not in engine.state.mechanisms

        resumed = start_bilevel("resume", str(engine.dir), "--headless", "--iterations", "8", cwd=tmp_path)
        _, err = await asyncio.to_thread(resumed.communicate, timeout=patience(240))
    assert resumed.returncode == 0, err[-3000:]
    events = list(SessionReader(engine.dir).events())
    assert sum(isinstance(e, ev.RunFinished) for e in events) == 2
    activated = [e for e in events if isinstance(e, ev.MechanismActivated) and e.name == "Hostile"]
    assert len(activated) == 1  # never re-attached on resume

"""The scheduler runs every trial, the baseline included, and sees the engine only through its run port."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.engine.engine import Engine
from core.engine.run_port import RunPort
from core.engine.scheduler import Scheduler
from core.record import commands as cmds
from core.record import events as ev
from tests.conftest import Recorder, fast_config
from tests.support.patience import patience

PORT = {name for name in vars(RunPort) if not name.startswith("_")}
# FAKE_STEP_S (the stand-in's seconds per step) reaches the script only when the config passes it.
SLOWED = {"run.pass_env": ["FAKE_STEP_S"]}


class PortOnly:
    """The engine with only RunPort's members: whatever else the scheduler reaches for raises."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        if name not in PORT:
            raise AttributeError(f"the scheduler reached for Engine.{name}, which RunPort does not offer")
        return getattr(self.engine, name)


def through_the_port(cfg) -> tuple[Engine, Recorder]:
    engine = Engine.create(cfg)
    engine.scheduler = Scheduler(PortOnly(engine))
    rec = Recorder()
    engine.subscribe(rec)
    return engine, rec


def test_the_engine_offers_every_member_of_its_port(tmp_path):
    engine = Engine.create(fast_config(tmp_path))
    try:
        assert {"context", "inner", "finish", "outer_levels", "activate_ready", "expire_approvals"} <= PORT
        assert [name for name in sorted(PORT) if not hasattr(engine, name)] == []
    finally:
        engine.close()


@pytest.mark.parametrize("overrides", [
    {},  # one slot, one at a time
    {"run.gpus": "cpu:3"},  # asynchronous
    {"run.gpus": "cpu:2", "run.schedule": "batch"},
], ids=["one-slot", "async", "batch"])
async def test_a_whole_run_with_every_level_needs_nothing_of_the_engine_beyond_its_port(tmp_path, overrides):
    engine, rec = through_the_port(fast_config(tmp_path, **{
        "budget.iterations": 4, "search.group": "C", "search.outer_period": 2, "search.research_period": 1,
        **overrides}))
    await asyncio.wait_for(engine.run(), patience(120))
    assert engine.state.status == "completed", engine.state.finished
    assert [e.iteration for e in rec.of(ev.IterationFinished)][0] == 0  # the baseline, first
    assert sorted(e.iteration for e in rec.of(ev.IterationFinished)) == [0, 1, 2, 3, 4]
    assert [d.cycle for d in rec.of(ev.StrategyDecision)] == [1, 2]


async def test_one_slot_runs_the_strategy_cycle_before_the_next_iteration_starts(tmp_path):
    engine, rec = through_the_port(fast_config(tmp_path, **{
        "budget.iterations": 4, "search.group": "B", "search.outer_period": 2}))
    await asyncio.wait_for(engine.run(), patience(120))
    order = [("cycle", e.cycle) if isinstance(e, ev.StrategyDecision) else ("start", e.iteration)
             for e in rec.events if isinstance(e, (ev.StrategyDecision, ev.IterationStarted))]
    assert order == [("start", 0), ("start", 1), ("start", 2), ("cycle", 1), ("start", 3), ("start", 4),
                     ("cycle", 2)]


async def test_a_hard_stop_during_the_baseline_on_several_slots_interrupts_it_and_resume_reruns_it(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    cfg = fast_config(tmp_path, **SLOWED, **{"run.gpus": "cpu:3", "budget.iterations": 2})
    engine, rec = through_the_port(cfg)
    task = asyncio.create_task(engine.run())
    deadline = asyncio.get_running_loop().time() + patience(60)
    while not [e for e in rec.of(ev.TrainingProgress) if e.iteration == 0]:
        assert asyncio.get_running_loop().time() < deadline, "the baseline never trained"
        await asyncio.sleep(0.01)
    engine.submit(cmds.Stop(now=True))
    await asyncio.wait_for(task, patience(30))
    assert [e.iteration for e in rec.of(ev.IterationInterrupted)] == [0]
    assert engine.state.status == "stopped" and not engine.state.records
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    again = Engine.resume(engine.dir)
    later = Recorder()
    again.subscribe(later)
    await asyncio.wait_for(again.run(), patience(120))
    assert again.state.status == "completed"
    assert [e.iteration for e in later.of(ev.IterationFinished)][0] == 0
    assert sorted(r.iteration for r in again.state.records) == [0, 1, 2]


async def test_a_pause_asked_for_during_the_baseline_holds_every_slot_until_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    engine, rec = through_the_port(fast_config(tmp_path, **SLOWED, **{"run.gpus": "cpu:3",
                                                                      "budget.iterations": 2}))
    task = asyncio.create_task(engine.run())
    deadline = asyncio.get_running_loop().time() + patience(60)
    while not rec.of(ev.TrainingProgress):
        assert asyncio.get_running_loop().time() < deadline, "the baseline never trained"
        await asyncio.sleep(0.01)
    engine.submit(cmds.Pause())
    while not rec.of(ev.Paused):
        assert asyncio.get_running_loop().time() < deadline, "the pause never took effect"
        await asyncio.sleep(0.01)
    assert rec.of(ev.Paused)[0].next_iteration == 1
    assert [e.iteration for e in rec.of(ev.IterationStarted)] == [0]  # nothing after the baseline started
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    engine.submit(cmds.Resume())
    await asyncio.wait_for(task, patience(120))
    assert engine.state.status == "completed" and rec.of(ev.Unpaused)

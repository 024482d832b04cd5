"""The command inbox: pause, resume, guidance, freeze, abort and stop, each acknowledged."""
from __future__ import annotations

import asyncio

from core.record import commands as cmds
from core.record import events as ev
from core.engine.engine import Engine
from tests.support.patience import patience
from tests.conftest import Recorder, fast_config


# FAKE_STEP_S (the stand-in's seconds per step) reaches the script only when the config passes it.
SLOWED = {"run.pass_env": ["FAKE_STEP_S"]}


async def _start(cfg) -> tuple[Engine, Recorder, asyncio.Task]:
    engine = Engine.create(cfg)
    rec = Recorder()
    engine.subscribe(rec)
    return engine, rec, asyncio.create_task(engine.run())


async def _until(rec: Recorder, pred, timeout: float = 30.0) -> ev.Event:
    deadline = asyncio.get_running_loop().time() + patience(timeout)
    while asyncio.get_running_loop().time() < deadline:
        for e in rec.events:
            if pred(e):
                return e
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_pause_takes_effect_at_the_boundary_and_resume_continues(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 3}))
    await _until(rec, lambda e: isinstance(e, ev.TrainingStarted) and e.iteration == 1)
    engine.submit(cmds.Pause(), source="test")
    await _until(rec, lambda e: isinstance(e, ev.PauseRequested))
    paused = await _until(rec, lambda e: isinstance(e, ev.Paused))
    # The iteration that was running when pause was asked for finished first.
    finished = [e.iteration for e in rec.of(ev.IterationFinished)]
    assert paused.next_iteration == finished[-1] + 1
    await asyncio.sleep(0.3)
    assert not [e for e in rec.of(ev.IterationStarted) if e.iteration == paused.next_iteration]
    engine.submit(cmds.Resume(), source="test")
    await asyncio.wait_for(task, patience(60))
    assert engine.state.status == "completed" and rec.of(ev.Unpaused)
    assert [e.command for e in rec.of(ev.CommandReceived)] == ["pause", "resume"]


async def test_guidance_and_freeze_apply_from_the_next_proposal(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 4}))
    await _until(rec, lambda e: isinstance(e, ev.IterationStarted) and e.iteration == 1)
    engine.submit(cmds.SetGuidance(guidance="only the learning rate"))
    for name in ("WARMDOWN_RATIO", "BATCH_SIZE", "PATTERN"):
        engine.submit(cmds.Freeze(name=name))
    engine.submit(cmds.Freeze(name="DEPTH"))  # locked: refused with a reason
    engine.submit(cmds.Freeze(name="NOPE"))
    await _until(rec, lambda e: isinstance(e, ev.CommandReceived) and e.args.get("name") == "NOPE")
    await asyncio.wait_for(task, patience(60))
    acks = {(e.command, e.args.get("name")): e for e in rec.of(ev.CommandReceived)}
    assert not acks[("freeze", "DEPTH")].ok and "locked" in acks[("freeze", "DEPTH")].error
    assert not acks[("freeze", "NOPE")].ok and "unknown parameter" in acks[("freeze", "NOPE")].error
    assert engine.state.guidance == "only the learning rate"
    frozen_at = max(e.seq for e in rec.of(ev.ParamFrozen))
    later = [e for e in rec.of(ev.ProposalMade) if e.seq > frozen_at]
    assert later and all(set(p.changes.params) <= {"LR"} for p in later)


async def test_abort_training_ends_the_run_as_cancelled_and_the_loop_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    engine, rec, task = await _start(fast_config(tmp_path, **SLOWED, **{"budget.iterations": 2}))
    await _until(rec, lambda e: isinstance(e, ev.TrainingProgress) and e.iteration == 1)
    engine.submit(cmds.AbortTraining(iteration=0), source="lagging viewer")  # the baseline ended long ago
    engine.submit(cmds.AbortTraining(iteration=1))
    await _until(rec, lambda e: isinstance(e, ev.IterationFinished) and e.iteration == 1)
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    await asyncio.wait_for(task, patience(60))
    first = [e for e in rec.of(ev.IterationFinished) if e.iteration == 1][0]
    assert first.decision == "cancelled" and first.val_bpb is None
    stale, fresh = rec.of(ev.CommandReceived)
    assert not stale.ok and "#0 is no longer in progress (#1 is)" in stale.error
    assert fresh.ok and fresh.args["iteration"] == 1
    assert engine.state.status == "completed" and engine.state.next_iteration == 3


async def test_stop_now_interrupts_the_running_iteration_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    engine, rec, task = await _start(fast_config(tmp_path, **SLOWED, **{"budget.iterations": 5}))
    await _until(rec, lambda e: isinstance(e, ev.TrainingProgress) and e.iteration == 1)
    engine.submit(cmds.Stop(now=True))
    await asyncio.wait_for(task, patience(30))
    assert rec.of(ev.IterationInterrupted)[0].iteration == 1
    assert rec.events[-1] == rec.of(ev.RunFinished)[0] and rec.events[-1].status == "stopped"
    assert engine.state.next_iteration == 1  # re-run on resume


async def test_unknown_command_is_refused_with_the_list(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 1}))
    engine.submit(cmds.parse("dance"))
    await asyncio.wait_for(task, patience(60))
    ack = rec.of(ev.CommandReceived)[0]
    assert not ack.ok and "pause" in ack.error


async def test_pinned_user_guidance_survives_the_next_strategy_cycle(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 4, "search.group": "B",
                                                              "search.outer_period": 2}))
    await _until(rec, lambda e: isinstance(e, ev.IterationStarted) and e.iteration == 1)
    engine.submit(cmds.SetGuidance(guidance="only the learning rate", pinned=True))
    await asyncio.wait_for(task, patience(60))
    assert [d.cycle for d in rec.of(ev.StrategyDecision)] == [1, 2]
    assert engine.state.guidance == "only the learning rate" and engine.state.guidance_pinned
    not_applied = rec.of(ev.GuidanceNotApplied)
    assert [e.cycle for e in not_applied] == [1, 2]
    assert all("pinned" in e.reason and e.guidance for e in not_applied)
    assert not [e for e in rec.of(ev.GuidanceChanged) if e.source == "strategy"]


async def test_unpinned_user_guidance_is_rewritten_by_the_next_strategy_cycle(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 2, "search.group": "B",
                                                              "search.outer_period": 2}))
    await _until(rec, lambda e: isinstance(e, ev.IterationStarted) and e.iteration == 1)
    engine.submit(cmds.SetGuidance(guidance="only the learning rate"))
    await asyncio.wait_for(task, patience(60))
    rewritten = [e for e in rec.of(ev.GuidanceChanged) if e.source == "strategy"]
    assert [e.cycle for e in rewritten] == [1] and engine.state.guidance == rewritten[0].guidance
    assert engine.state.guidance_source == "strategy" and not rec.of(ev.GuidanceNotApplied)


async def test_guidance_that_nothing_reads_is_marked_with_the_reason(tmp_path):
    engine, rec, task = await _start(fast_config(tmp_path, **{"budget.iterations": 2, "search.group": "A"}))
    await _until(rec, lambda e: isinstance(e, ev.IterationStarted) and e.iteration == 1)
    engine.submit(cmds.SetGuidance(guidance="only the learning rate"))
    await asyncio.wait_for(task, patience(60))
    changed = rec.of(ev.GuidanceChanged)[-1]
    assert "nothing reads guidance" in changed.unread and "offline" in changed.unread
    assert engine.state.guidance_unread == changed.unread

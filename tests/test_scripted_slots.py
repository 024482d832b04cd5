"""The scripted engine's parallel trials: what the app's tests of many slots stand on."""
from __future__ import annotations

import asyncio
from pathlib import Path

from core.record import commands as cmds
from core.record import events as ev
from core.record.session import SessionReader
from tests.support.scripted_engine import Plan, record_session

FOUR_GPUS = dict(iterations=12, slots=4, gpus=True, progress_per_run=6, crash_at=None)


def events(path: Path) -> list[ev.Event]:
    return list(SessionReader(path).events())


def finished(evs: list[ev.Event]) -> list[ev.IterationFinished]:
    return [e for e in evs if isinstance(e, ev.IterationFinished)]


async def test_four_slots_run_four_trials_at_once_on_distinct_slots(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**FOUR_GPUS, skipped_gpus=1))
    evs = events(tmp_path / "s")
    configured = next(e for e in evs if isinstance(e, ev.SlotsConfigured))
    assert [s.name for s in configured.slots] == ["gpu0", "gpu1", "gpu2", "gpu3", "gpu4"]
    assert [bool(s.skipped) for s in configured.slots] == [False] * 4 + [True]
    in_flight: dict[int, str] = {}
    most = 0
    for e in evs:
        if isinstance(e, ev.TrainingStarted):
            assert e.slot not in in_flight.values(), f"#{e.iteration} on busy {e.slot}"
            assert e.slot != "gpu4"  # a skipped GPU is never trained on
            in_flight[e.iteration] = e.slot
            most = max(most, len(in_flight))
        elif isinstance(e, ev.TrainingFinished):
            del in_flight[e.iteration]
    assert most == 4 and not in_flight


async def test_verdicts_come_in_finish_order_and_each_iteration_once(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**FOUR_GPUS))
    order = [e.iteration for e in finished(events(tmp_path / "s"))]
    assert sorted(order) == list(range(13))
    assert order != sorted(order)  # a later trial finished before an earlier one
    assert order[0] == 0  # the baseline runs alone, first


async def test_proposals_record_what_finished_and_what_ran(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**FOUR_GPUS))
    evs = events(tmp_path / "s")
    made = {e.iteration: e for e in evs if isinstance(e, ev.ProposalMade)}
    assert made[1].saw_results == [0] and made[1].saw_running == []
    assert made[4].saw_running == [1, 2, 3]
    done_before = {e.iteration for e in evs[:evs.index(made[8])] if isinstance(e, ev.IterationFinished)}
    assert set(made[8].saw_results) == done_before


async def test_gpu_slots_are_sampled_and_cpu_slots_are_not(tmp_path: Path):
    await record_session(tmp_path / "gpu", Plan(**FOUR_GPUS))
    await record_session(tmp_path / "cpu", Plan(**{**FOUR_GPUS, "gpus": False}))
    samples = [e for e in events(tmp_path / "gpu") if isinstance(e, ev.SlotsSampled)]
    assert samples and {s.name for s in samples[-1].samples} == {"gpu0", "gpu1", "gpu2", "gpu3"}
    assert all(s.memory_used_mb and s.memory_total_mb for e in samples for s in e.samples)
    cpu = events(tmp_path / "cpu")
    assert not [e for e in cpu if isinstance(e, ev.SlotsSampled)]
    assert {e.slot for e in cpu if isinstance(e, ev.TrainingStarted)} == {"cpu0", "cpu1", "cpu2", "cpu3"}


async def test_two_recordings_of_a_parallel_plan_are_the_same_bytes(tmp_path: Path):
    for run in ("a", "b"):
        await record_session(tmp_path / run / "s", Plan(**FOUR_GPUS))
    assert (tmp_path / "a/s/events.jsonl").read_bytes() == (tmp_path / "b/s/events.jsonl").read_bytes()


async def test_an_abort_naming_one_trial_cancels_only_that_one(tmp_path: Path):
    plan = Plan(**FOUR_GPUS, scripted_commands={4: [cmds.AbortTraining(iteration=2)]})
    await record_session(tmp_path / "s", plan)
    evs = events(tmp_path / "s")
    decisions = {e.iteration: e.decision for e in finished(evs)}
    assert decisions[2] == "cancelled"
    assert [n for n, d in decisions.items() if d == "cancelled"] == [2]
    ack = next(e for e in evs if isinstance(e, ev.CommandReceived) and e.command == "abort_training")
    assert ack.ok and ack.args == {"iteration": 2}


async def test_an_abort_of_all_cancels_every_trial_then_in_flight(tmp_path: Path):
    plan = Plan(**FOUR_GPUS, scripted_commands={4: [cmds.AbortTraining(iteration=None)]})
    await record_session(tmp_path / "s", plan)
    decisions = {e.iteration: e.decision for e in finished(events(tmp_path / "s"))}
    assert sorted(n for n, d in decisions.items() if d == "cancelled") == [1, 2, 3]


async def test_an_abort_of_a_finished_trial_is_refused_with_the_runs_in_flight(tmp_path: Path):
    plan = Plan(**FOUR_GPUS, scripted_commands={9: [cmds.AbortTraining(iteration=1)]})
    await record_session(tmp_path / "s", plan)
    evs = events(tmp_path / "s")
    ack = next(e for e in evs if isinstance(e, ev.CommandReceived) and e.command == "abort_training")
    assert not ack.ok and "#1 is no longer in progress" in ack.error
    assert "cancelled" not in {e.decision for e in finished(evs)}


async def test_a_hard_stop_interrupts_every_trial_in_flight(tmp_path: Path):
    plan = Plan(**FOUR_GPUS, scripted_commands={6: [cmds.Stop(now=True, reason="test")]})
    state = await record_session(tmp_path / "s", plan)
    evs = events(tmp_path / "s")
    interrupted = [e.iteration for e in evs if isinstance(e, ev.IterationInterrupted)]
    assert len(interrupted) >= 3 and state.status == "stopped"
    assert not set(interrupted) & {e.iteration for e in finished(evs)}


async def test_strategy_cycles_count_verdicts_whatever_order_they_came_in(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**{**FOUR_GPUS, "outer_period": 3}))
    evs = events(tmp_path / "s")
    for cycle in (e for e in evs if isinstance(e, ev.StrategyStarted)):
        before = [e for e in evs[:evs.index(cycle)] if isinstance(e, ev.IterationFinished) and e.iteration]
        assert len(before) == 3 * cycle.cycle and before[-1].iteration == cycle.after_iteration
    assert len([e for e in evs if isinstance(e, ev.StrategyStarted)]) == 4

"""Parallel trials (issue 13): four CPU slots, the real fast stand-in script, the scripted LLM."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import mechanisms
from core.engine.engine import Engine
from core.record import config
from core.record import commands as cmds
from core.record import events as ev
from core.record.processes import recorded_processes
from core.record.session import SessionReader
from core.record.state import fold
from mechanisms.base import Mechanism
from tests.conftest import QUADRATIC, Recorder, fast_config, llm_config, run_engine
from tests.support.cli import run_bilevel, start_bilevel, write_fast_config
from tests.support.openai_server import Reply, ScriptedOpenAI
from tests.support.patience import patience

# FAKE_STEP_S (the stand-in's seconds per step) reaches the script only when the config passes it.
CPU4 = {"run.gpus": "cpu:4", "run.pass_env": ["FAKE_STEP_S"]}


def most_at_once(events: list[ev.Event]) -> int:
    """The most training runs in progress at the same time, from the order of their events."""
    now = most = 0
    for e in events:
        if isinstance(e, ev.TrainingStarted):
            now += 1
            most = max(most, now)
        elif isinstance(e, ev.TrainingFinished):
            now -= 1
    return most


def asked_for(body: dict) -> int:
    """How many proposals a Level 1 request asks for (0: not a proposal request)."""
    text = body["messages"][-1]["content"]
    found = re.search(r"Propose (?:the next )?(\d+) (?:replacement )?experiments", text)
    return int(found.group(1)) if found else 0


def proposals(*changes: dict[str, Any]) -> str:
    return json.dumps({"proposals": [{"changes": c, "hypothesis": f"try {c}"} for c in changes]})


class Proposer:
    """A scripted LLM for parallel Level 1: answers each request with the next proposals of a list."""

    def __init__(self, planned: list[dict[str, Any]], *, first: dict[int, dict[str, Any]] | None = None):
        self.planned = list(planned)
        self.first = first or {}  # request number (1-based) -> the proposal it gets first, before the plan's
        self.requests: list[dict] = []

    def __call__(self, body: dict) -> Reply:
        k = asked_for(body)
        assert k, "only proposal requests are expected"
        self.requests.append(body)
        scripted = [self.first[len(self.requests)]] if len(self.requests) in self.first else []
        take = k - len(scripted)
        scripted, self.planned = scripted + self.planned[:take], self.planned[take:]
        return Reply(proposals(*scripted))


def lr_plan(n: int, start: float = 0.08, step: float = 0.007) -> list[dict[str, Any]]:
    """n distinct proposals (LR values far more than 1 % apart), each worse than the baseline's LR 0.04."""
    return [{"LR": round(start + i * step, 5)} for i in range(n)]


# ------------------------------------------------------------------ the fold


def test_the_fold_keeps_every_trial_in_flight_and_the_trace_in_finish_order():
    s = fold([
        ev.SessionStarted(session="s"),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=2.0),
        *[ev.IterationStarted(iteration=n) for n in (1, 2, 3)],
        ev.TrainingStarted(iteration=1, slot="cpu0"), ev.TrainingStarted(iteration=2, slot="cpu1"),
        ev.TrainingProgress(iteration=1, step=3),
    ])
    assert list(s.in_flight) == [1, 2, 3] and s.running == 3 and s.next_iteration == 4
    assert s.in_flight[1].training.slot == "cpu0" and s.in_flight[1].progress.step == 3
    assert s.training.iteration == 2  # the run started last
    s.apply(ev.IterationFinished(iteration=2, decision="discard", val_bpb=2.1))
    s.apply(ev.IterationInterrupted(iteration=1))
    assert [r.iteration for r in s.records] == [0, 2] and list(s.in_flight) == [3]
    assert s.to_rerun == [1] and s.next_iteration == 1 and s.next_new_iteration == 4
    assert s.training is None and s.progress is None
    s.apply(ev.IterationStarted(iteration=1))  # re-run with its number
    assert s.next_iteration == 4 and s.to_rerun == []
    s.apply(ev.IterationFinished(iteration=2, decision="keep", val_bpb=1.0))  # a stray second verdict
    assert s.best_val_bpb == 2.0 and len(s.records) == 2


# ------------------------------------------------------------------ running at once


async def test_four_trials_really_run_at_once_on_four_cpu_slots(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    engine, rec = await run_engine(fast_config(tmp_path, **CPU4, **{"budget.iterations": 8}))
    assert engine.state.status == "completed"
    assert most_at_once(rec.events) == 4
    assert sorted(r.iteration for r in engine.state.records) == list(range(9))
    assert not engine.state.in_flight
    # The baseline runs alone, first.
    first = [e.iteration for e in rec.of(ev.TrainingStarted)][:1]
    assert first == [0] and rec.of(ev.IterationFinished)[0].iteration == 0


async def test_one_call_proposes_for_every_free_slot_and_the_prompt_names_the_running_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    llm = Proposer(lr_plan(12))
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{"budget.iterations": 7}))
    assert engine.state.status == "completed"
    # Four free slots and one proposal to queue: five proposals from the first call.
    assert asked_for(llm.requests[0]) == 5
    assert len(llm.requests) < 7
    made = rec.of(ev.ProposalMade)
    assert made[0].saw_running == [] and made[0].saw_results == [0]
    changes = {e.iteration: e.changes for e in made}
    later = [e for e in made if e.saw_running]
    assert later
    for e in later:  # what the proposer saw was running then, and its prompt named each with its changes
        prompt = next(r for r in llm.requests if f"#{e.iteration}" not in r["messages"][-1]["content"]
                      and all(f"- #{n}: " in r["messages"][-1]["content"] for n in e.saw_running))
        text = prompt["messages"][-1]["content"]
        assert "running, result unknown — do not repeat; prefer complementary directions" in text
        asked = max(i for i, x in enumerate(rec.events[:rec.events.index(e)]) if isinstance(x, ev.LLMRequest))
        for n in e.saw_running:
            assert f"- #{n}: LR = {changes[n]['LR']}" in text
            verdict = next(x for x in rec.of(ev.IterationFinished) if x.iteration == n)
            assert rec.events.index(verdict) > asked  # its result was unknown when the prompt was written
        assert not set(e.saw_results) & set(e.saw_running)


async def test_a_near_duplicate_of_a_running_trial_is_rejected_and_reasked(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    plan = lr_plan(12)
    # The second call comes when slots free up; #5, queued by the first, is then running or queued.
    repeat = {"LR": round(plan[4]["LR"] * 1.004, 6)}  # 0.4 % from it
    llm = Proposer(plan, first={2: repeat})
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{"budget.iterations": 7}))
    assert engine.state.status == "completed"
    rejected = [e for e in rec.of(ev.ProposalRejected) if e.kind == "repeat"]
    assert len(rejected) == 1 and rejected[0].changes == repeat
    assert "a repeat of iteration #5 (running, result unknown)" in rejected[0].reason
    reask = llm.requests[2]["messages"][-1]["content"]
    assert "a repeat of iteration #5" in reask and "Propose 1 replacement experiments" in reask
    again = [e for e in rec.of(ev.ProposalMade) if e.iteration == rejected[0].iteration]
    assert [e.attempt for e in again] == [1, 2]
    trained = {r.iteration: r.values["LR"] for r in engine.state.records if r.iteration}
    assert repeat["LR"] not in trained.values() and len(set(trained.values())) == len(trained)


def most_proposed_open(events: list[ev.Event]) -> int:
    """The most proposals made and still without a verdict at once (running or waiting for a slot)."""
    open_: set[int] = set()
    most = 0
    for e in events:
        if isinstance(e, ev.ProposalMade) and e.iteration:
            open_.add(e.iteration)
        elif isinstance(e, ev.IterationFinished) or (isinstance(e, ev.ProposalRejected) and e.kind == "stale"):
            open_.discard(e.iteration)
        most = max(most, len(open_))
    return most


@pytest.mark.parametrize("max_queued", [1, 2])
async def test_max_queued_proposals_wait_for_a_slot_and_never_more(tmp_path, monkeypatch, max_queued):
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    llm = Proposer(lr_plan(12))
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{
            "budget.iterations": 10, "run.max_queued": max_queued}))
    assert engine.state.status == "completed", engine.state.finished
    assert asked_for(llm.requests[0]) == 4 + max_queued  # every slot, and the queue, in the first call
    assert most_proposed_open(rec.events) == 4 + max_queued  # four running, max_queued waiting, never more
    assert most_at_once(rec.events) == 4
    assert sorted(r.iteration for r in engine.state.records) == list(range(11))


def test_more_than_two_queued_proposals_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="max_queued"):
        fast_config(tmp_path, **{"run.max_queued": 3})


async def test_a_new_best_drops_the_queued_proposal_and_never_a_running_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    # Every running trial beats the baseline (LR 0.04), so whichever ends first is a new best,
    # while the fifth proposal, made against the baseline, still waits for a slot.
    llm = Proposer([{"LR": 0.03}, {"LR": 0.025}, {"LR": 0.02}, {"LR": 0.022}, {"LR": 0.035}, {"LR": 0.019},
                    {"LR": 0.021}, {"LR": 0.0185}, {"LR": 0.0175}, {"LR": 0.0165}])
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{"budget.iterations": 5}))
    assert engine.state.status == "completed"
    stale = [e for e in rec.of(ev.ProposalRejected) if e.kind == "stale"]
    # On a busy machine the re-made #5 may wait through a second new best and be dropped again.
    assert stale and {e.iteration for e in stale} == {5} and stale[0].changes == {"LR": 0.035}
    keeps = [(rec.events.index(e), e.iteration) for e in rec.of(ev.IterationFinished) if e.decision == "keep"]
    for drop in stale:  # each drop follows a new best the dropped proposal had not seen
        at = rec.events.index(drop)
        made = [e for e in rec.events[:at] if isinstance(e, ev.ProposalMade) and e.iteration == 5][-1]
        # not "written after the proposal": a best can land while its LLM call is still answering
        assert any(k < at and n not in made.saw_results for k, n in keeps)
    # Dropped before it ran: #5 trained once, with the last proposal made for it.
    assert [e.iteration for e in rec.of(ev.TrainingStarted)].count(5) == 1
    last_made = [e for e in rec.of(ev.ProposalMade) if e.iteration == 5][-1]
    assert engine.state.records[-1].iteration == 5 and engine.state.records[-1].changes == last_made.changes
    # No running trial was dropped: every one trained to a verdict.
    assert sorted(r.iteration for r in engine.state.records) == list(range(6))
    assert all(r.decision in ("baseline", "keep", "discard") for r in engine.state.records)


async def test_a_result_is_judged_against_the_best_when_it_arrives_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    llm = Proposer([{"LR": 0.03}, {"LR": 0.025}, {"LR": 0.02}, {"LR": 0.022}, {"LR": 0.019}])
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{"budget.iterations": 4}))
    finished = [e for e in rec.of(ev.IterationFinished) if e.iteration]
    moved = [e for e in finished[1:] if "against the best when the result arrived" in e.rule]
    assert moved, [e.rule for e in finished]
    for e in finished:  # each compared with the best of its moment, and a keep became the best script
        assert e.best_before == min(x.val_bpb for x in rec.of(ev.IterationFinished)
                                    if x.seq < e.seq and x.decision in ("baseline", "keep"))
    best = min(finished, key=lambda e: e.val_bpb)
    assert engine.state.best_val_bpb == best.val_bpb and engine.state.best_script == best.script


# ------------------------------------------------------------------ control


async def _run_with(cfg, on_event) -> tuple[Engine, Recorder]:
    engine = Engine.create(cfg)
    rec = Recorder()
    engine.subscribe(rec)
    engine.subscribe(lambda e: on_event(engine, e))
    await engine.run()
    return engine, rec


def _when_training(count: int, act):
    """Calls ``act(engine)`` once, when ``count`` trials after the baseline have their process."""
    started: set[int] = set()

    def watch(engine: Engine, e: ev.Event) -> None:
        if isinstance(e, ev.TrainingProcess) and e.iteration:
            started.add(e.iteration)
            if len(started) == count:
                act(engine)
    return watch


async def test_abort_of_one_trial_cancels_only_that_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.4")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 5})
    engine, rec = await _run_with(cfg, _when_training(4, lambda eng: eng.submit(cmds.AbortTraining(iteration=2))))
    verdicts = {e.iteration: e.decision for e in rec.of(ev.IterationFinished)}
    assert verdicts[2] == "cancelled"
    assert [n for n, d in verdicts.items() if d == "cancelled"] == [2]
    assert engine.state.status == "completed" and len(verdicts) == 6


async def test_abort_of_all_cancels_every_trial_in_flight_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.4")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 5})
    engine, rec = await _run_with(cfg, _when_training(4, lambda eng: eng.submit(cmds.AbortTraining())))
    verdicts = {e.iteration: e.decision for e in rec.of(ev.IterationFinished)}
    assert sorted(n for n, d in verdicts.items() if d == "cancelled") == [1, 2, 3, 4]
    assert verdicts[5] in ("keep", "discard") and engine.state.status == "completed"
    ack = next(e for e in rec.of(ev.CommandReceived) if e.command == "abort_training")
    assert ack.ok


async def test_abort_of_a_trial_not_running_names_the_ones_that_are(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.4")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 4})
    engine, rec = await _run_with(cfg, _when_training(4, lambda eng: eng.submit(cmds.AbortTraining(iteration=0))))
    ack = next(e for e in rec.of(ev.CommandReceived) if e.command == "abort_training")
    assert not ack.ok and "#0 is no longer in progress (#1, #2, #3, #4 are)" in ack.error
    assert not [e for e in rec.of(ev.IterationFinished) if e.decision == "cancelled"]


async def test_pause_stops_new_proposals_while_the_running_trials_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 8})
    seen: dict[str, Any] = {}

    def watch(engine: Engine, e: ev.Event) -> None:
        if isinstance(e, ev.TrainingProcess) and e.iteration == 4 and "pause" not in seen:
            seen["pause"] = True
            engine.submit(cmds.Pause())
        if isinstance(e, ev.Paused):
            seen["in_flight"] = set(engine.state.in_flight)
            seen["started"] = max(engine.state.in_flight)
        if (isinstance(e, ev.IterationFinished) and engine.state.paused and "resume" not in seen
                and not any(t.training for t in engine.state.in_flight.values())):
            seen["resume"] = True
            engine.submit(cmds.Resume())

    engine, rec = await _run_with(cfg, watch)
    paused = rec.of(ev.Paused)[0]
    unpaused = rec.of(ev.Unpaused)[0]
    between = rec.events[rec.events.index(paused):rec.events.index(unpaused)]
    # Paused: the running trials finished, nothing new was proposed or started.
    assert not [e for e in between if isinstance(e, (ev.ProposalMade, ev.IterationStarted, ev.TrainingStarted))]
    assert {e.iteration for e in between if isinstance(e, ev.IterationFinished)} >= {1, 2, 3, 4} - {
        e.iteration for e in rec.events[:rec.events.index(paused)] if isinstance(e, ev.IterationFinished)}
    assert engine.state.status == "completed" and len(engine.state.records) == 9


async def test_a_soft_stop_lets_the_running_trials_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 12})
    engine, rec = await _run_with(cfg, _when_training(4, lambda eng: eng.submit(cmds.Stop(reason="enough"))))
    assert engine.state.status == "stopped"
    verdicts = {e.iteration: e.decision for e in rec.of(ev.IterationFinished)}
    assert all(verdicts.get(n) in ("keep", "discard") for n in (1, 2, 3, 4))
    # The proposal queued for a slot never ran: interrupted, proposed again on resume.
    assert [e.iteration for e in rec.of(ev.IterationInterrupted)] == [5]
    assert 5 not in {e.iteration for e in rec.of(ev.TrainingStarted)}


async def test_a_hard_stop_interrupts_every_trial_and_resume_reruns_only_those(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.4")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 6})
    engine, rec = await _run_with(cfg, _when_training(4, lambda eng: eng.submit(cmds.Stop(reason="now", now=True))))
    assert engine.state.status == "stopped"
    assert sorted(e.iteration for e in rec.of(ev.IterationInterrupted)) == [1, 2, 3, 4, 5]
    assert [r.iteration for r in engine.state.records] == [0]
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    resumed = Engine.resume(engine.dir)
    await resumed.run()
    assert resumed.state.status == "completed"
    assert sorted(r.iteration for r in resumed.state.records) == list(range(7))


# ------------------------------------------------------------------ kill -9 with four in flight


def test_kill_9_with_four_trials_in_flight_then_resume_loses_nothing_and_repeats_no_finished_trial(tmp_path):
    cfg = write_fast_config(tmp_path, iterations=9, gpus="cpu:4")
    cfg.write_text(cfg.read_text() + 'pass_env = ["FAKE_STEP_S"]\n')  # [run] is the last table
    engine = start_bilevel("run", "--headless", str(cfg), cwd=tmp_path, env={"FAKE_STEP_S": "0.5"})
    sessions = tmp_path / "sessions"
    deadline = time.monotonic() + patience(120)
    state = session = None
    try:
        while time.monotonic() < deadline:
            session = next(iter(sessions.iterdir()), None) if sessions.is_dir() else None
            if session is not None and (session / "events.jsonl").exists():
                state = fold(SessionReader(session).events())
                training = [t for t in state.in_flight.values() if t.training is not None]
                processes = {e.iteration for e in SessionReader(session).events()
                             if isinstance(e, ev.TrainingProcess)}
                if (len(training) == 4 and state.iterations_done >= 1
                        and all(t.iteration in processes for t in training)):
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("never had four trials in flight after a finished one")
        engine.send_signal(signal.SIGKILL)
    finally:
        engine.kill()
        engine.communicate()
    assert session is not None and state is not None
    before_resume = len(list(SessionReader(session).events()))
    state = fold(SessionReader(session).events())  # the log as the killed engine left it
    cut = set(state.in_flight)
    done_before = {r.iteration for r in state.records}
    pids = [p.pid for p in recorded_processes(session) if p.iteration in cut]
    resumed = run_bilevel("resume", "--headless", str(session), cwd=tmp_path, env={"FAKE_STEP_S": "0.01"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = list(SessionReader(session).events())
    after = events[before_resume:]
    assert {e.iteration for e in after if isinstance(e, ev.IterationInterrupted)} == cut
    retrained = {e.iteration for e in after if isinstance(e, ev.TrainingStarted)}
    assert cut <= retrained and not retrained & done_before  # no finished trial is repeated
    final = fold(events)
    assert sorted(r.iteration for r in final.records) == list(range(10))  # nothing lost, nothing twice
    assert final.status == "completed" and not final.in_flight
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
               for pid in pids)


# ------------------------------------------------------------------ batch mode


class Ticks:
    """A clock that advances one second per reading: the same timestamps in every run."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


async def _batch_log(tmp_path: Path, session: Path, server: ScriptedOpenAI) -> bytes:
    server.responder = Proposer(lr_plan(8, start=0.012, step=0.004) + [{"WARMDOWN_RATIO": 0.31}])
    cfg = llm_config(tmp_path, server, **CPU4, **{"run.schedule": "batch", "run.batch_size": 4,
                                                  "budget.iterations": 8})
    # Timestamps tick one second per event; a frozen monotonic clock makes every measured duration 0.
    engine = Engine(cfg, session, clock=Ticks(), monotonic=lambda: 100.0)
    await engine.run()
    assert engine.state.status == "completed", engine.state.finished
    return (session / "events.jsonl").read_bytes()


async def test_batch_mode_writes_the_same_log_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0")
    session = tmp_path / "sessions" / "batch"
    with ScriptedOpenAI() as server:  # one server: its address is in the recorded config
        first = await _batch_log(tmp_path, session, server)
        shutil.rmtree(session)
        second = await _batch_log(tmp_path, session, server)
    lines = zip(first.decode().splitlines(), second.decode().splitlines())
    assert first == second, next((f"{a} != {b}" for a, b in lines if a != b), "the logs differ in length")
    # The machine's part (pids, process groups) sits beside the log, under the tags the log names.
    tags = [e.tag for e in SessionReader(session).events() if isinstance(e, ev.TrainingProcess)]
    assert [p.tag for p in recorded_processes(session)] == tags and len(set(tags)) == 9
    assert all(p.pid > 0 for p in recorded_processes(session))
    events = list(SessionReader(session).events())
    state = fold(events)
    # Batches of four: every trial of a batch is judged before the next batch is proposed.
    order = [(e.type, e.iteration) for e in events
             if isinstance(e, (ev.ProposalMade, ev.IterationFinished)) and e.iteration]
    made = [i for t, i in order if t == "proposal_made"]
    assert made[:4] == [1, 2, 3, 4]
    assert order.index(("proposal_made", 5)) > max(order.index(("iteration_finished", n)) for n in (1, 2, 3, 4))
    assert sorted(r.iteration for r in state.records) == list(range(9))
    # The four ran at once: each had its process before any of them finished.
    first_end = next(i for i, e in enumerate(events) if isinstance(e, ev.TrainingFinished) and e.iteration)
    assert [e.iteration for e in events[:first_end] if isinstance(e, ev.TrainingProcess)] == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ the outer levels over the parallel trace


async def test_strategy_cycles_count_finished_iterations_and_run_while_trials_are_in_flight(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 8, "search.group": "B", "search.outer_period": 2})
    engine, rec = await run_engine(cfg)
    assert engine.state.status == "completed"
    started = rec.of(ev.StrategyStarted)
    assert [e.cycle for e in started] == [1, 2, 3, 4]
    assert len(rec.of(ev.StrategyDecision)) == 4
    for e in started:  # each cycle came once K more iterations had finished, counted when it began
        before = rec.events[:rec.events.index(e)]
        finished = [x for x in before if isinstance(x, ev.IterationFinished) and x.iteration]
        assert len(finished) >= 2 * e.cycle and e.after_iteration == len(finished)
    in_flight_then = []
    for e in started[:-1]:
        state = fold(rec.events[:rec.events.index(e)])
        in_flight_then.append(len(state.in_flight))
    assert any(in_flight_then), "no cycle ran while trials were in flight"


# ------------------------------------------------------------------ mechanism hooks over parallel trials


class Witness(Mechanism):
    """Turns every verdict round and notes the trial each snapshot names, with the result it came with."""

    name = "witness"
    seen: ClassVar[list[tuple[str, int, float | None]]] = []

    def decide(self, state, result, best):
        Witness.seen.append(("decide", state.iteration, result["val_bpb"]))
        val = result["val_bpb"]
        return "discard" if val is not None and best is not None and val < best else "keep"

    def observe(self, state, result):
        Witness.seen.append(("observe", state.iteration, result["val_bpb"]))


async def test_mechanism_effects_name_their_own_trial_while_others_are_in_flight(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    monkeypatch.setitem(mechanisms.BUILTINS, "witness", Witness)
    monkeypatch.setattr(Witness, "seen", [])
    cfg = fast_config(tmp_path, **CPU4, **{"budget.iterations": 8, "search.mechanisms": ["witness"]})
    engine, rec = await run_engine(cfg)
    assert engine.state.status == "completed", engine.state.finished
    trained = {e.iteration: e.val_bpb for e in rec.of(ev.TrainingFinished)}
    # Each hook's snapshot names the trial whose result it was given.
    assert {hook for hook, _, _ in Witness.seen} == {"decide", "observe"}
    assert all(trained[named] == val for _, named, val in Witness.seen), Witness.seen
    effects = [e for e in rec.of(ev.MechanismEffect) if e.hook == "decide"]
    assert len(effects) == 8  # every trial's verdict was turned round (a keep of a discard: refused)
    for effect in effects:  # and the effect names the trial whose verdict it turned
        after = rec.events[rec.events.index(effect):]
        verdict = next(e for e in after if isinstance(e, ev.IterationFinished) and e.iteration == effect.iteration)
        assert verdict.rule.startswith("overridden by mechanism witness") == (effect.effect == "overrode")
    # The case that matters: a trial started later was still running when a verdict was turned.
    assert any(fold(rec.events[:rec.events.index(e)]).running != e.iteration for e in effects)


# ------------------------------------------------------------------ confirmation runs on free slots


async def test_a_confirmation_run_takes_a_free_slot_while_other_trials_run_and_its_verdict_is_right(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    # The stand-in, with a seed that moves val_bpb a little (as a real seed does), so a confirmation can pass.
    script = tmp_path / "train.py"
    script.write_text(QUADRATIC.read_text().replace('0.0001 * int(os.environ.get("BILEVEL_SEED", "0"))',
                                                    '0.0001 * (int(os.environ.get("BILEVEL_SEED", "0")) % 3)'))
    llm = Proposer([{"LR": 0.03}, {"LR": 0.05}, {"LR": 0.025}, {"LR": 0.06}, {"LR": 0.022}, {"LR": 0.07},
                    {"LR": 0.021}, {"LR": 0.08}])
    with ScriptedOpenAI(responder=llm) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **CPU4, **{
            "script.path": str(script), "budget.iterations": 8, "acceptance.confirm": True,
            "endpoint.unusable_replies": 100}))  # a plan run dry is re-asked, then rejected, never waited out
    assert engine.state.status == "completed", engine.state.finished
    confirmed = {e.iteration: e for e in rec.of(ev.ConfirmationStarted)}
    assert confirmed
    finished = {e.iteration: e for e in rec.of(ev.IterationFinished)}
    scores: dict[int, list[float | None]] = {}
    for e in rec.of(ev.TrainingFinished):
        scores.setdefault(e.iteration, []).append(e.val_bpb)
    for n in confirmed:  # the verdict: the mean of both runs of n against the best when the second arrived
        verdict = finished[n]
        assert verdict.acceptance["confirm"]["values"] == scores[n] and len(scores[n]) == 2
        mean = sum(scores[n]) / 2
        assert verdict.decision == ("keep" if mean < verdict.best_before else "discard"), verdict.reason
        assert verdict.best_after == (mean if verdict.decision == "keep" else verdict.best_before)
    assert any(finished[n].decision == "keep" for n in confirmed)
    kept = [r.val_bpb for r in engine.state.records if r.decision in ("baseline", "keep")]
    assert kept == sorted(kept, reverse=True)  # a confirmed keep never replaced a better best
    # A confirmation run took a slot no other run was using while other trials trained.
    slots: dict[int, str] = {}  # iteration -> the slot its run holds now
    overlapped = False
    for e in rec.events:
        if isinstance(e, ev.TrainingStarted):
            assert e.slot not in slots.values(), f"#{e.iteration} got slot {e.slot}, which is in use"
            if e.iteration in confirmed and e.seed == confirmed[e.iteration].seed:
                overlapped = overlapped or bool(slots)
            slots[e.iteration] = e.slot
        elif isinstance(e, ev.TrainingFinished):
            slots.pop(e.iteration, None)
    assert overlapped, "no confirmation run trained while another trial did"

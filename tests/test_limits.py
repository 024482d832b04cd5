"""The run's limits: spend caps over money, tokens and GPU-hours, the stuck-loop rule, and the estimate.

Engine runs are real (the fast stand-in script in subprocesses; Level 1 from the scripted
OpenAI-protocol server, whose every reply reports 100 prompt tokens), so each cap is reached
by what the run really spent. A test raises the cap the way a user does: a SetLimits command
(the app's config reload sends it) or a resume with the new value.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from core.analysis.printer import HeadlessPrinter
from core.cli import main
from core.engine import limits
from core.engine.engine import Engine
from core.engine.estimate import estimate
from core.record import commands as cmds
from core.record import config
from core.record import events as ev
from core.record.pricing import price_of
from core.record.session import SessionReader
from core.record.state import IterationRecord, RunState, fold
from tests.conftest import Recorder, fast_config, llm_config
from tests.support import Reply, ScriptedOpenAI
from tests.support.cli import run_bilevel, start_bilevel, write_fast_config
from tests.support.patience import patience

CENT = {"prices": {"test-model": {"input": 100.0, "output": 0.0}}}  # 100 prompt tokens a call: $0.01


def proposing(server: ScriptedOpenAI, lr: Any = None) -> None:
    """Every Level 1 request gets a new valid proposal reporting 100 prompt tokens and no completion; the
    endpoint check at each run's start reports none (it is a call like any other, counted at Level 1)."""
    free = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    server.enqueue_probe(*[Reply(content='{"ok": true}', usage=free) for _ in range(5)])  # each run's endpoint check
    count = itertools.count(1)
    pick = lr or (lambda n: round(0.01 + 0.001 * n, 4))
    server.responder = lambda body: Reply(content=json.dumps({"changes": {"LR": pick(next(count))}, "hypothesis": "h"}),
                                          usage={"prompt_tokens": 100, "completion_tokens": 0, "total_tokens": 100})


def cfg_with(tmp_path: Path, server: ScriptedOpenAI | None, **overrides: Any) -> config.Config:
    base = {"audit.enabled": False, **overrides}
    if server is None:
        return fast_config(tmp_path, **base)
    cfg = llm_config(tmp_path, server, **base)
    return config.with_overrides(cfg, {"prices": CENT["prices"]})


async def run_with(engine: Engine, on_event: Any = None) -> Recorder:
    """Run ``engine`` to its end; ``on_event(engine, event)`` answers events (a pause) as a user would."""
    rec = Recorder()
    engine.subscribe(rec)
    if on_event is not None:
        engine.subscribe(lambda e: on_event(engine, e))
    await asyncio.wait_for(engine.run(), 120)
    return rec


def pauses(rec: Recorder) -> list[ev.Paused]:
    return [e for e in rec.of(ev.Paused) if e.cause != "user"]


def raise_on_pause(limits_after: dict[str, Any]):
    """At a limit's pause: first a plain resume (refused for a cap), then the raised limits."""
    def answer(engine: Engine, e: ev.Event) -> None:
        if isinstance(e, ev.Paused) and e.cause != "user":
            engine.submit(cmds.Resume())
            engine.submit(cmds.SetLimits(limits=limits_after))
    return answer


# --- the caps, reached by a real run ------------------------------------------------------------


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_a_dollar_cap_warns_at_50_and_80_pauses_at_100_and_a_raised_cap_resumes(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 7, "budget.max_usd": 0.05}))
        rec = await run_with(engine, raise_on_pause({"max_usd": 0.1}))
    [paused] = pauses(rec)
    assert paused.cause == "budget" and paused.next_iteration == 6  # five calls at $0.01 reach $0.05
    assert paused.reason.startswith("budget.max_usd reached: $0.0500 of $0.0500 spent by the whole run")
    assert f"bilevel resume {engine.dir} --set budget.max_usd=" in paused.reason
    refused = [c for c in rec.of(ev.CommandReceived) if c.command == "resume"]
    assert refused and not refused[0].ok and "raise or unset the cap" in refused[0].error
    warned = [(w.fraction, w.cap) for w in rec.of(ev.SpendWarning)]
    assert warned == [(0.5, 0.05), (0.8, 0.05), (0.5, 0.1)]  # each once; the raised cap's 50 % is already spent
    first_warning = rec.events.index(rec.of(ev.SpendWarning)[0])
    assert sum(isinstance(e, ev.IterationFinished) for e in rec.events[:first_warning]) == 4  # baseline + #1..#3
    assert rec.of(ev.LimitsChanged)[-1].limits["max_usd"] == 0.1
    assert [u.reason for u in rec.of(ev.Unpaused)][0].startswith("the caps in force allow more")
    assert engine.state.finished.status == "completed" and len(engine.state.proposals) == 7


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_a_token_cap_of_one_level_pauses_with_that_level_in_the_reason(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 4, "budget.inner.max_tokens": 300}))
        rec = await run_with(engine, raise_on_pause({"inner.max_tokens": 1000}))
    [paused] = pauses(rec)
    assert paused.next_iteration == 4
    assert paused.reason.startswith("budget.inner.max_tokens reached: 300 tokens of 300 tokens spent by the Level 1")
    assert {(w.scope, w.resource, w.fraction) for w in rec.of(ev.SpendWarning)} >= {
        ("inner", "tokens", 0.5), ("inner", "tokens", 0.8)}
    assert engine.state.finished.status == "completed"


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_a_token_cap_the_last_iteration_reaches_ends_the_run_instead_of_pausing_it(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 2, "budget.max_tokens": 200,
                                                              "audit.enabled": True}))
        rec = await run_with(engine)
    assert not pauses(rec)  # nothing left would spend tokens: the audit trains, it calls no LLM
    assert [w.fraction for w in rec.of(ev.SpendWarning)] == [0.5, 0.8]
    assert engine.state.finished.status == "completed"


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_a_gpu_hour_cap_pauses_offline_runs_and_unsetting_it_resumes(tmp_path):
    engine = Engine.create(cfg_with(tmp_path, None, **{"budget.iterations": 4, "budget.max_gpu_hours": 1e-9}))
    rec = await run_with(engine, raise_on_pause({"max_gpu_hours": None}))
    [paused] = pauses(rec)
    assert paused.next_iteration == 1  # the baseline alone spends more than the cap
    assert paused.reason.startswith("budget.max_gpu_hours reached:") and "GPU-hours" in paused.reason
    assert "max_gpu_hours" not in rec.of(ev.LimitsChanged)[-1].limits
    assert engine.state.finished.status == "completed" and len(engine.state.proposals) == 4


@pytest.mark.slow  # trials on two slots at once
async def test_on_several_slots_a_cap_holds_new_trials_and_a_raised_cap_runs_every_iteration(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)  # one call proposes for every free slot: 100 tokens a call
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 6, "budget.max_tokens": 200,
                                                              "run.gpus": "cpu:2"}))
        rec = await run_with(engine, raise_on_pause({"max_tokens": 10_000}))
    [paused] = pauses(rec)
    # checked between steps: a step's calls (a re-ask, a proposal made again after a new best) may pass it
    assert paused.reason.startswith("budget.max_tokens reached:") and "of 200 tokens" in paused.reason
    assert len(rec.of(ev.LLMResponse)[:rec.events.index(paused)]) >= 2
    at = rec.events.index(paused)
    lifted = rec.events.index(rec.of(ev.Unpaused)[-1])
    assert not [e for e in rec.events[at:lifted] if isinstance(e, (ev.IterationStarted, ev.TrainingStarted))]
    assert engine.state.finished.status == "completed"
    assert sorted(r.iteration for r in engine.state.proposals) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_a_capped_session_resumes_with_a_raised_cap_and_keeps_it(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 5, "budget.max_usd": 0.02}))

        def stop_at_pause(engine: Engine, e: ev.Event) -> None:
            if isinstance(e, ev.Paused) and e.cause == "budget":
                engine.submit(cmds.Stop(reason="the user went home"))
        await run_with(engine, stop_at_pause)
        assert engine.state.finished.status == "stopped"

        again = Engine.resume(engine.dir)  # the same cap: paused again at once, with its reason
        rec = await run_with(again, stop_at_pause)
        assert [p.reason.split(":")[0] for p in pauses(rec)] == ["budget.max_usd reached"]
        assert not rec.of(ev.SpendWarning)  # given once, in the first run

        raised = Engine.resume(engine.dir, config.limit_settings({"max_usd": 1.0}))
        rec = await run_with(raised)
    assert not pauses(rec) and rec.of(ev.LimitsChanged)[0].source == "resume"
    assert raised.state.finished.status == "completed" and len(raised.state.proposals) == 5
    assert fold(SessionReader(engine.dir).events()).limits["max_usd"] == 1.0  # a later resume keeps the raised cap
    later = Engine.resume(engine.dir)
    try:
        assert later.cfg.budget.max_usd == 1.0
    finally:
        later.close()


# --- the stuck-loop rule ---------------------------------------------------------------------------


@pytest.mark.slow  # a whole engine run, training in subprocesses
async def test_crashes_in_a_row_pause_as_stuck_a_resume_counts_afresh_and_turning_it_off_lifts_it(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server, lr=lambda n: 2.0 + 0.1 * n)  # LR above 1 crashes the stand-in script
        engine = Engine.create(cfg_with(tmp_path, server, **{"budget.iterations": 7, "budget.stuck_after": 3}))
        seen: list[int] = []

        def answer(engine: Engine, e: ev.Event) -> None:
            if isinstance(e, ev.Paused) and e.cause == "stuck":
                seen.append(e.next_iteration)
                engine.submit(cmds.Resume() if len(seen) == 1 else cmds.SetLimits(limits={"stuck_after": 0}))
        rec = await run_with(engine, answer)
    assert seen == [4, 7]
    first = pauses(rec)[0]
    assert first.reason.startswith("budget.stuck_after: 3 iterations in a row without a keep (#1–#3: 3 crashed)")
    assert rec.of(ev.Unpaused)[-1].reason == "the stuck-loop rule is off now"
    assert engine.state.finished.status == "completed" and len(engine.state.proposals) == 7


def _state(*decisions: str, stuck_from: int = 0) -> RunState:
    s = RunState()
    for n, d in enumerate(("baseline", *decisions)):
        s.records.append(IterationRecord(n, d, {}, "", 1.0, 1.0, 1.0, "ok", "", "", 0.0, "x", {}, {}))  # type: ignore[arg-type]
    s.stuck_from = stuck_from
    return s


def test_the_stuck_streak_counts_discards_crashes_and_rejections_since_the_last_keep():
    s = _state("discard", "keep", "discard", "crash", "interrupted", "rejected", "cancelled")
    assert [r.iteration for r in limits.stuck_streak(s)] == [3, 4, 6]  # interrupted and cancelled runs neither count nor break it
    cfg = config.from_dict({"budget": {"stuck_after": 3}})
    assert "(#3–#6: 1 discarded, 1 crashed, 1 rejected)" in limits.stuck_reason(cfg, s)
    assert limits.stuck_reason(config.from_dict({"budget": {"stuck_after": 4}}), s) == ""
    assert limits.stuck_reason(config.from_dict({"budget": {"stuck_after": 0}}), s) == ""
    assert [r.iteration for r in limits.stuck_streak(_state("discard", "crash", stuck_from=2))] == [2]  # counted afresh after a lifted pause


def test_a_lifted_stuck_pause_restarts_the_streak_in_the_fold():
    events = [ev.PauseRequested(cause="stuck", reason="r"), ev.Paused(cause="stuck", reason="r"), ev.Unpaused()]
    s = _state("discard", "discard")
    for e in events:
        s.apply(e)
    assert s.stuck_from == 3 and not s.paused and s.pause_cause == ""
    s.apply(ev.PauseRequested())  # the user's own pause changes nothing of the streak
    s.apply(ev.Unpaused())
    assert s.stuck_from == 3


def test_the_demo_and_studies_leave_the_stuck_rule_off_and_a_plain_run_has_it_at_20(tmp_path):
    assert config.demo_config().budget.stuck_after == 0
    assert config.from_dict({}).budget.stuck_after == 20
    from core.cli import build_parser, run_plan

    toml = tmp_path / "x.toml"
    toml.write_text('[endpoint]\nprovider = "offline"\n')
    study = run_plan(build_parser().parse_args(["run", str(toml), "--repeats", "2"]))
    assert {c.budget.stuck_after for c in study} == {0}
    toml.write_text('[endpoint]\nprovider = "offline"\n[budget]\nstuck_after = 5\n')
    assert {c.budget.stuck_after for c in run_plan(build_parser().parse_args(["run", str(toml), "--repeats", "2"]))} == {5}


# --- config, prices, the estimate --------------------------------------------------------------------


def test_caps_are_declared_per_part_and_a_cap_on_what_a_part_never_spends_is_refused():
    cfg = config.loads('[budget]\nmax_usd = 5\n[budget.research]\nmax_tokens = 1000\n[budget.audit]\nmax_gpu_hours = 1\n')
    assert config.spend_limits(cfg) == {"max_usd": 5.0, "research.max_tokens": 1000, "audit.max_gpu_hours": 1.0,
                                        "stuck_after": 20}
    with pytest.raises(config.ConfigError, match=r"budget.strategy.max_gpu_hours: \[budget.strategy\] trains nothing"):
        config.loads("[budget.strategy]\nmax_gpu_hours = 1\n")
    with pytest.raises(config.ConfigError, match=r"budget.audit.max_usd: \[budget.audit\] calls no LLM"):
        config.loads("[budget.audit]\nmax_usd = 1\n")
    with pytest.raises(config.ConfigError, match="budget.max_cost: not a limit"):
        config.limit_settings({"max_cost": 1.0})


@pytest.mark.parametrize("endpoint, prices, expected", [
    ({"model": "deepseek-flash", "base_url": "https://api.deepseek.com/v1"}, {}, (0.27, 1.10, "built-in")),
    ({"model": "deepseek-v4-pro", "base_url": "https://api.deepseek.com/v1"}, {}, (0.55, 2.19, "built-in")),
    ({"model": "qwen3:8b", "base_url": "http://localhost:11434/v1"}, {}, (0.0, 0.0, "local server")),
    ({"model": "deepseek-flash", "base_url": "https://x/v1", "price_in_per_m": 1.0}, {}, (1.0, 0.0, "endpoint")),
    ({"model": "My-Model-7b", "base_url": "https://x/v1"}, {"my-model-*": {"input": 3.0, "output": 4.0}},
     (3.0, 4.0, "[prices]")),
    ({"model": "gpt-unknown", "base_url": "https://x/v1"}, {}, None),
])
def test_the_price_of_a_model_comes_from_the_first_source_that_knows_it(endpoint, prices, expected):
    price = price_of({"endpoint": {"provider": "openai", **endpoint}, "prices": prices})
    if expected is None:
        assert price is None
    else:
        assert (price.input, price.output) == expected[:2] and expected[2] in price.source


def test_a_model_with_no_price_counts_its_tokens_not_its_dollars_and_says_so():
    from core.record.state import Usage

    s = RunState()
    s.usage["inner"] = Usage(prompt_tokens=150, completion_tokens=50, calls=2)
    cfg = config.from_dict({"endpoint": {"provider": "openai", "base_url": "https://x/v1", "model": "gpt-unknown"},
                            "budget": {"max_usd": 0.0001, "max_tokens": 300}})
    assert price_of(cfg) is None
    spent = limits.spent(s, None)
    assert spent["total"].tokens == 200 and spent["total"].usd is None
    warnings, reached = limits.check_caps(cfg, s, None)
    assert [(w.resource, w.fraction) for w in warnings] == [("tokens", 0.5)] and not reached  # the $ cap cannot act
    notes = estimate(cfg).notes
    assert any("no price known for model 'gpt-unknown': its tokens are counted, its dollars are not" in n for n in notes)
    assert any("a max_usd cap cannot be reached without a price" in n for n in notes)


def test_the_estimate_multiplies_runs_by_the_time_budget_and_calls_by_tokens_and_price():
    cfg = config.from_dict({"endpoint": {"provider": "openai", "base_url": "https://api.deepseek.com/v1",
                                         "model": "deepseek-flash"},
                            "search": {"group": "C", "outer_period": 5, "research_period": 2, "history_tokens": 1000},
                            "budget": {"iterations": 20, "time_s": 300, "grace_s": 60},
                            "audit": {"enabled": False}})
    e = estimate(cfg, slots=2)
    assert e.runs == 21 and e.gpu_hours == pytest.approx(21 * 300 / 3600)
    assert e.gpu_hours_max == pytest.approx(21 * 360 / 3600) and e.wall_hours == pytest.approx(21 * 300 / 2 / 3600)
    assert e.calls == {"inner": 20, "strategy": 4, "research": 8}  # 4 cycles; Level 2 every 2nd: 2 sessions × 4 rounds
    inner = 20 * (1000 + 1500) * 0.27 / 1e6 + 20 * 2048 * 1.10 / 1e6
    strategy = 4 * (1000 + 1500) * 0.27 / 1e6 + 4 * 2048 * 1.10 / 1e6
    research = 8 * (1000 + 6000) * 0.27 / 1e6 + 8 * 8192 * 1.10 / 1e6
    assert e.usd == pytest.approx(inner + strategy + research)
    resumed = estimate(cfg, done=10)
    assert resumed.runs == 10 and resumed.calls["inner"] == 10 and resumed.calls["strategy"] == 2


def test_bilevel_run_estimate_prints_the_estimate_and_runs_nothing(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[endpoint]\nprovider = "openai"\nbase_url = "https://api.deepseek.com/v1"\nmodel = "deepseek-flash"\n'
                    f'[budget]\niterations = 10\ntime_s = 60\nmax_usd = 2\n[run]\ngpus = "cpu:2"\n'
                    f'sessions_dir = "{tmp_path / "sessions"}"\n')
    assert main(["run", str(toml), "--estimate"]) == 0
    out = capsys.readouterr().out.splitlines()
    # 10 × (history 6000 + 1500 fixed + a 2048-token reply) tokens; $ at 0.27 / 1.10 per million
    assert out[0] == ("training: 13 run(s) × 60 s ≈ 0.217 GPU-hours (at most 0.433 with start-up), "
                      "≈ 0.108 h on 2 slot(s)")  # 1 + 10 + the audit's 25 % (2)
    assert out[1].startswith("LLM: 10 call(s) (inner 10), ≤ 95,480 tokens, ≤ $0.0428 (built-in price of 'deepseek-*')")
    assert out[2] == "caps: budget.max_usd = 2; stuck-loop pause after 20 iterations without a keep"
    assert not (tmp_path / "sessions").exists()


async def test_every_run_records_its_estimate_at_the_start_and_the_printer_shows_it(tmp_path):
    engine = Engine.create(cfg_with(tmp_path, None, **{"budget.iterations": 1, "budget.max_gpu_hours": 5.0,
                                                       "budget.stuck_after": 20}))
    rec = await run_with(engine)
    [e] = rec.of(ev.SpendEstimated)
    assert e.runs == 2 and e.limits == {"max_gpu_hours": 5.0, "stuck_after": 20} and not e.calls
    assert rec.events.index(e) < rec.events.index(rec.of(ev.IterationStarted)[0])
    lines = HeadlessPrinter().format(e).splitlines()
    assert lines[0].startswith("estimate: training: 2 run(s) × 1 s")
    assert lines[2] == "estimate: caps: budget.max_gpu_hours = 5; stuck-loop pause after 20 iterations without a keep"
    warning = ev.SpendWarning(scope="inner", resource="usd", fraction=0.8, spent=4.0, cap=5.0)
    assert HeadlessPrinter().format(warning) == "budget: 80% of budget.inner.max_usd spent by Level 1 ($4.00 of $5.00)"


def test_old_logs_without_the_new_fields_still_decode():
    assert ev.decode('{"type": "paused", "seq": 3, "ts": 1.0, "next_iteration": 4}').cause == "user"
    assert ev.decode('{"type": "unpaused", "seq": 4, "ts": 2.0}').reason == ""


@pytest.mark.slow  # the CLI end to end: a headless run, Ctrl-C, a resume
def test_bilevel_resume_set_resumes_a_session_a_cap_paused(tmp_path):
    cfg = write_fast_config(tmp_path, iterations=2)
    proc = start_bilevel("run", str(cfg), "--headless", "--set", "budget.max_gpu_hours=1e-9", cwd=tmp_path)
    sessions = tmp_path / "sessions"
    deadline = time.monotonic() + patience(60)
    found: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(sessions.glob("*/events.jsonl")) if sessions.exists() else []
        if found and any(isinstance(e, ev.Paused) for e in SessionReader(found[0].parent).events(tolerant=True)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # a capped run waits for a raised cap: the user stops it instead
    out, _ = proc.communicate(timeout=patience(30))
    assert proc.returncode == 130
    assert "paused before iteration 1: budget.max_gpu_hours reached" in out
    session = found[0].parent
    refused = run_bilevel("resume", str(session), "--headless", "--set", "search.min_delta=0.1", cwd=tmp_path)
    assert refused.returncode == 2 and "only the limits change on resume" in refused.stderr
    resumed = run_bilevel("resume", str(session), "--headless", "--set", "budget.max_gpu_hours=1", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "limits (resume): budget.max_gpu_hours = 1" in resumed.stdout and "run completed" in resumed.stdout
    assert fold(SessionReader(session).events()).status == "completed"

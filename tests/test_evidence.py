"""The evidence loop: σ at session start (calibrated or declared), the k·σ default rule, and the keep-chain
audit that re-measures every keep on fresh seeds, on the surrogate (real engine runs, real files)."""
from __future__ import annotations

import json
import signal
import statistics
import time
from pathlib import Path

import pytest

from baseline import surrogate
from core.analysis.audit_report import audit_section
from core.analysis.ablation import SessionData
from core.record import events as ev
from core.record.session import SessionReader
from core.record.state import fold
from tests.conftest import fast_config, llm_config, run_engine
from tests.support import ScriptedOpenAI
from tests.support.cli import run_bilevel, start_bilevel
from tests.support.patience import patience

SURROGATE = {"script.path": "", "script.preset": "surrogate", "budget.time_s": 300.0}


def proposal(changes: dict) -> str:
    return json.dumps({"changes": changes, "hypothesis": "test"})


def surrogate_values(**changes) -> dict:
    return {**surrogate.hyperparameters(), "TIME_BUDGET": 300, **changes}


# --- σ and the rule ---------------------------------------------------------------------------


async def test_the_default_rule_keeps_only_beyond_k_sigma_once_the_surrogate_declares_its_sigma(tmp_path):
    engine, rec = await run_engine(fast_config(tmp_path, **SURROGATE, **{
        "budget.iterations": 12, "audit.enabled": False}))
    assert [e.std for e in rec.of(ev.NoiseDeclared)] == [0.0005]
    first, in_force = rec.of(ev.AcceptanceConfigured)
    assert first.rule == "min_delta" and first.noise_std is None  # before the baseline declared it
    assert in_force.rule == "noise_sigma" and in_force.sigma_source == "declared"
    assert in_force.k == 2.0 and in_force.threshold == pytest.approx(0.001)
    verdicts = [e for e in rec.of(ev.IterationFinished) if e.iteration > 0 and e.outcome == "ok"]
    assert any(e.decision == "keep" for e in verdicts)
    for e in verdicts:  # every verdict was made against 2σ: a keep beat the best by more, a discard did not
        assert e.acceptance["threshold"] == pytest.approx(0.001)
        assert (e.decision == "keep") == (e.acceptance["margin"] > 0.001)


async def test_the_paper_rule_keeps_any_improvement_with_sigma_known(tmp_path):
    engine, rec = await run_engine(fast_config(tmp_path, **SURROGATE, **{
        "budget.iterations": 12, "audit.enabled": False, "acceptance.rule": "paper"}))
    in_force = rec.of(ev.AcceptanceConfigured)[-1]
    assert in_force.rule == "paper" and in_force.threshold == 0.0 and in_force.noise_std == 0.0005
    verdicts = [e for e in rec.of(ev.IterationFinished) if e.iteration > 0 and e.outcome == "ok"]
    for e in verdicts:
        assert (e.decision == "keep") == (e.acceptance["margin"] > 0)


async def test_calibrate_runs_the_baseline_on_fresh_seeds_before_the_search_and_records_sigma(tmp_path):
    engine, rec = await run_engine(fast_config(tmp_path, **SURROGATE, **{
        "budget.iterations": 2, "audit.enabled": False, "acceptance.calibrate": 4, "run.gpus": "cpu:2"}))
    started = rec.of(ev.CalibrationStarted)[0]
    assert len(set(started.seeds)) == 4 and engine.state.seed not in started.seeds
    runs = rec.of(ev.CalibrationRunFinished)
    assert sorted(r.run for r in runs) == sorted(started.runs) and all(r.run < 0 for r in runs)
    calibrated = rec.of(ev.NoiseCalibrated)[0]
    values = [r.val_bpb for r in runs]
    assert calibrated.std == pytest.approx(statistics.stdev(values)) and calibrated.std > 0
    assert calibrated.mean == pytest.approx(statistics.fmean(values))
    assert rec.of(ev.AcceptanceConfigured)[-1].sigma_source == "calibrated"
    # before the first proposal: every calibration run trained before iteration 1 started
    order = [e for e in rec.events if isinstance(e, (ev.NoiseCalibrated, ev.IterationStarted))]
    assert [type(e) for e in order][:3] == [ev.IterationStarted, ev.NoiseCalibrated, ev.IterationStarted]
    assert all(e.iteration < 0 for e in rec.of(ev.TrainingStarted) if e.seed in started.seeds)
    assert all(n >= 0 for n in engine.state.iterations)  # the runs outside the search are no iterations


FIXED_SEED_SCRIPT = '''
import random
LR = 0.04
DEPTH = 4
TIME_BUDGET = 1
random.seed(42)
print("---")
print(f"val_bpb: {1.0 + (LR - 0.03) ** 2 + random.random() * 1e-4:.6f}")
'''


async def test_a_script_whose_seed_cannot_vary_is_said_to_be_so_with_the_rule_instead(tmp_path):
    script = tmp_path / "fixed.py"
    script.write_text(FIXED_SEED_SCRIPT)
    lines: list[str] = []
    engine, rec = await run_engine(fast_config(tmp_path, **{"script.path": str(script), "budget.iterations": 1,
                                                            "acceptance.calibrate": 3}), log=lines.append)
    fixed = rec.of(ev.SeedFixed)
    assert len(fixed) == 1 and "random.seed(42)" in fixed[0].note
    assert "calibrate is skipped" in fixed[0].consequence and "keep if val_bpb" in fixed[0].consequence
    assert any("seed cannot vary" in line for line in lines)
    assert not rec.of(ev.CalibrationStarted) and rec.of(ev.NoiseCalibrated)[0].std is None


# --- the keep-chain audit ------------------------------------------------------------------


def lucky_null_change(best: dict) -> float:
    """A SCALAR_LR next to its optimum (no effect on the surface) whose seed-0 noise beats ``best`` by luck."""
    target = surrogate.val_bpb(best, 0)
    for i in range(1, 200):
        value = round(0.5 + 0.0001 * i, 4)
        if surrogate.val_bpb({**best, "SCALAR_LR": value}, 0) < target:
            return value
    raise AssertionError("no lucky value")


async def test_the_audit_flags_a_planted_noise_keep_within_noise_while_halving_the_batch_holds(tmp_path):
    halved = surrogate_values(TOTAL_BATCH_SIZE=2**18)
    lucky = lucky_null_change(halved)
    # the plant: on the noise-free surface the lucky change does nothing, halving the batch gains ~0.012
    assert abs(surrogate.expected_bpb({**halved, "SCALAR_LR": lucky}) - surrogate.expected_bpb(halved)) < 1e-6
    assert surrogate.expected_bpb(halved) < surrogate.expected_bpb(surrogate_values()) - 0.01
    with ScriptedOpenAI() as server:
        server.enqueue(proposal({"TOTAL_BATCH_SIZE": 2**18}), proposal({"SCALAR_LR": lucky}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **SURROGATE, **{
            "budget.iterations": 2, "acceptance.rule": "paper", "audit.share": 20.0, "audit.repeats": 4}))
    assert [e.decision for e in rec.of(ev.IterationFinished)] == ["baseline", "keep", "keep"]
    planned = rec.of(ev.AuditPlanned)[0]
    assert planned.keeps == [1, 2] and planned.estimated_s == (4 * 4 + 4) * 300.0
    verdicts = {v.iteration: v for v in rec.of(ev.AuditVerdict)}
    assert verdicts[1].verdict == "holds" and verdicts[1].ci_low > 0.005
    assert verdicts[2].verdict == "within noise" and verdicts[2].ci_low < 0 < verdicts[2].ci_high
    proposed = rec.of(ev.AuditProposed)[0]
    assert proposed.dropped == [2] and proposed.values["SCALAR_LR"] == 0.5 and len(proposed.runs) == 4
    finished = rec.of(ev.AuditFinished)[0]
    assert finished.status == "completed" and finished.gain_ci_high < 0 and finished.proposed_mean is not None
    # every audit run went through the executor as a trial, on fresh seeds, before the run's end
    audit_seeds = {r.seed for r in planned.runs}
    assert not audit_seeds & {e.seed for e in rec.of(ev.TrainingStarted) if e.iteration >= 0}
    assert len([e for e in rec.of(ev.TrainingStarted) if e.iteration < 0]) == 20
    assert isinstance(rec.events[-1], ev.RunFinished) and rec.events[-1].status == "completed"
    # the fold of the log (replay, report) holds the same verdicts
    state = fold(SessionReader(engine.dir).events())
    assert {n: v.verdict for n, v in state.audits[-1].verdicts.items()} == {1: "holds", 2: "within noise"}
    table = "\n".join(audit_section([SessionData(engine.dir, state)]))
    assert "| #2 | SCALAR_LR=" in table and "within noise" in table


async def test_the_audit_within_a_small_share_is_skipped_with_the_reason(tmp_path):
    engine, rec = await run_engine(fast_config(tmp_path, **SURROGATE, **{
        "budget.iterations": 6, "acceptance.rule": "paper"}))
    assert any(r.decision == "keep" for r in engine.state.records)
    skipped = rec.of(ev.AuditSkipped)
    assert len(skipped) == 1 and "raise audit.share" in skipped[0].reason
    assert not [e for e in rec.of(ev.TrainingStarted) if e.iteration < 0]


def test_bilevel_audit_resumes_a_killed_audit_without_repeating_a_run_and_exits_0(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f"""
name = "aud"
[script]
preset = "surrogate"
[data]
source = "none"
[budget]
iterations = 10
[acceptance]
rule = "paper"
[audit]
enabled = false
repeats = 5
[run]
sessions_dir = "{tmp_path / 'sessions'}"
gpus = "cpu"
""")
    done = run_bilevel("run", str(cfg), "--headless", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    session = next((tmp_path / "sessions").iterdir())
    log = session / "events.jsonl"
    keeps = [r.iteration for r in fold(SessionReader(session).events()).records if r.decision == "keep"]
    assert len(keeps) >= 2
    proc = start_bilevel("audit", str(session), cwd=tmp_path)
    deadline = time.monotonic() + patience(120)
    while log.read_text().count('"type":"audit_run_finished"') < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = fold(SessionReader(session).events(tolerant=True))
    assert killed.audits and killed.audits[-1].finished is None  # killed mid-audit
    done_before = set(killed.audits[-1].results)
    again = run_bilevel("audit", str(session), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    events = list(SessionReader(session).events())
    state = fold(events)
    audit = state.audits[-1]
    assert len(state.audits) == 1 and audit.finished is not None and audit.finished.status == "completed"
    finished_runs = [e.run for e in events if isinstance(e, ev.AuditRunFinished)]
    assert len(finished_runs) == len(set(finished_runs)) == len(audit.runs)  # each run once, none repeated
    resumed_at = max(i for i, e in enumerate(events) if isinstance(e, ev.RunResumed))
    assert not done_before & {e.iteration for e in events[resumed_at:] if isinstance(e, ev.TrainingStarted)}
    assert set(audit.verdicts) == set(keeps) and state.status == "completed"
    assert "audit 1 completed" in again.stdout

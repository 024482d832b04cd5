"""The noise floor at session start, and what the script says about its own noise.

``acceptance.calibrate = n`` runs the unchanged baseline on n fresh seeds after the baseline and
before the first proposal, on every free slot, through the same training path as every trial;
σ and the baseline's mean are a NoiseCalibrated event, and the acceptance rule is recorded
again with that σ. A script that declares its σ (the surrogate prints ``noise_sigma:``) is
recorded as NoiseDeclared. A script whose seed cannot vary is said to be so (SeedFixed and a
log line) with the rule that applies instead: n runs at one seed would measure only jitter.
Each calibration run is an event, so a resume runs only the ones missing.
"""
from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from core.record import events as ev
from core.services.script_folder import fixed_seed_note
from core.services.seeds import with_seed

if TYPE_CHECKING:
    from core.engine.context import EngineContext

CALIBRATION_SEED_OFFSET = 100_000  # far from the search's seed, its confirmations (+1000 + n) and the audits'


def seed_note(ctx: "EngineContext") -> str:
    text = ctx.read_artifact(ctx.state.baseline_script)
    return fixed_seed_note(text, Path(ctx.state.script_source or "train.py").name)


def before_search(ctx: "EngineContext", log: Callable[[str], None]) -> None:
    """What the baseline told us: a declared σ, a seed that cannot vary. Recorded once each."""
    state = ctx.state
    declared = state.baseline_metrics.get("noise_sigma")
    if state.declared_sigma is None and declared is not None and declared > 0:
        ctx.emit(ev.NoiseDeclared(std=float(declared), iteration=0))
        ctx.refresh_acceptance()
    note = seed_note(ctx)
    if note and state.seed_fixed is None:
        if ctx.cfg.acceptance.calibrate >= 2:
            consequence = ("acceptance.calibrate is skipped: its runs would differ only by jitter and understate σ; "
                           f"the rule in force: {ctx.acceptance_policy().describe()}")
        else:
            consequence = f"repeats measure only jitter; the rule in force: {ctx.acceptance_policy().describe()}"
        ctx.emit(ev.SeedFixed(note=note, consequence=consequence))
        log(f"WARNING: the seed cannot vary. {note} Consequence: {consequence}")


def calibration_due(ctx: "EngineContext") -> bool:
    state = ctx.state
    return ctx.cfg.acceptance.calibrate >= 2 and bool(state.records) and state.calibrated is None


async def calibrate(ctx: "EngineContext", log: Callable[[str], None]) -> bool:
    """Run the missing calibration runs and record σ; False when a stop cut it short (resume finishes it)."""
    state = ctx.state
    if state.seed_fixed is not None:
        ctx.emit(ev.NoiseCalibrated(reason=f"not calibrated: {state.seed_fixed.note}"))
        return True
    n = ctx.cfg.acceptance.calibrate
    if state.calibration is None:
        base = state.extra_runs
        seeds = [ctx.cfg.search.seed + CALIBRATION_SEED_OFFSET + i for i in range(n)]
        ctx.emit(ev.CalibrationStarted(runs=[-(base + 1 + i) for i in range(n)], seeds=seeds))
        log(f"calibrating the noise floor: the baseline on {n} fresh seeds before the search "
            f"(about {n} × {ctx.cfg.budget.time_s:g} s of training)")
    plan = state.calibration
    assert plan is not None
    text = ctx.read_artifact(state.baseline_script)

    async def one(run: int, seed: int) -> None:
        if run in state.calibration_results or ctx.stopping:
            return
        result = (await ctx.train(run, with_seed(text, seed), diff="", seed=seed)).result
        if result.outcome.value == "cancelled" and ctx.stopping:
            return  # not recorded: a resume runs it again
        ok = result.outcome.value == "ok" and result.val_bpb is not None
        ctx.emit(ev.CalibrationRunFinished(run=run, seed=seed, outcome=result.outcome.value,
                                           val_bpb=result.val_bpb if ok else None, reason=result.reason))

    await asyncio.gather(*(one(r, s) for r, s in zip(plan.runs, plan.seeds)))
    if ctx.stopping:
        return False
    pairs = [(s, state.calibration_results.get(r)) for r, s in zip(plan.runs, plan.seeds)]
    ok = [(s, v) for s, v in pairs if v is not None]
    values = [v for _, v in ok]
    if len(values) < 2:
        ctx.emit(ev.NoiseCalibrated(seeds=[s for s, _ in ok], values=values, failed=len(pairs) - len(ok),
                                    reason=f"only {len(values)} of {len(pairs)} runs scored; σ needs two"))
        return True
    median = statistics.median(values)
    ctx.emit(ev.NoiseCalibrated(seeds=[s for s, _ in ok], values=values, mean=statistics.fmean(values),
                                std=statistics.stdev(values), mad=statistics.median(abs(v - median) for v in values),
                                failed=len(pairs) - len(ok)))
    ctx.refresh_acceptance()
    return True

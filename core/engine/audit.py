"""The keep-chain audit: does each kept change still help when measured on fresh seeds?

At the end of a run (``[audit]``, within ``share`` of the run's own training runs) and on
demand (``bilevel audit SESSION``, every keep), the audit re-runs the baseline and the best
configuration on ``repeats`` fresh seeds, and for every kept change the best configuration
without it (leave-one-out) on the same seeds, all at once on every free slot, through the
same training path as every trial. Each keep gets its effect, the mean over seeds of
(best without it − best), with a t interval over the paired seeds, and a verdict: "holds"
(the interval lies above 0: removing it hurts), "harmful" (below 0), "within noise"
(straddles 0), "superseded" (a later keep overwrote all it changed: nothing to leave out) or
"unmeasured" (the share did not cover it; the largest keeps are measured first). The audit
then proposes the best without the keeps that did not hold and measures it on the same seeds.

Every run and verdict is an event in the session, planned before any run starts (with its
cost), so a killed audit resumes where it stopped and a replay shows it whole.
"""
from __future__ import annotations

import asyncio
import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from core.record import events as ev
from core.record.change import CodeEdit, EditBlock
from core.services.code_edit import apply_edits
from core.services.script import ProposalError, TrainScript
from core.services.seeds import with_seed

if TYPE_CHECKING:
    from core.engine.context import EngineContext
    from core.record.state import AuditState, IterationRecord, RunState

AUDIT_SEED_OFFSET = 200_000  # + 1000 × the audit's number: fresh seeds, never the search's or calibration's
# Two-sided 95 % quantiles of Student's t by degrees of freedom (the engine layer has no scipy).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    below = max(d for d in _T95 if d < df)
    return _T95[below] if df < 120 else 1.96


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def paired_interval(diffs: Sequence[float]) -> Interval | None:
    """Mean of paired differences with its 95 % t interval; None under two pairs."""
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    half = t95(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Interval(mean, mean - half, mean + half, len(diffs))


def verdict_of(interval: Interval | None) -> str:
    """Removing a helpful keep makes val_bpb worse: the effect (without − with) is then positive."""
    if interval is None:
        return "unmeasured"
    if interval.low > 0:
        return "holds"
    if interval.high < 0:
        return "harmful"
    return "within noise"


# --- the chain -----------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # a tuple in a script, a list in an event


@dataclass(frozen=True)
class Keep:
    record: "IterationRecord"
    before: dict[str, Any]  # the best's values when it was kept

    @property
    def iteration(self) -> int:
        return self.record.iteration

    @property
    def gain(self) -> float:
        r = self.record
        return (r.best_before - r.val_bpb) if r.best_before is not None and r.val_bpb is not None else 0.0


def keep_chain(state: "RunState") -> list[Keep]:
    """The kept changes in the order they were kept, each with the best it changed."""
    base = next((r for r in state.records if r.decision == "baseline"), None)
    current = dict(base.values) if base is not None else {}
    chain = []
    for r in state.records:
        if r.decision == "keep":
            chain.append(Keep(r, dict(current)))
            current = dict(r.values) or {**current, **r.changes.params}
    return chain


def edits_in_force(chain: Sequence[Keep], leave_out: Sequence[int] = ()) -> list[EditBlock]:
    """The code keeps' edit blocks in the order they were kept, less those of ``leave_out`` (iterations)."""
    return [e for k in chain if k.iteration not in leave_out and isinstance(k.record.changes, CodeEdit)
            for e in k.record.changes.edits]


def build_script(baseline: str, edits: Sequence[EditBlock], values: dict[str, Any]) -> str:
    """The baseline with ``edits`` written in block by block (as they were kept), then ``values``;
    ProposalError when an edit no longer applies (a later keep's block was written over the one left out)."""
    text = baseline
    for e in edits:
        text = apply_edits(text, [e])
    return TrainScript.parse(text).apply(values).text


def without(best: dict[str, Any], keeps: Sequence[Keep]) -> dict[str, Any]:
    """The best with the changes of ``keeps`` undone where they are still in force (latest first)."""
    values = dict(best)
    for k in sorted(keeps, key=lambda k: -k.iteration):
        for name in k.record.changes.params:
            if name in values and name in k.before and _same(values[name], k.record.values.get(name)):
                values[name] = k.before[name]
    return values


# --- planning ----------------------------------------------------------------------------


def _runs(state: "RunState", first: int, label: str, values: dict[str, Any], seeds: Sequence[int],
          edits: Sequence[EditBlock] = ()) -> list[ev.AuditRun]:
    return [ev.AuditRun(run=-(first + i), config=label, seed=s, values=values, edits=list(edits))
            for i, s in enumerate(seeds)]


def plan(state: "RunState", *, audit: int, repeats: int, seed: int, trigger: str, allowance: int | None,
         budget_s: float) -> ev.AuditPlanned | ev.AuditSkipped:
    chain = keep_chain(state)
    ids = [k.iteration for k in chain]
    if not chain:
        return ev.AuditSkipped(audit=audit, chain=ids, reason="no change was kept: nothing to audit")
    if allowance is not None and allowance < 2 * repeats:
        return ev.AuditSkipped(audit=audit, chain=ids, reason=(
            f"the share covers {allowance} run(s) and the audit needs at least {2 * repeats} (baseline and best, "
            f"{repeats} seeds each): raise audit.share, or run `bilevel audit {state.session}`"))
    best = dict(state.best_values)
    # a code keep's edits stay in force whatever its constants became: it is never superseded
    code = {k.iteration for k in chain if isinstance(k.record.changes, CodeEdit)}
    superseded = [k.iteration for k in chain if k.iteration not in code and _same(without(best, [k]), best)]
    candidates = sorted((k for k in chain if k.iteration not in superseded), key=lambda k: -k.gain)
    room = None if allowance is None else (allowance - 2 * repeats) // repeats
    measured = candidates if room is None else candidates[:room]
    seeds = [seed + AUDIT_SEED_OFFSET + 1000 * audit + j for j in range(repeats)]
    runs: list[ev.AuditRun] = []
    first = state.extra_runs + 1
    baseline = next(r for r in state.records if r.decision == "baseline")
    for label, values, edits in [("baseline", dict(baseline.values), []), ("best", best, edits_in_force(chain)),
                                 *((f"without #{k.iteration}", without(best, [k]), edits_in_force(chain, [k.iteration]))
                                   for k in measured)]:
        runs += _runs(state, first + len(runs), label, values, seeds, edits)
    return ev.AuditPlanned(audit=audit, trigger=trigger, repeats=repeats, chain=ids,  # type: ignore[arg-type]
                           keeps=[k.iteration for k in measured],
                           unaudited=[k.iteration for k in candidates[len(measured):]], superseded=superseded,
                           runs=runs, estimated_s=(len(runs) + repeats) * budget_s, allowance=allowance)


# --- running -------------------------------------------------------------------------------


class Auditor:
    """Plans, runs (or resumes) and judges one audit, every step an event."""

    def __init__(self, ctx: "EngineContext", log: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.log = log

    async def at_end(self) -> bool:
        """The end-of-run audit (when enabled and not yet done for this chain); False when a stop cut it short."""
        cfg, state = self.ctx.cfg, self.ctx.state
        if not cfg.audit.enabled:
            return True
        chain = [k.iteration for k in keep_chain(state)]
        latest = self._latest()
        if latest is not None and latest.plan.chain == chain:
            return latest.finished is not None or await self._run(latest)
        if any(s.chain == chain for s in state.audit_skips):
            return True
        allowance = int(cfg.audit.share * state.device.runs)
        return await self._start("end", allowance)

    async def on_demand(self) -> bool:
        """``bilevel audit``: finish an audit cut short, else audit every keep."""
        latest = self._latest()
        if latest is not None and latest.finished is None:
            return await self._run(latest)
        return await self._start("command", None)

    def _latest(self) -> "AuditState | None":
        audits = self.ctx.state.audits
        return audits[-1] if audits else None

    async def _start(self, trigger: str, allowance: int | None) -> bool:
        ctx, state, cfg = self.ctx, self.ctx.state, self.ctx.cfg
        number = len(state.audits) + len(state.audit_skips) + 1
        planned = plan(state, audit=number, repeats=cfg.audit.repeats, seed=cfg.search.seed, trigger=trigger,
                       allowance=allowance, budget_s=cfg.budget.time_s)
        ctx.emit(planned)
        if isinstance(planned, ev.AuditSkipped):
            self.log(f"audit skipped: {planned.reason}")
            return True
        self.log(f"audit {number}: {len(planned.runs)} runs (+ up to {planned.repeats} for the proposed "
                 f"configuration) × {cfg.budget.time_s:g} s ≈ {planned.estimated_s:g} s of training; keeps "
                 f"{', '.join(f'#{n}' for n in planned.keeps) or 'none'} measured"
                 + (f", {', '.join(f'#{n}' for n in planned.unaudited)} not covered by the share"
                    if planned.unaudited else ""))
        audit = self._latest()
        assert audit is not None
        return await self._run(audit)

    async def _train_all(self, audit: "AuditState", runs: Sequence[ev.AuditRun]) -> bool:
        ctx = self.ctx
        text = ctx.read_artifact(ctx.state.baseline_script)

        async def one(run: ev.AuditRun) -> None:
            if run.run in audit.results or ctx.stopping:
                return
            try:
                script = with_seed(build_script(text, run.edits, run.values), run.seed)
            except (ProposalError, ValueError) as exc:  # leaving a code keep out broke a later keep's edit
                ctx.emit(ev.AuditRunFinished(audit=audit.audit, run=run.run, config=run.config, seed=run.seed,
                                             outcome="crash", reason=f"the configuration cannot be built: {exc}"))
                return
            result = (await ctx.train(run.run, script, diff="", seed=run.seed)).result
            if result.outcome == "cancelled" and ctx.stopping:
                return  # not recorded: the resume runs it again
            ok = result.outcome == "ok" and result.val_bpb is not None
            ctx.emit(ev.AuditRunFinished(audit=audit.audit, run=run.run, config=run.config, seed=run.seed,
                                         outcome=result.outcome, val_bpb=result.val_bpb if ok else None,
                                         reason=result.reason))

        await asyncio.gather(*(one(r) for r in runs))
        return not ctx.stopping

    async def _run(self, audit: "AuditState") -> bool:
        ctx = self.ctx
        if not await self._train_all(audit, audit.plan.runs):
            return False
        self._verdicts(audit)
        if audit.proposed is None:
            self._propose(audit)
        assert audit.proposed is not None
        if not await self._train_all(audit, audit.proposed.runs):
            return False
        finished = self._finished(audit)
        ctx.emit(finished)
        self.log(f"audit {audit.audit}: " + "; ".join(
            f"#{v.iteration} {v.verdict}" for v in audit.verdicts.values()) + (
            f"; proposed: drop {', '.join(f'#{n}' for n in finished.dropped)} (mean {finished.proposed_mean:.6f})"
            if finished.dropped and finished.proposed_mean is not None else ""))
        return True

    def _values(self, audit: "AuditState", label: str) -> dict[int, float]:
        """seed -> val_bpb of one configuration's scored runs."""
        return {r.seed: v for r in audit.runs if r.config == label
                for v in [audit.results.get(r.run)] if v is not None}

    def _verdicts(self, audit: "AuditState") -> None:
        state = self.ctx.state
        best = self._values(audit, "best")
        chain = {k.iteration: k for k in keep_chain(state)}
        for n in audit.plan.chain:
            if n in audit.verdicts or n not in chain:
                continue
            k = chain[n]
            kind, interval = "unmeasured", None
            if n in audit.plan.superseded:
                kind = "superseded"
            elif n in audit.plan.keeps:
                loo = self._values(audit, f"without #{n}")
                interval = paired_interval([loo[s] - best[s] for s in loo if s in best])
                kind = verdict_of(interval)
            self.ctx.emit(ev.AuditVerdict(
                audit=audit.audit, iteration=n, changes=k.record.changes, recorded_gain=k.gain,
                effect=interval.mean if interval else None, ci_low=interval.low if interval else None,
                ci_high=interval.high if interval else None, pairs=interval.n if interval else 0,
                verdict=kind))  # type: ignore[arg-type]

    def _propose(self, audit: "AuditState") -> None:
        state = self.ctx.state
        dropped = [n for n, v in audit.verdicts.items() if v.verdict in ("within noise", "harmful")]
        best = next((r.values for r in audit.plan.runs if r.config == "best"), dict(state.best_values))
        whole = keep_chain(state)
        chain = [k for k in whole if k.iteration in dropped]
        values = without(best, chain)
        edits = edits_in_force(whole, dropped)
        runs: list[ev.AuditRun] = []
        if dropped and (not _same(values, best) or edits != edits_in_force(whole)):
            seeds = [r.seed for r in audit.plan.runs if r.config == "best"]
            runs = _runs(state, state.extra_runs + 1, "proposed", values, seeds, edits)
        self.ctx.emit(ev.AuditProposed(audit=audit.audit, dropped=sorted(dropped), values=values, runs=runs))

    def _finished(self, audit: "AuditState") -> ev.AuditFinished:
        base, best = self._values(audit, "baseline"), self._values(audit, "best")
        proposed = self._values(audit, "proposed") if audit.proposed and audit.proposed.runs else best
        gain = paired_interval([best[s] - base[s] for s in best if s in base])
        mean = lambda d: statistics.fmean(d.values()) if d else None  # noqa: E731
        assert audit.proposed is not None
        return ev.AuditFinished(
            audit=audit.audit, status="completed", baseline_mean=mean(base), best_mean=mean(best),
            gain=gain.mean if gain else None, gain_ci_low=gain.low if gain else None,
            gain_ci_high=gain.high if gain else None, proposed_mean=mean(proposed),
            dropped=list(audit.proposed.dropped))

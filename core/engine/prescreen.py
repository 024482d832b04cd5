"""The mechanism pre-screen: a validated mechanism tried on the surrogate bench before it is activated.

k short searches (level2.prescreen_repeats × prescreen_iterations) run with the mechanism and
k without it on the same seeds (paired), with the session's own levels — Level 1 and, where
the session has it, Level 1.5's freeze rule — but always the offline proposer: it is free,
where an LLM proposer would spend k × iterations × 2 calls (a budgeted LLM pre-screen is
future work, and the event says "offline"). Level 2 never runs inside the bench.

Each search is the real InnerLoop and StrategyLevel over :class:`BenchContext`, an in-memory
run context whose "training" evaluates the surrogate in this process, as the engine does
(core/services/surrogate_run.py over baseline/surrogate.py, our own standard-library code:
microseconds a run, no process, no training slot). The mechanism's hooks go through a real MechanismHost: a generated module runs
only in its own sandboxed worker, one per search, as in the live run; a built-in in-process.
The bench's events stay in memory; the session records one PrescreenStarted and one
MechanismPrescreened with the paired effect on the final best (core/engine/paired.py) and the
side effects (vetoes, modifications, rejections, crashes, deactivations).

"Where the workload has a surrogate": the surrogate has the reference workload's constants, so
the bench stands in for a script when it models at least half of the session's searchable
parameters (baseline/train.py and its presets: all of them; the surrogate and copies of either);
the event lists those it does not model. Any other script's mechanism is "skipped" (recorded,
never gated): a surface that knows none of what is searched says nothing about the mechanism.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from baseline import surrogate

from core.engine.acceptance import AcceptancePolicy
from core.engine.mechanism_host import GeneratedModule, MechanismHost
from core.engine.paired import paired_effect
from core.levels.context import FatalRunError, Ready, TrainRun
from core.levels.inner import InnerLoop
from core.levels.strategy import StrategyLevel
from core.record import events as ev
from core.record import layout
from core.record.config import SURROGATE_BOUNDS, SURROGATE_SCRIPT, Config, from_dict
from core.record.state import RunState
from core.services.schema import infer_schema
from core.services.script import ParamSpec, TrainScript
from core.services.seeds import seed_params
from core.services.surrogate_run import surrogate_result

# The surrogate's measurement constants: locked in the bench as the engine locks them in a run
# (core/engine/engine.py's PROTOCOL_PARAMS; the engine imports this module's caller, so no import).
BENCH_LOCKED = ("TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "DEVICE", "COMPILE", "NOISE_SIGMA", "SURFACE")
SEED_STRIDE = 7919  # the repeats' seeds: the session's seed, then steps of a prime (distinct, reproducible)


@dataclass(frozen=True)
class SearchOutcome:
    """One short bench search: its final best and what happened in it."""

    seed: int
    best: float | None
    effects: Counter  # vetoed | modified | overrode | prompt | rejected | crashes | deactivated


class BenchContext:
    """A :class:`~core.levels.context.RunContext` over the surrogate, in memory (see the module docstring)."""

    def __init__(self, cfg: Config, script_text: str, schema: dict[str, ParamSpec], hook_timeout_s: float) -> None:
        self._cfg = cfg
        self._schema = schema
        self._artifacts: dict[str, str] = {}
        self._state = RunState()
        self.effects: Counter = Counter()
        self._policy = AcceptancePolicy(cfg.search.min_delta, 0.0, False, None, "")
        self._host = MechanismHost(self.emit, self.schema_dicts, hook_timeout_s)
        self.emit(ev.SessionStarted(session="prescreen", name="prescreen", provider="offline", model="offline",
                                    group=cfg.search.group, levels=list(cfg.search.active_levels),
                                    config=cfg.to_dict(), script=self.artifact("baseline/train.py", script_text),
                                    schema=self.schema_dicts(), seed=cfg.search.seed, surrogate=True))

    # --- RunContext ---------------------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self._cfg

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def schema(self) -> dict[str, ParamSpec]:
        return self._schema

    @property
    def session_dir(self) -> Path:
        return Path("/nonexistent-prescreen")  # nothing of the bench is written to disk

    @property
    def stopping(self) -> bool:
        return False

    @property
    def mechanisms(self) -> MechanismHost:
        return self._host

    def emit(self, event: ev.Event) -> ev.Event:
        self._state.apply(event)
        if isinstance(event, ev.MechanismEffect):
            self.effects[event.effect] += 1
        elif isinstance(event, ev.ProposalRejected):
            self.effects["rejected"] += 1
        elif isinstance(event, ev.IterationFinished) and event.decision == "crash":
            self.effects["crashes"] += 1
        elif isinstance(event, ev.MechanismDeactivated):
            self.effects["deactivated"] += 1
        return event

    def monotonic(self) -> float:
        return time.monotonic()

    def artifact(self, relpath: str, data: str | bytes) -> str:
        rel = layout.artifact_rel(relpath)
        self._artifacts[rel] = data if isinstance(data, str) else data.decode("utf-8")
        return rel

    def read_artifact(self, relpath: str) -> str:
        return self._artifacts[relpath]

    def interrupted(self, iteration: int) -> None:
        self.emit(ev.IterationInterrupted(iteration=iteration, reason="interrupted"))

    def current_schema(self, values: dict[str, Any]) -> dict[str, ParamSpec]:
        return {n: replace(s, value=values.get(n, s.value)) for n, s in self._schema.items()}

    def schema_dicts(self) -> dict[str, Any]:
        # core.engine.context.spec_dict's shape; that module calls this one, so it is not imported
        return {n: {"kind": s.kind, "value": s.value, "locked": s.locked, "minimum": s.minimum,
                    "maximum": s.maximum, "choices": list(s.choices) if s.choices else None,
                    "log_scale": s.log_scale, "pow2": s.pow2} for n, s in self._schema.items()}

    def acceptance_policy(self) -> AcceptancePolicy:
        return self._policy

    async def train(self, iteration: int, text: str, diff: str, *, seed: int | None = None) -> TrainRun:
        script = self.artifact(f"iterations/{iteration:04d}/train.py", text)
        return TrainRun(surrogate_result(text, self._cfg.search.seed if seed is None else seed), script)

    async def call_llm(self, *args: Any, **kw: Any) -> Any:
        raise FatalRunError("the pre-screen bench proposes offline: it makes no LLM calls")

    def generated_sources(self) -> dict[str, str]:
        return {}

    def mechanisms_in_play(self) -> set[str]:
        return set(self._host.names)

    def queue_activation(self, ready: Ready) -> None:
        raise FatalRunError("Level 2 does not run inside the pre-screen bench")

    async def await_approval(self, research_id: str, name: str) -> bool:
        return False


def unmodelled(session_schema: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    """(the session's searchable parameters the surrogate lacks, whether it models at least half of them)."""
    searchable = [n for n, s in session_schema.items() if not s.get("locked")]
    missing = [n for n in searchable if n not in surrogate.C.NAMES]
    return missing, bool(searchable) and 2 * len(missing) <= len(searchable)


def bench_script(cfg: Config, state: RunState, read_artifact: Any) -> str:
    """The surrogate the bench searches: the session's own when it runs one (a copy may set σ), else ours."""
    if cfg.surrogate and state.baseline_script:
        return read_artifact(state.baseline_script)
    return SURROGATE_SCRIPT.read_text(encoding="utf-8")


def bench_config(cfg: Config, seed: int, iterations: int) -> Config:
    """The session's config as a bench search: offline, this seed, no Level 2, the surrogate's bounds."""
    data = cfg.to_dict()
    levels = [lv for lv in cfg.search.active_levels if lv != "research"]
    data["endpoint"] = {"provider": "offline"}
    data["search"] = {**data["search"], "group": "B" if "strategy" in levels else "A", "levels": levels,
                      "seed": seed, "mechanisms": [], "bounds": {n: dict(b) for n, b in SURROGATE_BOUNDS.items()}}
    data["budget"] = {**data["budget"], "iterations": iterations}
    data["acceptance"] = {**data["acceptance"], "noise_sigma": 0.0, "confirm": False}
    return from_dict(data, source="<prescreen>")


def bench_schema(cfg: Config, text: str) -> dict[str, ParamSpec]:
    script = TrainScript.parse(text)
    locked = {p for p in (*cfg.search.locked, *BENCH_LOCKED, *seed_params(script)) if p in script.params}
    return infer_schema(script, locked=locked, bounds=SURROGATE_BOUNDS)


async def one_search(cfg: Config, text: str, schema: dict[str, ParamSpec], mechanism: Any | None,
                     hook_timeout_s: float) -> SearchOutcome:
    """One short search on the surrogate (the baseline, then cfg.budget.iterations iterations)."""
    ctx = BenchContext(cfg, text, schema, hook_timeout_s)
    inner = InnerLoop(ctx)
    strategy = StrategyLevel(ctx) if "strategy" in cfg.search.active_levels else None
    try:
        if mechanism is not None:
            await ctx.mechanisms.attach(mechanism, ctx.state, origin="generated" if isinstance(
                mechanism, GeneratedModule) else "builtin", description="pre-screen")
        await inner.run_baseline()
        for n in range(1, cfg.budget.iterations + 1):
            await inner.run_iteration(n)
            await asyncio.sleep(0)  # the surrogate answers synchronously: let the live run's events through
            if strategy is not None and n % cfg.search.outer_period == 0:
                await strategy.run_cycle(n // cfg.search.outer_period, n)
    finally:
        await ctx.mechanisms.close()
    return SearchOutcome(cfg.search.seed, ctx.state.best_val_bpb, ctx.effects)


async def prescreen(cfg: Config, state: RunState, read_artifact: Any, ready: Ready, source_key: str,
                    make_mechanism: Any, emit: Any) -> ev.MechanismPrescreened:
    """Run the pre-screen of ``ready`` and record it; returns its MechanismPrescreened event.

    ``make_mechanism()``: a fresh mechanism for one search (a GeneratedModule runs in a new worker).
    """
    l2 = cfg.level2
    k, iterations = l2.prescreen_repeats, l2.prescreen_iterations
    common = dict(research_id=ready.research_id, name=ready.name, source_key=source_key, repeats=k,
                  iterations=iterations, mode=l2.prescreen)
    missing, covered = unmodelled(state.schema)
    if not covered:
        event = ev.MechanismPrescreened(
            **common, source=ready.source_rel, verdict="skipped", unmodelled=missing,
            reason=f"the surrogate does not model most of this script's searchable parameters "
                   f"({', '.join(missing)}): not screened")
        emit(event)
        return event
    emit(ev.PrescreenStarted(**common))
    started = time.monotonic()
    text = bench_script(cfg, state, read_artifact)
    seeds = [cfg.search.seed + SEED_STRIDE * (r + 1) for r in range(k)]
    configs = [bench_config(cfg, s, iterations) for s in seeds]
    schema = bench_schema(configs[0], text)
    runs = [one_search(c, text, schema, make_mechanism(), l2.hook_timeout_s) for c in configs]
    runs += [one_search(c, text, schema, None, l2.hook_timeout_s) for c in configs]
    outcomes = await asyncio.gather(*runs)
    with_runs, without_runs = outcomes[:k], outcomes[k:]
    side = sum((o.effects for o in with_runs), Counter())
    base_side = sum((o.effects for o in without_runs), Counter())
    pairs = [(w.best, wo.best) for w, wo in zip(with_runs, without_runs)
             if w.best is not None and wo.best is not None]
    fields: dict[str, Any] = dict(
        **common, source=ready.source_rel, workload=f"surrogate {_surface(text)}", seeds=seeds,
        with_best=[o.best for o in with_runs], without_best=[o.best for o in without_runs],
        side_effects=dict(side), baseline_side_effects={k_: base_side[k_] for k_ in ("rejected", "crashes")},
        unmodelled=missing, wall_s=time.monotonic() - started)
    if side["deactivated"] >= k:
        event = ev.MechanismPrescreened(**fields, verdict="failed", reason=(
            f"it was deactivated in all {k} bench searches: no effect could be measured"))
    elif len(pairs) < 2:
        event = ev.MechanismPrescreened(**fields, verdict="failed", reason=(
            f"only {len(pairs)} of {k} bench searches finished with a score: no effect could be measured"))
    else:
        eff = paired_effect([a for a, _ in pairs], [b for _, b in pairs], seed=cfg.search.seed)
        harmful = eff.ci_low > 0
        event = ev.MechanismPrescreened(
            **fields, effect=eff.mean, ci_low=eff.ci_low, ci_high=eff.ci_high, p_value=eff.p_value,
            verdict="harmful" if harmful else "passed", reason=figure(eff.mean, eff.ci_low, eff.ci_high,
                                                                      eff.p_value, len(pairs), iterations))
    emit(event)
    return event


def figure(effect: float, low: float, high: float, p: float, n: int, iterations: int) -> str:
    """The pre-screen's number in one line: the paired effect on the final best, its CI and p."""
    side = "worse" if low > 0 else "better" if high < 0 else "no clear effect"
    return (f"final best {effect:+.4f} val_bpb with it (95% CI {low:+.4f} to {high:+.4f}, sign-flip p = {p:.3g}; "
            f"{n} paired surrogate searches of {iterations} iterations, offline proposer): {side}")


def _surface(text: str) -> str:
    try:
        return str(TrainScript.parse(text).values().get("SURFACE", "h100"))
    except ValueError:
        return "h100"


async def prescreened(cfg: Config, state: RunState, read_artifact: Any, emit: Any,
                      ready: Ready) -> ev.MechanismPrescreened:
    """The pre-screen of a Ready mechanism (generated: a new worker per search; built-in: a new instance).

    A failure of the bench itself (even its baseline's) is recorded as a "failed" pre-screen, never
    raised into Level 2 or the run.
    """
    import inspect

    import mechanisms
    from mechanisms.contract import safe_name
    from mechanisms.sandbox.fingerprint import source_key

    from core.engine.mechanism_host import generated_module

    if ready.origin == "generated" and ready.path is not None:
        source = Path(ready.path).read_text(encoding="utf-8")
        module_name = f"bilevel_prescreen_{safe_name(ready.research_id).replace('-', '_')}"
        make = lambda: generated_module(Path(ready.path), module_name, cfg)  # noqa: E731
    else:
        source = inspect.getsource(inspect.getmodule(mechanisms.BUILTINS[ready.name]))
        make = lambda: mechanisms.builtin(ready.name)  # noqa: E731
    key = source_key(source) or ""
    try:
        return await prescreen(cfg, state, read_artifact, ready, key, make, emit)
    except Exception as exc:  # noqa: BLE001 - a bench failure is the pre-screen's verdict, not the run's
        event = ev.MechanismPrescreened(
            research_id=ready.research_id, name=ready.name, source_key=key, source=ready.source_rel,
            mode=cfg.level2.prescreen, verdict="failed", repeats=cfg.level2.prescreen_repeats,
            iterations=cfg.level2.prescreen_iterations,
            reason=f"the bench failed: {type(exc).__name__}: {exc}"[:2000])
        emit(event)
        return event

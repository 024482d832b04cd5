"""The scripted engine's parallel trials: several scripted training runs at once (a test double).

With ``Plan.slots > 1`` the :class:`~tests.support.scripted_engine.ScriptedEngine` hands its run
to :class:`SlotRunner`: it announces the slots (``SlotsConfigured``), runs the baseline alone on
the first slot, then keeps every slot busy with a trial. The trials advance in lock step, one
progress line each per tick, and last different numbers of ticks, so they finish out of order
(#3 before #1) and ``IterationFinished`` comes in finish order, judged against the best at the
time its result arrived. GPU slots are sampled (``SlotsSampled``) every few ticks. An abort
names one trial or all of them; a stop lets the trials in flight finish (or interrupts them).

One coroutine, no timers: with a :class:`~tests.support.scripted_engine.StepClock` the session
is the same bytes on every run.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.record import events as ev
from core.record import layout
from tests.support.scripted_decision import scripted_decision

if TYPE_CHECKING:
    from tests.support.scripted_engine import ScriptedEngine

SAMPLE_EVERY = 3  # ticks between SlotsSampled of GPU slots
GPU_MEMORY_MB = 81_559.0
SKIP_REASON = "another user's process holds 71,000 MiB"


@dataclass
class Trial:
    """One training run in flight on a slot."""

    iteration: int
    slot: str
    node: str
    steps: int
    changes: dict[str, Any]
    hypothesis: str
    values: dict[str, Any]
    script: str
    saw_results: list[int] = field(default_factory=list)
    saw_running: list[int] = field(default_factory=list)
    step: int = 0


def trial_steps(n: int, per_run: int) -> int:
    """How many ticks trial ``n`` trains: 0.6× to 1.4× the plan's, so neighbours finish out of order."""
    if n == 0:
        return per_run
    return max(2, per_run * (3 + (n * 2) % 5) // 5)


def phase_of(step: int, steps: int) -> str:
    """compiling for the first sixth of a run, evaluating for its last tenth, training between."""
    if step <= max(1, steps // 6):
        return "compiling"
    if step > steps - max(1, steps // 10):
        return "evaluating"
    return "training"


class SlotRunner:
    """Runs a scripted session on ``plan.slots`` slots."""

    def __init__(self, engine: "ScriptedEngine") -> None:
        self.engine = engine
        self.in_flight: dict[str, Trial] = {}  # slot name -> its trial
        self.aborts: set[int] = set()  # iterations to cancel at the next tick
        self.finished: list[int] = []  # iterations in the order their verdicts came
        self.best: float | None = None
        self.ticks = 0

    # --- commands ------------------------------------------------------------------------------

    def running(self) -> list[int]:
        return sorted(t.iteration for t in self.in_flight.values())

    def check_abort(self, iteration: int | None) -> str | None:
        if not self.in_flight:
            return "no training run is in progress"
        if iteration is not None and iteration not in self.running():
            running = ", ".join(f"#{n}" for n in self.running())
            return f"the run of iteration #{iteration} is no longer in progress ({running} are)"
        return None

    def abort(self, iteration: int | None) -> None:
        """Cancel ``iteration`` at the next tick; None: every trial in flight now (not one started after)."""
        self.aborts.update(self.running() if iteration is None else [iteration])

    # --- the slots --------------------------------------------------------------------------------

    def slot_names(self) -> list[tuple[str, str]]:
        """(slot name, node) of every slot that trains."""
        p = self.engine.plan
        kind = "gpu" if p.gpus else "cpu"
        prefix = "ray:" if p.executor == "ray" else ""
        names = []
        for i in range(p.slots):
            node = f"node{1 + i % 2}" if p.executor == "ray" else ""
            names.append((f"{prefix}{kind}{i}", node))
        return names

    def configured(self) -> ev.SlotsConfigured:
        p = self.engine.plan
        slots = [ev.SlotInfo(name=name, devices=str(i) if p.gpus else "",
                             uuid=f"GPU-{i:08x}-scripted" if p.gpus else "",
                             memory_total_mb=GPU_MEMORY_MB if p.gpus else None)
                 for i, (name, _) in enumerate(self.slot_names())]
        for j in range(p.skipped_gpus if p.gpus else 0):
            i = p.slots + j
            slots.append(ev.SlotInfo(name=f"gpu{i}", devices=str(i), uuid=f"GPU-{i:08x}-scripted",
                                     memory_total_mb=GPU_MEMORY_MB, skipped=SKIP_REASON))
        return ev.SlotsConfigured(executor=p.executor, slots=slots,
                                  address="127.0.0.1:6379" if p.executor == "ray" else "")

    def sampled(self) -> ev.SlotsSampled:
        samples = []
        for i, (name, _) in enumerate(self.slot_names()):
            trial = self.in_flight.get(name)
            if trial is None:
                samples.append(ev.SlotSample(name=name, utilisation=0.0, memory_used_mb=512.0,
                                             memory_total_mb=GPU_MEMORY_MB))
            else:
                busy = phase_of(trial.step, trial.steps) == "training"
                samples.append(ev.SlotSample(name=name, utilisation=float(92 + (i * 3 + self.ticks) % 7) if busy
                                             else 31.0, memory_used_mb=float(38_000 + 1_500 * i + 100 * trial.step),
                                             memory_total_mb=GPU_MEMORY_MB))
        return ev.SlotsSampled(samples=samples)

    # --- the run --------------------------------------------------------------------------------

    async def run(self, levels: list[str]) -> None:
        e = self.engine
        e.emit(self.configured())
        await e._tick()
        e._current = asyncio.create_task(self._loop(levels))
        try:
            await e._current
        except asyncio.CancelledError:
            if not e.stopping:
                raise
            for trial in sorted(self.in_flight.values(), key=lambda t: t.iteration):
                e.emit(ev.IterationInterrupted(iteration=trial.iteration, reason=e.stop_reason))
            self.in_flight.clear()
        finally:
            e._current = None
        if e.stopping:
            self._finish("stopped", e.stop_reason)
        elif e.plan.finish:
            self._finish("completed", f"{e.plan.iterations} iterations done")

    def _finish(self, status: str, reason: str) -> None:
        e = self.engine
        for rid, (name, _) in list(e._pending.items()):
            e.emit(ev.ResearchFinished(research_id=rid, outcome="failed", name=name,
                                       reason="the run ended before a decision"))
        e._pending.clear()
        e.emit(ev.RunFinished(status=status, reason=reason, iterations=len([n for n in self.finished if n]),
                              baseline_val_bpb=e.state.baseline_val_bpb, best_val_bpb=self.best))

    async def _loop(self, levels: list[str]) -> None:
        e, p = self.engine, self.engine.plan
        slots = self.slot_names()
        next_n = 0
        while True:
            for name, node in slots:
                if e.stopping or e.state.pause_requested or next_n > p.iterations:
                    break
                if name in self.in_flight or (next_n > 0 and 0 not in self.finished):
                    continue  # the baseline runs alone: every trial is judged against it
                for command in p.scripted_commands.get(next_n, []):
                    e.submit(command, source="script")
                    await e._tick()
                if e.stopping or e.state.pause_requested:
                    break
                self.in_flight[name] = await self._start(next_n, name, node)
                next_n += 1
            if not self.in_flight:
                if e.stopping or next_n > p.iterations:
                    return
                if e.state.pause_requested:
                    e.emit(ev.Paused(next_iteration=next_n))
                    await e._unpaused.wait()
                    if not e.stopping:
                        e.emit(ev.Unpaused())
                continue
            await self._tick_trials(levels)

    async def _start(self, n: int, slot: str, node: str) -> Trial:
        e, p = self.engine, self.engine.plan
        e.emit(ev.IterationStarted(iteration=n))
        await e._tick()
        changes: dict[str, Any] = {}
        hypothesis = ""
        saw_results, saw_running = list(self.finished), self.running()
        if n:
            attempt = 1
            if n == p.reask_at:
                await e._llm("inner", "propose", "{}", n, stream=False)
                twin = saw_running[-1] if saw_running else None
                first = next((t.changes for t in self.in_flight.values() if t.iteration == twin), None) \
                    or {"DEVICE_BATCH_SIZE": 96}
                e.emit(ev.ProposalRejected(
                    iteration=n, attempt=1, kind="repeat" if twin is not None else "invalid", changes=first,
                    reason=f"the same change is running as #{twin}" if twin is not None
                    else "DEVICE_BATCH_SIZE=96 is not a power of two"))
                attempt = 2
            await e._llm("inner", "propose", "{}", n, stream=False)
            changes, hypothesis = e._proposal(n)
            if n % 3 == 2 and "WARMDOWN_RATIO" not in changes:  # some proposals change two parameters
                changes["WARMDOWN_RATIO"] = round(0.3 + 0.05 * (n % 7), 4)
            e.emit(ev.ProposalMade(iteration=n, attempt=attempt, changes=changes, hypothesis=hypothesis,
                                   source="offline", saw_results=sorted(saw_results), saw_running=saw_running))
            for name in e.state.mechanisms:
                e.emit(ev.MechanismEffect(iteration=n, name=name, hook="shape_prompt", effect="prompt",
                                          detail="listed 3 discarded values"))
        values = {**e.values, **changes}
        diff = "" if not n else _diff(e.values, values)
        diff_rel = e.writer.artifact(layout.diff_name(n), diff) if diff else ""
        script_rel = e.writer.artifact(layout.train_script_name(n), _script_text(values))
        e.emit(ev.TrainingStarted(iteration=n, script=script_rel, diff=diff_rel, slot=slot, node=node,
                                  budget_s=p.budget_s))
        await e._tick()
        return Trial(n, slot, node, trial_steps(n, p.progress_per_run), changes, hypothesis, values, script_rel,
                     sorted(saw_results), saw_running)

    async def _tick_trials(self, levels: list[str]) -> None:
        """One progress step of every trial in flight; a verdict is followed at once by the cycles it completes."""
        e, p = self.engine, self.engine.plan
        step_s = p.budget_s / p.progress_per_run
        self.ticks += 1
        aborts, self.aborts = self.aborts, set()
        for name, _ in self.slot_names():
            trial = self.in_flight.get(name)
            if trial is None:
                continue
            n = trial.iteration
            if n in aborts:
                await self._verdict(trial, "cancelled", levels)
                continue
            trial.step += 1
            i, steps = trial.step, trial.steps
            if n == p.crash_at and i > steps // 3:
                e.emit(ev.TrainingOutput(iteration=n, stream="stderr",
                                         line="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"))
                await self._verdict(trial, "oom", levels)
                continue
            e.emit(ev.TrainingProgress(iteration=n, step=i * 25, percent=100.0 * i / steps,
                                       loss=4.0 - 1.5 * i / steps + 0.05 * e.rng.random(),
                                       tok_per_s=52_000 + 500 * e.rng.random(), mfu=38.5,
                                       remaining_s=step_s * (steps - i), phase=phase_of(i, steps)))  # type: ignore[arg-type]
            if i <= p.output_per_run:
                e.emit(ev.TrainingOutput(iteration=n, line=f"step {i * 25:05d} | loss {4.0 - 0.07 * i:.4f}"))
            if i >= steps:
                await self._verdict(trial, "ok", levels)
        if p.gpus and self.ticks % SAMPLE_EVERY == 0:
            e.emit(self.sampled())
        await e._tick(step_s)

    async def _verdict(self, trial: Trial, outcome: str, levels: list[str]) -> None:
        """TrainingFinished and IterationFinished of one trial, judged against the best at this moment."""
        e, p = self.engine, self.engine.plan
        n = trial.iteration
        del self.in_flight[trial.slot]
        best = self.best
        val = None
        if outcome == "ok":
            val = round((1.0 if best is None else best) - e.rng.gauss(0.002, 0.006), 6) if n else 1.0
        reason = {"ok": "", "oom": "CUDA out of memory", "cancelled": "aborted by the user"}[outcome]
        tail = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" if outcome == "oom" else ""
        duration = p.budget_s * trial.steps / p.progress_per_run
        e.emit(ev.TrainingFinished(iteration=n, outcome=outcome, val_bpb=val, duration_s=duration,  # type: ignore[arg-type]
                                   reason=reason, error_tail=tail, node=trial.node,
                                   failure="script" if outcome == "oom" else "",
                                   metrics={"val_bpb": val} if val is not None else {}))
        decision = scripted_decision(n, outcome, val, best)
        acceptance: dict[str, Any] = {}
        if n and val is not None and best is not None:
            acceptance = {"rule": "min_delta", "best": best, "val_bpb": val, "threshold": 0.0, "target": best,
                          "margin": best - val, "min_delta": 0.0, "noise_std": None, "margin_sigma": None,
                          "running": self.running()}
        if decision in ("baseline", "keep"):
            e.values = trial.values
            self.best = val
        mech_calls = {name: {"shape_prompt": 1, "observe": 1} for name in e.state.mechanisms}
        e.emit(ev.IterationFinished(
            iteration=n, decision=decision, changes=trial.changes, hypothesis=trial.hypothesis,  # type: ignore[arg-type]
            val_bpb=val, best_before=best, best_after=self.best, outcome=outcome,  # type: ignore[arg-type]
            script=trial.script, values=dict(trial.values), duration_s=duration, source="offline",
            mechanisms=mech_calls, error_tail=tail, acceptance=acceptance,
            rule="min_delta: keep if val_bpb < best - 0 (the best when this result arrived)" if n else "",
            reason=reason or (f"improved by {best - val:.6f}" if decision == "keep" and best is not None and val is not None
                              else "")))
        self.finished.append(n)
        await self._after_verdict(n, levels)

    async def _after_verdict(self, n: int, levels: list[str]) -> None:
        """Level 1.5 and Level 2 count finished iterations, whatever order they finished in."""
        e, p = self.engine, self.engine.plan
        count = len([m for m in self.finished if m])
        if not n or count % p.outer_period:
            return
        cycle = count // p.outer_period
        if "strategy" in levels:
            await e._strategy(cycle, n)
        if "research" in levels and ("strategy" not in levels or cycle % p.research_period == 0):
            await e._research(cycle, n)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    from tests.support.scripted_engine import _diff as diff

    return diff(old, new)


def _script_text(values: dict[str, Any]) -> str:
    from tests.support.scripted_engine import _script_text as text

    return text(values)

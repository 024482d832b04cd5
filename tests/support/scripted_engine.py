"""A scripted stand-in for the engine: deterministic sessions for the app's tests and benchmark (a test double).

:class:`ScriptedEngine` has the engine's surface the app uses (``subscribe``, ``submit``,
``request_stop``, ``run``, ``state``, ``dir``), writes a real session folder through
:class:`core.record.session.SessionWriter` and answers every command the way the engine does
(acknowledged by ``CommandReceived``, then its effect). What it emits is scripted, not
computed: a seeded Level 1 trace with a crash, a re-asked proposal and mechanism effects,
Level 1.5 cycles with freezes and guidance, and Level 2 dialogues streamed token by token.
With ``Plan.slots > 1`` it runs that many trials at once (:mod:`tests.support.scripted_slots`).
With a :class:`StepClock` it is fully deterministic, timestamps included.

It is not the product's engine and never presented as one: it exists so the UI can be
tested and measured without training anything. Over ~500 lines because its scripted
Level 2 dialogues and session plan are data that read best in one place.
"""
from __future__ import annotations

import asyncio
import difflib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.record import commands as cmds
from core.record import events as ev
from core.record import layout
from core.record.session import SessionWriter
from core.record.state import RunState
from tests.support.scripted_decision import scripted_decision

# name -> (kind, baseline value, locked, choices/None)
SCHEMA: dict[str, tuple[str, Any, bool]] = {
    "DEPTH": ("int", 8, True),
    "ASPECT_RATIO": ("int", 64, True),
    "MATRIX_LR": ("float", 0.04, False),
    "EMBEDDING_LR": ("float", 0.6, False),
    "UNEMBEDDING_LR": ("float", 0.004, False),
    "WEIGHT_DECAY": ("float", 0.2, False),
    "WARMUP_RATIO": ("float", 0.0, False),
    "WARMDOWN_RATIO": ("float", 0.5, False),
    "DEVICE_BATCH_SIZE": ("int", 128, False),
    "WINDOW_PATTERN": ("str", "SSSL", False),
    "TIME_BUDGET": ("int", 300, True),
}

_HYPOTHESES = [
    "A higher matrix learning rate should speed up early progress within the fixed budget.",
    "Less weight decay may help a short run that is far from overfitting.",
    "A longer warmdown usually lowers the final loss at a fixed step count.",
    "A short warmup should stabilise the first Muon steps.",
    "A smaller device batch gives more optimizer steps in the same wall-clock time.",
    "Full attention in more layers should help the model use the whole context.",
    "A lower embedding learning rate may reduce noise in rare-token updates.",
]

_ROUND_TEXT = {
    "explore": (
        "## Where the search is stuck\n\nThe trace shows **{stuck}** proposed repeatedly with no net gain, "
        "while learning-rate changes produced every improvement so far.\n\n"
        "Candidate mechanisms:\n\n1. *Tabu memory* — refuse values within 5% of a discarded one.\n"
        "2. *Bandit over parameters* — pick the parameter to change by UCB on past gains.\n"
        "3. *Orthogonal sweeps* — vary one parameter at a time around the best point.\n"
    ),
    "critique": (
        '{{"selected": "{name}", "why": "It addresses repeated proposals directly and is cheap to run; '
        'the bandit needs more iterations than remain."}}\n'
    ),
    "specify": (
        "## Specification: `{name}`\n\n- `shape_prompt`: list the values already discarded per parameter.\n"
        "- `review_proposal`: veto a value within 5% of a discarded one, with the reason.\n"
        "- `observe`: record each discarded value.\n\nNo other hooks; no state beyond a dict of lists.\n"
    ),
    "generate": (
        "```python\nfrom mechanisms.base import Mechanism, Verdict\n\n\nclass {name}(Mechanism):\n"
        '    """Veto values close to ones already discarded."""\n\n    def __init__(self):\n'
        "        self.discarded = {{}}\n\n    def review_proposal(self, state, proposal):\n"
        "        for key, value in proposal.changes.items():\n"
        "            for old in self.discarded.get(key, []):\n"
        "                if isinstance(value, float) and abs(value - old) <= 0.05 * abs(old):\n"
        '                    return Verdict.veto(f"{{key}}={{value}} is within 5% of discarded {{old}}")\n'
        "        return Verdict.accept()\n\n    def observe(self, state, result):\n"
        '        if result.decision == "discard":\n'
        "            for key, value in result.changes.items():\n"
        "                self.discarded.setdefault(key, []).append(value)\n```\n"
    ),
}
ROUNDS = ("explore", "critique", "specify", "generate")


class StepClock:
    """A clock that moves only when told: deterministic timestamps for recorded sessions."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _WallClock:
    def __init__(self) -> None:
        import time

        self._time = time.time

    def __call__(self) -> float:
        return self._time()

    def advance(self, seconds: float) -> None:
        pass


@dataclass
class Plan:
    """What the scripted run does."""

    iterations: int = 12
    group: str = "C"
    outer_period: int = 5  # K: a strategy cycle every K iterations
    research_period: int = 1  # M: research every M strategy cycles
    progress_per_run: int = 20
    output_per_run: int = 3
    deltas_per_round: int = 0  # 0: the round text split into ~4-character tokens
    reasoning: bool = False  # a thinking model: research rounds stream reasoning deltas before the text
    dialogue_scale: int = 1  # each research round's text repeated this often (a long, real-sized dialogue)
    budget_s: float = 300.0
    approval: str = "auto"  # auto | manual
    seed: int = 0
    step_s: float = 0.0  # real seconds slept between events (0: as fast as possible)
    crash_at: int | None = 4
    reask_at: int | None = 2
    finish: bool = True  # emit RunFinished at the end (False: a session still being written)
    scripted_commands: dict[int, list[cmds.Command]] = field(default_factory=dict)
    slots: int = 1  # > 1: that many trials at once (see ``tests/support/scripted_slots.py``)
    gpus: bool = False  # slots are GPUs ("gpu0"…) sampled by SlotsSampled; else CPU slots ("cpu0"…)
    skipped_gpus: int = 0  # GPUs found busy with another user's memory: configured, never trained on
    executor: str = "local"  # local | ray (ray: slots on two named nodes)


class ScriptedEngine:
    """Emits a scripted session and answers commands like the engine."""

    def __init__(self, session_dir: Path, plan: Plan | None = None, *,
                 clock: Callable[[], float] | None = None, watch_channel: bool = False) -> None:
        self.dir = Path(session_dir)
        self.plan = plan or Plan()
        self.clock = clock if clock is not None else _WallClock()
        self.writer = SessionWriter(self.dir, clock=self.clock)
        self.state = RunState()
        self.subscribers: list[Callable[[ev.Event], None]] = []
        self.rng = random.Random(self.plan.seed)
        self.submitted: list[tuple[cmds.Command | cmds.Unreadable, str]] = []
        self._commands: asyncio.Queue[tuple[cmds.Command | cmds.Unreadable, str]] = asyncio.Queue()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._pending: dict[str, tuple[str, str]] = {}  # research id -> (mechanism, source) awaiting approval
        self._training = False
        self._abort = asyncio.Event()
        self._current: asyncio.Task[Any] | None = None
        self.stopping = False
        self.stop_reason = ""
        self.values = {k: v[1] for k, v in SCHEMA.items()}
        self._call = 0
        self._mechanism_count = 0
        self.watch_channel = watch_channel  # take commands from <session>/commands/, like a detached engine
        from tests.support.scripted_slots import SlotRunner

        self._slots = SlotRunner(self)

    # --- the engine surface the app uses --------------------------------------------------

    def subscribe(self, fn: Callable[[ev.Event], None]) -> None:
        self.subscribers.append(fn)

    def submit(self, command: cmds.Command | cmds.Unreadable, /, source: str = "api") -> None:
        self.submitted.append((command, source))
        self._commands.put_nowait((command, source))

    def request_stop(self, reason: str, *, hard: bool = False) -> None:
        self.stopping, self.stop_reason = True, reason
        self._unpaused.set()
        if hard and self._current is not None and not self._current.done():
            self._current.cancel()

    def emit(self, event: ev.Event) -> ev.Event:
        stamped = self.writer.append(event)
        self.state.apply(stamped)
        for fn in list(self.subscribers):
            fn(stamped)
        return stamped

    async def run(self) -> RunState:
        tasks = [asyncio.create_task(self._command_loop())]
        if self.watch_channel:
            from core.record.channel import watch_commands

            tasks.append(asyncio.create_task(watch_commands(self.dir, self.submit)))
        try:
            await self._run()
        finally:
            for task in tasks:
                task.cancel()
            self.writer.close()
        return self.state

    # --- commands ---------------------------------------------------------------------------

    async def _command_loop(self) -> None:
        while True:
            command, source = await self._commands.get()
            if isinstance(command, cmds.Unreadable):
                self.emit(ev.CommandReceived(command=command.name, args=command.args, source=source, ok=False,
                                             error=command.error))
                continue
            error = self._check(command)
            self.emit(ev.CommandReceived(command=command.command, args=command.args(), source=source,
                                         ok=not error, error=error or ""))
            if not error:
                self._apply(command)

    def _check(self, c: cmds.Command) -> str | None:
        if isinstance(c, (cmds.Freeze, cmds.Unfreeze)):
            if c.name not in SCHEMA:
                return f"unknown parameter {c.name!r}"
            if SCHEMA[c.name][2]:
                return f"{c.name} is locked by the configuration"
        if isinstance(c, cmds.AbortTraining) and self.plan.slots > 1:
            return self._slots.check_abort(c.iteration)
        if isinstance(c, cmds.AbortTraining):
            if not self._training:
                return "no training run is in progress"
            if c.iteration is not None and c.iteration != self.state.running:
                return f"the run of iteration #{c.iteration} is no longer in progress (#{self.state.running} is)"
        if isinstance(c, (cmds.ApproveMechanism, cmds.RejectMechanism)) and str(c.research_id) not in self._pending:
            return f"no mechanism awaits approval for research {c.research_id!r}"
        if isinstance(c, cmds.SetBudget):
            return "the scripted engine runs a fixed plan: its budget cannot change"
        return None

    def _apply(self, c: cmds.Command) -> None:
        s = self.state
        if isinstance(c, cmds.Pause) and not s.paused:
            self._unpaused.clear()
            self.emit(ev.PauseRequested())
        elif isinstance(c, cmds.Resume):
            self._unpaused.set()
            if s.pause_requested and not s.paused:
                self.emit(ev.Unpaused())
        elif isinstance(c, cmds.Stop):
            self.request_stop(c.reason, hard=c.now)
        elif isinstance(c, cmds.AbortTraining) and self.plan.slots > 1:
            self._slots.abort(c.iteration)
        elif isinstance(c, cmds.AbortTraining):
            self._abort.set()
        elif isinstance(c, cmds.SetGuidance):
            self.emit(ev.GuidanceChanged(guidance=c.guidance, source="user", pinned=c.pinned))
        elif isinstance(c, cmds.Freeze) and c.name not in s.frozen:
            self.emit(ev.ParamFrozen(name=c.name, reason=c.reason))
        elif isinstance(c, cmds.Unfreeze) and c.name in s.frozen:
            self.emit(ev.ParamUnfrozen(name=c.name, reason=c.reason))
        elif isinstance(c, (cmds.ApproveMechanism, cmds.RejectMechanism)):
            self._decide(str(c.research_id), isinstance(c, cmds.ApproveMechanism))

    # --- the scripted run ------------------------------------------------------------------------

    async def _tick(self, seconds: float = 0.05) -> None:
        advance = getattr(self.clock, "advance", None)
        if advance is not None:
            advance(seconds)
        if self.plan.step_s:
            await asyncio.sleep(self.plan.step_s)
        else:
            await asyncio.sleep(0)

    async def _run(self) -> None:
        p = self.plan
        levels = {"A": ["inner"], "B": ["inner", "strategy"], "C": ["inner", "strategy", "research"],
                  "D": ["inner", "research"]}[p.group]
        config = {"name": "synthetic", "budget": {"iterations": p.iterations, "time_s": p.budget_s},
                  "search": {"group": p.group, "outer_period": p.outer_period, "research_period": p.research_period},
                  "level2": {"approval": p.approval}}
        baseline = self.writer.artifact(layout.baseline_script_name(), _script_text(self.values))
        self.emit(ev.SessionStarted(
            session=self.dir.name, name="synthetic", provider="offline", model="scripted", group=p.group,
            levels=levels, config=config, script=baseline, script_source="train.py",
            schema={k: {"kind": v[0], "value": v[1], "locked": v[2]} for k, v in SCHEMA.items()},
            guidance="Start with the learning rates; leave the architecture alone.", seed=p.seed,
            version="scripted"))
        await self._tick()
        if p.slots > 1:
            await self._slots.run(levels)
            return
        cycles = 0
        for n in range(0, p.iterations + 1):
            for command in p.scripted_commands.get(n, []):
                self.submit(command, source="script")
                await self._tick()
            if self.state.pause_requested and not self.stopping:
                self.emit(ev.Paused(next_iteration=n))
                await self._unpaused.wait()
                if not self.stopping:
                    self.emit(ev.Unpaused())
            if self.stopping:
                break
            self._current = asyncio.create_task(self._iteration(n))
            try:
                await self._current
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                self.emit(ev.IterationInterrupted(iteration=n, reason=self.stop_reason))
                break
            finally:
                self._current = None
            if n and "strategy" in levels and n % p.outer_period == 0:
                cycles += 1
                await self._strategy(cycles, n)
            research_due = ("strategy" in levels and n and n % p.outer_period == 0 and cycles % p.research_period == 0)
            if "research" in levels and (research_due or ("strategy" not in levels and n and n % p.outer_period == 0)):
                try:
                    await self._research(max(cycles, n // p.outer_period), n)
                except asyncio.CancelledError:
                    if not self.stopping:
                        raise
                    break
        if self.stopping:
            self._finish("stopped", self.stop_reason)
        elif p.finish:
            self._finish("completed", f"{p.iterations} iterations done")

    def _finish(self, status: str, reason: str) -> None:
        for rid, (name, _) in list(self._pending.items()):
            self.emit(ev.ResearchFinished(research_id=rid, outcome="failed", name=name,
                                          reason="the run ended before a decision"))
        self._pending.clear()
        s = self.state
        self.emit(ev.RunFinished(status=status, reason=reason, iterations=len(s.proposals),
                                 baseline_val_bpb=s.baseline_val_bpb, best_val_bpb=s.best_val_bpb))

    def _call_id(self) -> str:
        self._call += 1
        return f"c{self._call:05d}"

    async def _llm(self, level: str, purpose: str, text: str, iteration: int | None, *, stream: bool) -> str:
        call_id = self._call_id()
        self.emit(ev.LLMRequest(call_id=call_id, level=level, purpose=purpose, iteration=iteration, model="scripted"))
        await self._tick(0.2)
        pieces = _tokens(text, self.plan.deltas_per_round) if stream else []
        if stream and self.plan.reasoning:
            for piece in _tokens(f"Thinking about the {purpose} round: what the trace says first. ", 0):
                self.emit(ev.LLMDelta(call_id=call_id, level=level, text=piece, kind="reasoning"))
                await self._tick(0.02)
        for piece in pieces:
            self.emit(ev.LLMDelta(call_id=call_id, level=level, text=piece))
            await self._tick(0.02)
        self.emit(ev.LLMResponse(call_id=call_id, level=level, prompt_tokens=1200 + 37 * len(self.state.records),
                                 completion_tokens=max(len(pieces), len(text) // 4), duration_s=0.2 + 0.02 * len(pieces)))
        return call_id

    async def _iteration(self, n: int) -> None:
        p, rng = self.plan, self.rng
        self.emit(ev.IterationStarted(iteration=n))
        await self._tick()
        best = self.state.best_val_bpb
        changes: dict[str, Any] = {}
        hypothesis = ""
        if n:
            attempt = 1
            if n == p.reask_at:
                await self._llm("inner", "propose", "{}", n, stream=False)
                self.emit(ev.ProposalRejected(iteration=n, attempt=1, kind="invalid",
                                              reason="DEVICE_BATCH_SIZE=96 is not a power of two",
                                              changes={"DEVICE_BATCH_SIZE": 96}))
                attempt = 2
            await self._llm("inner", "propose", "{}", n, stream=False)
            changes, hypothesis = self._proposal(n)
            self.emit(ev.ProposalMade(iteration=n, attempt=attempt, changes=changes, hypothesis=hypothesis,
                                      source="offline"))
            for name in self.state.mechanisms:
                self.emit(ev.MechanismEffect(iteration=n, name=name, hook="shape_prompt", effect="prompt",
                                             detail="listed 3 discarded values"))
        await self._tick()
        new_values = {**self.values, **changes}
        diff = "" if not n else _diff(self.values, new_values)
        diff_rel = self.writer.artifact(layout.diff_name(n), diff) if diff else ""
        script_rel = self.writer.artifact(layout.train_script_name(n), _script_text(new_values))
        self.emit(ev.TrainingStarted(iteration=n, script=script_rel, diff=diff_rel, slot="gpu0", budget_s=p.budget_s))
        self._training = True
        self._abort.clear()
        outcome, steps = "ok", p.progress_per_run
        try:
            for i in range(1, steps + 1):
                if self._abort.is_set():
                    outcome = "cancelled"
                    break
                if n == p.crash_at and i > steps // 3:
                    outcome = "oom"
                    break
                self.emit(ev.TrainingProgress(iteration=n, step=i * 25, percent=100.0 * i / steps,
                                              loss=4.0 - 1.5 * i / steps + 0.05 * rng.random(),
                                              tok_per_s=52_000 + 500 * rng.random(), mfu=38.5,
                                              remaining_s=p.budget_s * (1 - i / steps)))
                if i <= p.output_per_run:
                    self.emit(ev.TrainingOutput(iteration=n, line=f"step {i * 25:05d} | loss {4.0 - 0.07 * i:.4f}"))
                await self._tick(p.budget_s / steps)
        finally:
            self._training = False
        duration = p.budget_s * 1.1
        val = None
        if outcome == "ok":
            base = 1.0 if best is None else best
            gain = rng.gauss(0.002, 0.006)
            val = round(base - gain, 6) if n else 1.0
        self.emit(ev.TrainingFinished(iteration=n, outcome=outcome, val_bpb=val, duration_s=duration,
                                      reason="" if outcome == "ok" else
                                      ("CUDA out of memory" if outcome == "oom" else "aborted by the user"),
                                      metrics={"val_bpb": val} if val is not None else {}))
        await self._tick()
        decision = scripted_decision(n, outcome, val, best)
        if decision in ("baseline", "keep"):
            self.values = new_values
        mech_calls = {name: {"shape_prompt": 1, "observe": 1} for name in self.state.mechanisms}
        self.emit(ev.IterationFinished(
            iteration=n, decision=decision, changes=changes, hypothesis=hypothesis, val_bpb=val, best_before=best,
            best_after=val if decision in ("baseline", "keep") else best, outcome=outcome, script=script_rel,
            values=dict(new_values), duration_s=duration, source="offline", mechanisms=mech_calls,
            rule=f"keep if val_bpb < best - {0.0}" if n else "",
            reason={"crash": "CUDA out of memory", "cancelled": "aborted by the user"}.get(decision, "")))
        await self._tick()

    def _proposal(self, n: int) -> tuple[dict[str, Any], str]:
        rng = self.rng
        free = [k for k, v in SCHEMA.items() if not v[2] and k not in self.state.frozen]
        name = free[(n * 3) % len(free)] if free else "MATRIX_LR"
        kind, _, _ = SCHEMA[name]
        value = self.values[name]
        if n == self.plan.crash_at:
            return {"DEVICE_BATCH_SIZE": 512}, "A bigger device batch should raise throughput."
        if kind == "float":
            new = round((value or 0.01) * rng.choice([0.5, 0.8, 1.25, 1.5, 2.0]), 6)
        elif kind == "int":
            new = max(1, int(value * rng.choice([0.5, 2])))
        else:
            new = rng.choice(["SSSL", "SSLL", "LLLL", "SLSL"])
        return {name: new}, _HYPOTHESES[n % len(_HYPOTHESES)]

    async def _strategy(self, cycle: int, after: int) -> None:
        self.emit(ev.StrategyStarted(cycle=cycle, after_iteration=after))
        await self._llm("strategy", "update", "{}", after, stream=False)
        candidates = [r for r in ("WEIGHT_DECAY", "WARMUP_RATIO", "EMBEDDING_LR") if r not in self.state.frozen]
        freeze = candidates[:1]
        unfreeze = [n for n in sorted(self.state.frozen) if cycle % 2 == 0][:1]
        for name in unfreeze:
            self.emit(ev.ParamUnfrozen(name=name, source="strategy", reason=f"cycle {cycle}: worth revisiting"))
        for name in freeze:
            self.emit(ev.ParamFrozen(name=name, source="strategy",
                                     reason=f"cycle {cycle}: proposed 3× with no net improvement"))
        guidance = (f"Cycle {cycle}: learning rates drive the gains; try MATRIX_LR in [0.03, 0.08] "
                    f"and a longer warmdown.")
        if self.state.guidance_pinned:  # as core/levels/strategy.py: the user's pinned guidance stands
            self.emit(ev.GuidanceNotApplied(cycle=cycle, guidance=guidance, reason="the user's guidance is pinned"))
        else:
            self.emit(ev.GuidanceChanged(guidance=guidance, source="strategy", cycle=cycle))
        self.emit(ev.StrategyDecision(
            cycle=cycle, source="offline", diagnosis="Gains come from learning rates; decay changes never helped.",
            reasoning="Freeze what the rule flags; keep the rest active.", guidance=guidance,
            candidates=candidates, freeze=freeze, unfreeze=unfreeze,
            refused={"DEPTH": "locked by the configuration: never unfrozen"} if cycle == 1 else {},
            stats={"MATRIX_LR": {"proposed": 3, "kept": 2}}))
        await self._tick()

    async def _research(self, cycle: int, after: int) -> None:
        self._mechanism_count += 1
        rid = f"r{cycle}-{self._mechanism_count:04d}"
        name = f"TabuMemory{self._mechanism_count}"
        self.emit(ev.ResearchStarted(research_id=rid, cycle=cycle, after_iteration=after, source="llm"))
        for round_name in ROUNDS:
            text = _ROUND_TEXT[round_name].format(stuck="WEIGHT_DECAY", name=name) * self.plan.dialogue_scale
            call_id = await self._llm("research", round_name, text, after, stream=True)
            rel = self.writer.artifact(f"research/{rid}/{round_name}.md", text)
            self.emit(ev.ResearchRound(research_id=rid, round=round_name, call_id=call_id, artifact=rel,
                                       summary=text.strip()[:300]))
        source = _ROUND_TEXT["generate"].format(name=name).split("```python\n", 1)[1].rsplit("```", 1)[0]
        src_rel = self.writer.artifact(f"{layout.mechanism_folder(rid, 1)}/{name}.py", source)
        diff_rel = self.writer.artifact(f"{layout.mechanism_folder(rid, 1)}/{name}.diff", "".join(difflib.unified_diff(
            [], source.splitlines(keepends=True), "/dev/null", f"b/{name}.py")))
        steps = [{"name": "parse", "ok": True, "detail": ""}, {"name": "policy", "ok": True, "detail": "no forbidden calls"},
                 {"name": "import", "ok": True, "detail": "0.21 s in a subprocess"},
                 {"name": "dry run", "ok": True, "detail": f"5 hooks × {len(self.state.records)} records"}]
        report = f"# Validation of `{name}`\n\n" + "\n".join(
            f"- {'✓' if s['ok'] else '✗'} **{s['name']}** {s['detail']}" for s in steps) + "\n"
        report_rel = self.writer.artifact(f"{layout.mechanism_folder(rid, 1)}/validation.md", report)
        self.emit(ev.MechanismValidated(research_id=rid, name=name, ok=True, steps=steps, source=src_rel,
                                        diff=diff_rel, report=report_rel))
        await self._tick()
        if self.plan.approval == "manual":
            # like the engine's concurrent research: the run goes on while the user decides
            self.emit(ev.MechanismPending(research_id=rid, name=name, source=src_rel, diff=diff_rel, report=report_rel))
            self._pending[rid] = (name, src_rel)
            return
        self._activate(rid, name, src_rel)
        await self._tick()

    def _activate(self, rid: str, name: str, src_rel: str) -> None:
        self.emit(ev.MechanismActivated(name=name, origin="generated", hooks=["review_proposal", "observe"],
                                        artifact=src_rel, description=f"generated by research {rid}"))
        self.emit(ev.ResearchFinished(research_id=rid, outcome="activated", name=name,
                                      reason="validated and activated at the next iteration boundary"))

    def _decide(self, rid: str, approved: bool) -> None:
        name, src_rel = self._pending.pop(rid)
        if approved:
            self._activate(rid, name, src_rel)
        else:
            self.emit(ev.ResearchFinished(research_id=rid, outcome="declined", name=name, reason="rejected by the user"))


def _tokens(text: str, count: int) -> list[str]:
    if count <= 0:
        size = 4
    else:
        size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _literal(value: Any) -> str:
    return repr(value)


def _script_text(values: dict[str, Any]) -> str:
    lines = ['"""Synthetic train.py: hyperparameters as top-level constants."""', ""]
    lines += [f"{k} = {_literal(v)}" for k, v in values.items()]
    lines += ["", "", "def main():", "    ...", ""]
    return "\n".join(lines)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    return "".join(difflib.unified_diff(_script_text(old).splitlines(keepends=True),
                                        _script_text(new).splitlines(keepends=True), "a/train.py", "b/train.py"))


async def record_session(session_dir: Path, plan: Plan | None = None) -> RunState:
    """Write a complete scripted session with deterministic timestamps; returns its final state."""
    engine = ScriptedEngine(session_dir, plan or Plan(), clock=StepClock())
    return await engine.run()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.scripted_engine SESSION_DIR``: a scripted engine process that takes channel commands."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m tests.support.scripted_engine", description=main.__doc__)
    parser.add_argument("session_dir")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--step", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--progress", type=int, default=20, help="progress events per training run")
    parser.add_argument("--approval", choices=("auto", "manual"), default="auto")
    parser.add_argument("--outer-period", type=int, default=5)
    parser.add_argument("--slots", type=int, default=1, help="trials at once")
    parser.add_argument("--gpus", action="store_true", help="the slots are (scripted) GPUs")
    args = parser.parse_args(argv)
    plan = Plan(iterations=args.iterations, step_s=args.step, approval=args.approval,
                progress_per_run=args.progress, outer_period=args.outer_period, slots=args.slots, gpus=args.gpus)

    async def run() -> RunState:
        engine = ScriptedEngine(Path(args.session_dir), plan, watch_channel=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, engine.request_stop, f"{sig.name} received")
        return await engine.run()

    state = asyncio.run(run())
    return 0 if state.status in ("completed", "stopped") else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

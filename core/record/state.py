"""Run state derived from events: the engine, resume and replay all fold the same events.

The engine never keeps state that an event does not carry; it applies each event it
emits through :meth:`RunState.apply`, so the live state, a resumed state and a replayed
state cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from core.record import events as ev


@dataclass
class IterationRecord:
    iteration: int
    decision: str
    changes: dict[str, Any]
    hypothesis: str
    val_bpb: float | None
    best_before: float | None
    best_after: float | None
    outcome: str
    reason: str
    rule: str
    duration_s: float
    source: str
    mechanisms: dict[str, dict[str, int]]
    values: dict[str, Any]

    @property
    def delta(self) -> float | None:
        """val_bpb minus the best before it (negative is better)."""
        if self.val_bpb is None or self.best_before is None:
            return None
        return self.val_bpb - self.best_before


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0


@dataclass
class RunState:
    session: str = ""
    name: str = ""
    provider: str = ""
    model: str = ""
    group: str = ""
    levels: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    guidance: str = ""
    baseline_script: str = ""
    script_source: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    baseline_val_bpb: float | None = None
    best_val_bpb: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_script: str = ""  # artifact of the best script so far: the next working copy
    best_iteration: int | None = None
    records: list[IterationRecord] = field(default_factory=list)
    running: int | None = None  # iteration started but not finished
    pending_changes: dict[str, Any] = field(default_factory=dict)
    paused: bool = False
    pause_requested: bool = False
    status: str = "new"  # new | running | completed | stopped | failed
    usage: dict[str, Usage] = field(default_factory=dict)
    last_seq: int = 0
    progress: ev.TrainingProgress | None = None
    interrupted: list[int] = field(default_factory=list)  # iterations cut short (re-run later)
    mechanisms: dict[str, ev.MechanismActivated] = field(default_factory=dict)  # active, by name
    strategy: list[ev.StrategyDecision] = field(default_factory=list)
    research: dict[str, str] = field(default_factory=dict)  # research id -> running | pending | outcome
    iterations_budget: int | None = None  # set when changed mid-session

    @property
    def next_iteration(self) -> int:
        """The iteration to run next: 0 (the baseline) until the baseline is recorded."""
        if not self.records:
            return 0
        return self.records[-1].iteration + 1

    @property
    def proposals(self) -> list[IterationRecord]:
        """Iterations after the baseline."""
        return [r for r in self.records if r.iteration > 0]

    def apply(self, event: ev.Event) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)


def _session_started(s: RunState, e: ev.SessionStarted) -> None:
    s.session, s.name, s.provider, s.model = e.session, e.name, e.provider, e.model
    s.group, s.levels, s.config = e.group, list(e.levels), dict(e.config)
    s.schema = {k: dict(v) for k, v in e.schema.items()}
    s.frozen = set(e.frozen)
    s.guidance = e.guidance
    s.baseline_script = s.best_script = e.script
    s.script_source = e.script_source
    s.data = dict(e.data)
    s.best_values = {k: v["value"] for k, v in s.schema.items()}
    s.status = "running"


def _data_prepared(s: RunState, e: ev.DataPrepared) -> None:
    s.data = dict(e.data)


def _run_resumed(s: RunState, e: ev.RunResumed) -> None:
    s.status = "running"
    s.paused = s.pause_requested = False


def _run_finished(s: RunState, e: ev.RunFinished) -> None:
    s.status = e.status
    s.running = None


def _iteration_started(s: RunState, e: ev.IterationStarted) -> None:
    s.running = e.iteration
    s.pending_changes = {}
    s.progress = None


def _proposal_made(s: RunState, e: ev.ProposalMade) -> None:
    s.pending_changes = dict(e.changes)


def _progress(s: RunState, e: ev.TrainingProgress) -> None:
    s.progress = e


def _iteration_finished(s: RunState, e: ev.IterationFinished) -> None:
    s.records.append(
        IterationRecord(
            iteration=e.iteration, decision=e.decision, changes=dict(e.changes), hypothesis=e.hypothesis,
            val_bpb=e.val_bpb, best_before=e.best_before, best_after=e.best_after, outcome=e.outcome,
            reason=e.reason, rule=e.rule, duration_s=e.duration_s, source=e.source,
            mechanisms={k: dict(v) for k, v in e.mechanisms.items()}, values=dict(e.values),
        )
    )
    if e.decision == "baseline":
        s.baseline_val_bpb = e.val_bpb
    if e.decision in ("baseline", "keep"):
        s.best_val_bpb = e.val_bpb
        s.best_iteration = e.iteration
        s.best_script = e.script or s.best_script
        if e.values:
            s.best_values = dict(e.values)
    s.running = None
    s.progress = None


def _interrupted(s: RunState, e: ev.IterationInterrupted) -> None:
    s.interrupted.append(e.iteration)
    s.running = None
    s.progress = None


def _mechanism_on(s: RunState, e: ev.MechanismActivated) -> None:
    s.mechanisms[e.name] = e


def _strategy(s: RunState, e: ev.StrategyDecision) -> None:
    s.strategy.append(e)


def _research_started(s: RunState, e: ev.ResearchStarted) -> None:
    s.research[e.research_id] = "running"


def _research_pending(s: RunState, e: ev.MechanismPending) -> None:
    s.research[e.research_id] = "pending"


def _research_finished(s: RunState, e: ev.ResearchFinished) -> None:
    s.research[e.research_id] = e.outcome


def _mechanism_off(s: RunState, e: ev.MechanismDeactivated) -> None:
    s.mechanisms.pop(e.name, None)


def _budget(s: RunState, e: ev.BudgetChanged) -> None:
    s.iterations_budget = e.iterations


def _guidance(s: RunState, e: ev.GuidanceChanged) -> None:
    s.guidance = e.guidance


def _frozen(s: RunState, e: ev.ParamFrozen) -> None:
    s.frozen.add(e.name)


def _unfrozen(s: RunState, e: ev.ParamUnfrozen) -> None:
    s.frozen.discard(e.name)


def _pause_requested(s: RunState, e: ev.PauseRequested) -> None:
    s.pause_requested = True


def _paused(s: RunState, e: ev.Paused) -> None:
    s.paused, s.pause_requested = True, False


def _unpaused(s: RunState, e: ev.Unpaused) -> None:
    s.paused = s.pause_requested = False


def _llm_response(s: RunState, e: ev.LLMResponse) -> None:
    u = s.usage.setdefault(e.level, Usage())
    u.prompt_tokens += e.prompt_tokens
    u.completion_tokens += e.completion_tokens
    u.calls += 1


_HANDLERS = {
    ev.SessionStarted: _session_started,
    ev.RunResumed: _run_resumed,
    ev.DataPrepared: _data_prepared,
    ev.RunFinished: _run_finished,
    ev.IterationStarted: _iteration_started,
    ev.ProposalMade: _proposal_made,
    ev.TrainingProgress: _progress,
    ev.IterationFinished: _iteration_finished,
    ev.GuidanceChanged: _guidance,
    ev.BudgetChanged: _budget,
    ev.ParamFrozen: _frozen,
    ev.ParamUnfrozen: _unfrozen,
    ev.PauseRequested: _pause_requested,
    ev.Paused: _paused,
    ev.Unpaused: _unpaused,
    ev.LLMResponse: _llm_response,
    ev.IterationInterrupted: _interrupted,
    ev.MechanismActivated: _mechanism_on,
    ev.MechanismDeactivated: _mechanism_off,
    ev.StrategyDecision: _strategy,
    ev.ResearchStarted: _research_started,
    ev.MechanismPending: _research_pending,
    ev.ResearchFinished: _research_finished,
}


def fold(events: Iterable[ev.Event]) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state

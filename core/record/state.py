"""Run state derived from events: the one fold that the engine, resume, the app and the report share.

The engine never keeps state that an event does not carry; it applies each event it
emits through :meth:`RunState.apply`, so the live state, a resumed state, a replayed
state and a report cannot disagree. Besides what the engine needs (records, best so far,
frozen parameters, active mechanisms), the state holds what viewers derive: each
iteration's live trace, LLM usage per level, the mechanism timeline, every budget change,
device time and the error tail of failed runs.

Trials may run concurrently (several slots): ``in_flight`` maps each iteration started and
not yet decided to what it runs, ``records`` is the trace in finish order, ``next_iteration``
is the iteration to run next (an interrupted one to re-run first, else a new number above
every recorded, running and interrupted one), and ``running`` names the latest iteration in
flight, which on one slot is the one iteration running.

Over ~500 lines because it is the one fold: a handler per event that changes state, next to the
state it changes (the report, the app and resume all read this one fold).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from core.record import events as ev
from core.record.change import NO_CHANGE, Change, as_change


@dataclass


class IterationRecord:
    iteration: int
    decision: ev.Decision
    changes: Change
    hypothesis: str
    val_bpb: float | None
    best_before: float | None
    best_after: float | None
    outcome: ev.TrainingOutcome | Literal[""]
    reason: str
    rule: str
    duration_s: float
    source: str
    mechanisms: dict[str, dict[str, int]]
    values: dict[str, Any]
    error_tail: str = ""  # a crashed run's last log lines

    def __post_init__(self) -> None:
        self.changes = as_change(self.changes)  # a caller's plain name -> value mapping is a ParamChange

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

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass


class IterationTrace:
    """One iteration from its start to its verdict, as the trace shows it (live phase included)."""

    iteration: int
    phase: str = "started"  # started | baseline… | proposing | training | scoring | then the decision
    changes: Change = NO_CHANGE
    hypothesis: str = ""
    val_bpb: float | None = None
    best_before: float | None = None
    duration_s: float | None = None
    reason: str = ""
    mechanisms: dict[str, str] = field(default_factory=dict)  # name -> effect ("" when only called)
    diff: str = ""  # artifact: the train.py diff this iteration ran
    attempts: int = 0  # proposals asked for (re-asks after rejection included)
    final: bool = False
    active: list[str] = field(default_factory=list)  # mechanisms active when it finished
    effects: list[tuple[str, str, str]] = field(default_factory=list)  # (mechanism, effect, detail)
    error_tail: str = ""  # the end of a failed run's output, when its event carried it
    outcome: str = ""  # the training run's outcome at the verdict (timeout, oom, ...: what a "crash" was)

    @property
    def delta(self) -> float | None:
        if self.val_bpb is None or self.best_before is None:
            return None
        return self.val_bpb - self.best_before


@dataclass


class Trial:
    """An iteration in flight (started, no verdict yet): its proposal and its training run, if any."""

    iteration: int
    changes: Change = NO_CHANGE
    training: ev.TrainingStarted | None = None  # the run in progress (None while proposing or scoring)
    progress: ev.TrainingProgress | None = None  # its latest progress


@dataclass


class MechanismUse:
    """A mechanism's life in the run: when it came and went, why, and what it did."""

    name: str
    origin: str = ""
    activated_after: int | None = None  # the last iteration finished before it was activated
    deactivated_after: int | None = None
    deactivation_reason: str = ""
    iterations: list[int] = field(default_factory=list)  # iterations it was active for
    calls: Counter = field(default_factory=Counter)  # hook -> calls
    effects: Counter = field(default_factory=Counter)  # effect kind -> count
    kept_while_active: int = 0
    artifact: str = ""  # its source, as last activated (kept after deactivation: the ledger reads it)


@dataclass


class ParamChange:
    """A freeze or unfreeze with who did it and why (strategy cycles and the user alike)."""

    action: str  # freeze | unfreeze
    name: str
    source: str
    reason: str
    ts: float
    after: int | None = None  # the last iteration finished before it (None: before the baseline finished)
    direction: str = ""  # "" the whole parameter; else the one direction frozen or unfrozen


@dataclass


class DeviceUse:
    seconds: float = 0.0  # training time × devices of the slot
    audit_seconds: float = 0.0  # of those, runs outside the search (calibration, the audit)
    runs: int = 0
    kind: str = "cpu"  # gpu once any run had a GPU slot
    slot_devices: int = 1  # devices of the slot of the run in progress


@dataclass


class EndpointWait:
    """One call waiting out a down endpoint: since when, why, and its probes so far."""

    level: str
    since: float  # the EndpointDown's timestamp
    cause: str
    reason: str
    probes: int = 0
    next_probe_s: float = 0.0


@dataclass


class AuditState:
    """One keep-chain audit: its plan, the results so far (by run number), the verdicts, its end."""

    plan: ev.AuditPlanned
    results: dict[int, float | None] = field(default_factory=dict)  # run -> val_bpb (None: no score)
    verdicts: dict[int, ev.AuditVerdict] = field(default_factory=dict)  # keep iteration -> verdict
    proposed: ev.AuditProposed | None = None
    finished: ev.AuditFinished | None = None

    @property
    def audit(self) -> int:
        return self.plan.audit

    @property
    def runs(self) -> list[ev.AuditRun]:
        return [*self.plan.runs, *(self.proposed.runs if self.proposed is not None else [])]


@dataclass
class RunState:
    session: str = ""
    name: str = ""
    provider: str = ""
    model: str = ""
    group: str = ""
    levels: list[str] = field(default_factory=list)
    proposal_counts: dict[str, int] = field(default_factory=dict)  # every ProposalMade, rejected ones included
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    # parameter -> directions frozen (strategy.freeze = "direction"); the parameter stays active otherwise
    frozen_directions: dict[str, set[str]] = field(default_factory=dict)
    guidance: str = ""
    guidance_source: str = "config"  # who wrote the guidance in force: user | strategy | config
    guidance_cycle: int = 0  # the Level 1.5 cycle that wrote it (source "strategy")
    guidance_pinned: bool = False  # the user's guidance stands over Level 1.5's
    guidance_unread: str = ""  # why nothing reads the guidance in force (empty: the Level 1 LLM does)
    baseline_script: str = ""
    script_source: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    baseline_val_bpb: float | None = None
    best_val_bpb: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_script: str = ""  # artifact of the best script so far: the next working copy
    records: list[IterationRecord] = field(default_factory=list)
    in_flight: dict[int, Trial] = field(default_factory=dict)  # started, no verdict; in start order
    paused: bool = False
    pause_requested: bool = False
    pause_cause: str = ""  # user | budget | stuck, of the pause requested or in force
    pause_reason: str = ""
    # The run's limits (core/engine/limits.py): the caps in force when changed since the start (None: the
    # session's config), the warnings given (scope, resource, fraction, cap), where the stuck streak counts from.
    limits: dict[str, float] | None = None
    spend_warned: set[tuple[str, str, float, float]] = field(default_factory=set)
    stuck_from: int = 0  # records before this index do not count: a stuck pause lifted there
    estimate: ev.SpendEstimated | None = None
    status: str = "new"  # new | running | completed | stopped | failed
    finished: ev.RunFinished | None = None  # the last run's end, until it is resumed
    resumes: int = 0  # run_resumed events so far: part of each run's tag (core/record/processes.py)
    usage: dict[str, Usage] = field(default_factory=dict)  # LLM tokens and calls per level
    last_seq: int = 0
    progress: ev.TrainingProgress | None = None  # the latest progress of any run in flight
    training: ev.TrainingStarted | None = None  # the training run started last of those in progress
    slot: str = ""  # the slot of the latest training run
    device: DeviceUse = field(default_factory=DeviceUse)
    last_error_tail: str = ""  # of the latest failed training run
    interrupted: list[int] = field(default_factory=list)  # iterations cut short (re-run later)
    iterations: dict[int, IterationTrace] = field(default_factory=dict)  # every iteration started
    mechanisms: dict[str, ev.MechanismActivated] = field(default_factory=dict)  # active, by name
    mechanism_history: dict[str, MechanismUse] = field(default_factory=dict)  # every one ever active
    strategy: list[ev.StrategyDecision] = field(default_factory=list)
    param_changes: list[ParamChange] = field(default_factory=list)
    research: dict[str, str] = field(default_factory=dict)  # research id -> running | pending | approved | outcome
    awaiting: dict[str, ev.MechanismPending] = field(default_factory=dict)  # research id -> waits for approval
    acceptance: ev.AcceptanceConfigured | None = None  # the last one is the rule in force
    # the mechanism pre-screen (core/engine/prescreen.py), by research id: in progress, then its result
    prescreening: dict[str, ev.PrescreenStarted] = field(default_factory=dict)
    prescreens: dict[str, ev.MechanismPrescreened] = field(default_factory=dict)
    budget_changes: list[ev.BudgetChanged] = field(default_factory=list)
    learned_context_tokens: int = 0  # the endpoint's context as its server told it (EndpointChecked, applied)
    structured_mode: str = ""  # the response_format in force (StructuredOutput): json_schema, json_object, off
    endpoint_down: dict[str, EndpointWait] = field(default_factory=dict)  # call id -> its wait, while it waits
    # The evidence loop: the noise floor found at session start, and the keep-chain audits.
    calibration: ev.CalibrationStarted | None = None
    calibration_results: dict[int, float | None] = field(default_factory=dict)  # run -> val_bpb
    calibrated: ev.NoiseCalibrated | None = None
    declared_sigma: float | None = None  # the script's own noise_sigma: line, once recorded
    baseline_metrics: dict[str, float] = field(default_factory=dict)  # the baseline run's summary
    seed_fixed: ev.SeedFixed | None = None
    extra_runs: int = 0  # negative run numbers handed out so far (calibration and audit runs)
    audits: list[AuditState] = field(default_factory=list)
    audit_skips: list[ev.AuditSkipped] = field(default_factory=list)
    _last_finished: int | None = None
    _recorded: set[int] = field(default_factory=set)  # iterations with a verdict

    @property
    def script_sigma(self) -> float | None:
        """The σ the script declares (a `noise_sigma:` summary line), from its event or, in logs older
        than that event, from the baseline run's summary; None when it declares none."""
        if self.declared_sigma:
            return self.declared_sigma
        declared = self.baseline_metrics.get("noise_sigma")
        return float(declared) if declared is not None and declared > 0 else None

    @property
    def running(self) -> int | None:
        """The iteration started last of those in flight (on one slot: the iteration running)."""
        return next(reversed(self.in_flight)) if self.in_flight else None

    @property
    def to_rerun(self) -> list[int]:
        """Iterations cut short and not run again since: re-run (with their numbers) before new ones."""
        return sorted({n for n in self.interrupted if n not in self._recorded and n not in self.in_flight})

    @property
    def next_new_iteration(self) -> int:
        """A number no iteration has had: above every recorded, running and interrupted one."""
        used = [*self._recorded, *self.in_flight, *self.interrupted]
        return max(used) + 1 if used else 0

    @property
    def next_iteration(self) -> int:
        """The iteration to run next: 0 (the baseline) until the baseline is recorded, then an
        interrupted one to re-run, else a new number."""
        if not self.records:
            return 0
        rerun = self.to_rerun
        return rerun[0] if rerun else self.next_new_iteration

    @property
    def proposals(self) -> list[IterationRecord]:
        """Iterations after the baseline."""
        return [r for r in self.records if r.iteration > 0]

    @property
    def iterations_budget(self) -> int | None:
        """The iteration budget in force: the last recorded change, else the session's config."""
        if self.budget_changes:
            return self.budget_changes[-1].iterations
        budget = self.config.get("budget", {}) if isinstance(self.config, dict) else {}
        total = budget.get("iterations") if isinstance(budget, dict) else None
        return int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None

    @property
    def iterations_done(self) -> int:
        """Iterations after the baseline that reached a verdict."""
        return sum(1 for r in self.records if r.iteration > 0 and r.decision != "interrupted")

    def iteration(self, n: int) -> IterationTrace:
        trace = self.iterations.get(n)
        if trace is None:
            trace = self.iterations[n] = IterationTrace(n)
        return trace

    def mechanism_use(self, name: str) -> MechanismUse:
        use = self.mechanism_history.get(name)
        if use is None:
            use = self.mechanism_history[name] = MechanismUse(name)
        return use

    def apply(self, event: ev.Event) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)


def _session_started(s: RunState, e: ev.SessionStarted) -> None:
    s.session, s.name, s.provider, s.model = e.session, e.name, e.provider, e.model
    s.group, s.levels, s.config, s.seed = e.group, list(e.levels), dict(e.config), e.seed
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
    s.resumes += 1
    s.status = "running"
    _pause_lifted(s)
    s.finished = None
    s.endpoint_down.clear()  # a wait of the run before never outlives it


def _run_finished(s: RunState, e: ev.RunFinished) -> None:
    s.status = e.status
    s.finished = e
    s.in_flight.clear()
    s.training = None
    s.endpoint_down.clear()
    for rid in list(s.awaiting):  # a log from before approvals expired: nothing waits once the run is over
        s.research[rid] = "expired"
        del s.awaiting[rid]


def _latest_training(s: RunState) -> None:
    """training/progress: those of the run started last among the trials in flight."""
    s.training = next((t.training for t in reversed(s.in_flight.values()) if t.training is not None), None)
    if s.progress is not None and s.progress.iteration not in s.in_flight:
        s.progress = s.in_flight[s.training.iteration].progress if s.training is not None else None


def _iteration_started(s: RunState, e: ev.IterationStarted) -> None:
    s.in_flight.pop(e.iteration, None)
    s.in_flight[e.iteration] = Trial(e.iteration)
    _latest_training(s)
    t = s.iteration(e.iteration)
    t.phase, t.final = ("baseline…" if e.iteration == 0 else "proposing"), False
    t.val_bpb = t.duration_s = None


def _proposal_made(s: RunState, e: ev.ProposalMade) -> None:
    t = s.iteration(e.iteration)
    t.changes, t.hypothesis, t.attempts = e.changes, e.hypothesis, e.attempt
    if e.iteration in s.in_flight:
        s.in_flight[e.iteration].changes = e.changes
    for name in e.changes.params:
        s.proposal_counts[name] = s.proposal_counts.get(name, 0) + 1


def _proposal_rejected(s: RunState, e: ev.ProposalRejected) -> None:
    t = s.iteration(e.iteration)
    t.attempts = e.attempt
    t.reason = f"{e.kind}: {e.reason}"
    if e.mechanism:
        t.mechanisms[e.mechanism] = "vetoed"


def _training_started(s: RunState, e: ev.TrainingStarted) -> None:
    if e.iteration >= 0:  # a run outside the search (calibration, audit) has no iteration to trace
        t = s.iteration(e.iteration)
        t.phase = "training"
        t.diff = e.diff or t.diff
    s.training, s.slot = e, e.slot
    if e.iteration in s.in_flight:
        s.in_flight[e.iteration].training = e
    on_cpu = e.slot in ("", "cpu") or e.slot.startswith("cpu")  # "cpu", or one of "cpu:N"'s cpu0, cpu1…
    s.device.slot_devices = 1 if on_cpu else len([d for d in e.slot.split(",") if d.strip()])
    if not on_cpu:
        s.device.kind = "gpu"


def _progress(s: RunState, e: ev.TrainingProgress) -> None:
    s.progress = e
    if e.iteration in s.in_flight:
        s.in_flight[e.iteration].progress = e


def _training_finished(s: RunState, e: ev.TrainingFinished) -> None:
    if e.iteration >= 0:  # a run outside the search has no iteration to trace
        t = s.iteration(e.iteration)
        t.phase = "scoring" if e.outcome == "ok" else e.outcome
        if e.outcome != "ok" and e.error_tail:
            t.error_tail = s.last_error_tail = e.error_tail
    if e.iteration == 0 and e.outcome == "ok":
        s.baseline_metrics = dict(e.metrics)
    s.device.seconds += e.duration_s * s.device.slot_devices
    if e.iteration < 0:
        s.device.audit_seconds += e.duration_s * s.device.slot_devices
    s.device.runs += 1
    if e.iteration in s.in_flight:
        s.in_flight[e.iteration].training = None
    if s.training is not None and s.training.iteration == e.iteration:
        s.training = None
        _latest_training(s)


def _iteration_finished(s: RunState, e: ev.IterationFinished) -> None:
    if e.iteration in s._recorded and e.iteration not in s.in_flight:
        return  # a second verdict on a recorded iteration (a stray or damaged line) must not overwrite it
    s.records.append(
        IterationRecord(
            iteration=e.iteration, decision=e.decision, changes=e.changes, hypothesis=e.hypothesis,
            val_bpb=e.val_bpb, best_before=e.best_before, best_after=e.best_after, outcome=e.outcome,
            reason=e.reason, rule=e.rule, duration_s=e.duration_s, source=e.source,
            mechanisms={k: dict(v) for k, v in e.mechanisms.items()}, values=dict(e.values),
            error_tail=e.error_tail,
        )
    )
    if e.decision == "baseline":
        s.baseline_val_bpb = e.val_bpb
    if e.decision in ("baseline", "keep"):
        s.best_val_bpb = e.val_bpb
        s.best_script = e.script or s.best_script
        if e.values:
            s.best_values = dict(e.values)
    s._recorded.add(e.iteration)
    _end_trial(s, e.iteration)
    t = s.iteration(e.iteration)
    t.phase, t.final = e.decision, True
    t.changes = e.changes if e.changes != NO_CHANGE or e.iteration == 0 else t.changes
    t.hypothesis = e.hypothesis or t.hypothesis
    t.val_bpb, t.best_before = e.val_bpb, e.best_before
    t.duration_s, t.reason, t.outcome = e.duration_s, e.reason, e.outcome
    for name, calls in e.mechanisms.items():
        if sum(calls.values()) > 0:
            t.mechanisms.setdefault(name, "")
    s._last_finished = e.iteration
    t.active = sorted(set(s.mechanisms) | set(e.mechanisms))
    for name in t.active:
        use = s.mechanism_use(name)
        use.iterations.append(e.iteration)
        use.calls.update(e.mechanisms.get(name, {}))
        use.kept_while_active += e.decision == "keep"


def _end_trial(s: RunState, iteration: int) -> None:
    s.in_flight.pop(iteration, None)
    if s.progress is not None and s.progress.iteration == iteration:
        s.progress = None
    _latest_training(s)


def _interrupted(s: RunState, e: ev.IterationInterrupted) -> None:
    s.interrupted.append(e.iteration)
    _end_trial(s, e.iteration)
    t = s.iteration(e.iteration)
    t.phase, t.final, t.reason = "interrupted", True, e.reason


def _mechanism_effect(s: RunState, e: ev.MechanismEffect) -> None:
    t = s.iteration(e.iteration)
    t.mechanisms[e.name] = e.effect
    t.effects.append((e.name, e.effect, e.detail))
    s.mechanism_use(e.name).effects[e.effect] += 1


def _mechanism_on(s: RunState, e: ev.MechanismActivated) -> None:
    s.mechanisms[e.name] = e
    use = s.mechanism_use(e.name)
    use.origin, use.activated_after = e.origin, s._last_finished
    use.artifact = e.artifact or use.artifact
    for rid, pending in list(s.awaiting.items()):
        if pending.name == e.name:
            del s.awaiting[rid]


def _mechanism_off(s: RunState, e: ev.MechanismDeactivated) -> None:
    s.mechanisms.pop(e.name, None)
    use = s.mechanism_use(e.name)
    use.deactivated_after, use.deactivation_reason = s._last_finished, e.reason


def _strategy(s: RunState, e: ev.StrategyDecision) -> None:
    s.strategy.append(e)


def _research_started(s: RunState, e: ev.ResearchStarted) -> None:
    s.research[e.research_id] = "running"


def _research_pending(s: RunState, e: ev.MechanismPending) -> None:
    s.research[e.research_id] = "pending"
    s.awaiting[e.research_id] = e


def _research_approved(s: RunState, e: ev.MechanismApproved) -> None:
    s.research[e.research_id] = "approved"
    s.awaiting.pop(e.research_id, None)


def _research_finished(s: RunState, e: ev.ResearchFinished) -> None:
    s.research[e.research_id] = e.outcome
    s.awaiting.pop(e.research_id, None)


def _prescreen_started(s: RunState, e: ev.PrescreenStarted) -> None:
    s.prescreening[e.research_id] = e


def _prescreened(s: RunState, e: ev.MechanismPrescreened) -> None:
    s.prescreening.pop(e.research_id, None)
    s.prescreens[e.research_id] = e


def _budget(s: RunState, e: ev.BudgetChanged) -> None:
    s.budget_changes.append(e)


def _structured(s: RunState, e: ev.StructuredOutput) -> None:
    s.structured_mode = e.mode


def _endpoint_checked(s: RunState, e: ev.EndpointChecked) -> None:
    if e.applied:
        s.learned_context_tokens = e.context_tokens


def _guidance(s: RunState, e: ev.GuidanceChanged) -> None:
    s.guidance, s.guidance_source, s.guidance_cycle = e.guidance, e.source, e.cycle
    s.guidance_pinned = e.pinned and e.source == "user"
    s.guidance_unread = e.unread


def _frozen(s: RunState, e: ev.ParamFrozen) -> None:
    if e.direction:
        s.frozen_directions.setdefault(e.name, set()).add(e.direction)
    else:
        s.frozen.add(e.name)
    s.param_changes.append(ParamChange("freeze", e.name, e.source, e.reason, e.ts, s._last_finished,
                                       direction=e.direction))


def _unfrozen(s: RunState, e: ev.ParamUnfrozen) -> None:
    if e.direction:
        left = s.frozen_directions.get(e.name, set()) - {e.direction}
        if left:
            s.frozen_directions[e.name] = left
        else:
            s.frozen_directions.pop(e.name, None)
    else:
        s.frozen.discard(e.name)
    s.param_changes.append(ParamChange("unfreeze", e.name, e.source, e.reason, e.ts, s._last_finished,
                                       direction=e.direction))


def _pause_requested(s: RunState, e: ev.PauseRequested) -> None:
    s.pause_requested = True
    s.pause_cause, s.pause_reason = e.cause, e.reason


def _paused(s: RunState, e: ev.Paused) -> None:
    s.paused, s.pause_requested = True, False
    s.pause_cause, s.pause_reason = e.cause, e.reason


def _unpaused(s: RunState, e: ev.Unpaused) -> None:
    _pause_lifted(s)


def _pause_lifted(s: RunState) -> None:
    """A pause ends (a resume, a raised cap, a restart): a lifted stuck pause counts its streak afresh."""
    if (s.paused or s.pause_requested) and s.pause_cause == "stuck":
        s.stuck_from = len(s.records)
    s.paused = s.pause_requested = False
    s.pause_cause = s.pause_reason = ""


def _limits_changed(s: RunState, e: ev.LimitsChanged) -> None:
    s.limits = dict(e.limits)


def _spend_warning(s: RunState, e: ev.SpendWarning) -> None:
    s.spend_warned.add((e.scope, e.resource, e.fraction, e.cap))


def _spend_estimated(s: RunState, e: ev.SpendEstimated) -> None:
    s.estimate = e


def _llm_response(s: RunState, e: ev.LLMResponse) -> None:
    u = s.usage.setdefault(e.level, Usage())
    u.prompt_tokens += e.prompt_tokens
    u.completion_tokens += e.completion_tokens
    u.calls += 1


def _acceptance(s: RunState, e: ev.AcceptanceConfigured) -> None:
    s.acceptance = e


def _endpoint_down(s: RunState, e: ev.EndpointDown) -> None:
    s.endpoint_down[e.call_id] = EndpointWait(level=e.level, since=e.ts, cause=e.cause, reason=e.reason)


def _endpoint_probe(s: RunState, e: ev.EndpointProbe) -> None:
    wait = s.endpoint_down.get(e.call_id)
    if wait is not None:
        wait.probes, wait.next_probe_s = e.probe, e.delay_s
        wait.reason = e.error or wait.reason


def _endpoint_back(s: RunState, e: ev.EndpointUp | ev.EndpointWaitEnded) -> None:
    s.endpoint_down.pop(e.call_id, None)


def _calibration_started(s: RunState, e: ev.CalibrationStarted) -> None:
    if s.calibration is None:
        s.extra_runs += len(e.runs)
    s.calibration = e


def _calibration_run(s: RunState, e: ev.CalibrationRunFinished) -> None:
    s.calibration_results[e.run] = e.val_bpb


def _calibrated(s: RunState, e: ev.NoiseCalibrated) -> None:
    s.calibrated = e


def _declared(s: RunState, e: ev.NoiseDeclared) -> None:
    s.declared_sigma = e.std


def _seed_fixed(s: RunState, e: ev.SeedFixed) -> None:
    s.seed_fixed = e


def _audit_of(s: RunState, audit: int) -> AuditState | None:
    return next((a for a in reversed(s.audits) if a.audit == audit), None)


def _audit_planned(s: RunState, e: ev.AuditPlanned) -> None:
    s.audits.append(AuditState(e))
    s.extra_runs += len(e.runs)


def _audit_skipped(s: RunState, e: ev.AuditSkipped) -> None:
    s.audit_skips.append(e)


def _audit_run(s: RunState, e: ev.AuditRunFinished) -> None:
    a = _audit_of(s, e.audit)
    if a is not None:
        a.results[e.run] = e.val_bpb


def _audit_verdict(s: RunState, e: ev.AuditVerdict) -> None:
    a = _audit_of(s, e.audit)
    if a is not None:
        a.verdicts[e.iteration] = e


def _audit_proposed(s: RunState, e: ev.AuditProposed) -> None:
    a = _audit_of(s, e.audit)
    if a is not None and a.proposed is None:
        a.proposed = e
        s.extra_runs += len(e.runs)


def _audit_finished(s: RunState, e: ev.AuditFinished) -> None:
    a = _audit_of(s, e.audit)
    if a is not None:
        a.finished = e


_HANDLERS = {
    ev.SessionStarted: _session_started,
    ev.RunResumed: _run_resumed,
    ev.DataPrepared: _data_prepared,
    ev.RunFinished: _run_finished,
    ev.IterationStarted: _iteration_started,
    ev.ProposalMade: _proposal_made,
    ev.ProposalRejected: _proposal_rejected,
    ev.TrainingStarted: _training_started,
    ev.TrainingProgress: _progress,
    ev.TrainingFinished: _training_finished,
    ev.IterationFinished: _iteration_finished,
    ev.GuidanceChanged: _guidance,
    ev.BudgetChanged: _budget,
    ev.EndpointChecked: _endpoint_checked,
    ev.StructuredOutput: _structured,
    ev.ParamFrozen: _frozen,
    ev.ParamUnfrozen: _unfrozen,
    ev.PauseRequested: _pause_requested,
    ev.Paused: _paused,
    ev.Unpaused: _unpaused,
    ev.LimitsChanged: _limits_changed,
    ev.SpendWarning: _spend_warning,
    ev.SpendEstimated: _spend_estimated,
    ev.LLMResponse: _llm_response,
    ev.IterationInterrupted: _interrupted,
    ev.MechanismActivated: _mechanism_on,
    ev.MechanismDeactivated: _mechanism_off,
    ev.MechanismEffect: _mechanism_effect,
    ev.StrategyDecision: _strategy,
    ev.ResearchStarted: _research_started,
    ev.MechanismPending: _research_pending,
    ev.MechanismApproved: _research_approved,
    ev.ResearchFinished: _research_finished,
    ev.PrescreenStarted: _prescreen_started,
    ev.MechanismPrescreened: _prescreened,
    ev.AcceptanceConfigured: _acceptance,
    ev.EndpointDown: _endpoint_down,
    ev.EndpointProbe: _endpoint_probe,
    ev.EndpointUp: _endpoint_back,
    ev.EndpointWaitEnded: _endpoint_back,
    ev.CalibrationStarted: _calibration_started,
    ev.CalibrationRunFinished: _calibration_run,
    ev.NoiseCalibrated: _calibrated,
    ev.NoiseDeclared: _declared,
    ev.SeedFixed: _seed_fixed,
    ev.AuditPlanned: _audit_planned,
    ev.AuditSkipped: _audit_skipped,
    ev.AuditRunFinished: _audit_run,
    ev.AuditVerdict: _audit_verdict,
    ev.AuditProposed: _audit_proposed,
    ev.AuditFinished: _audit_finished,
}


def fold(events: Iterable[ev.Event]) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state

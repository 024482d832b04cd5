"""The event vocabulary: the one contract between engine, session store, UI and replay.

Every event is a frozen dataclass with a ``type`` name, a sequence number and a
timestamp stamped by the engine when it is emitted. Events serialise to one JSON
object per line. Readers tolerate events they do not know (a newer writer) by
keeping them as :class:`UnknownEvent`, and fields they do not know are ignored.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

_REGISTRY: dict[str, type["Event"]] = {}


@dataclass(frozen=True, kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    seq: int = 0
    ts: float = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type")
        if name:
            if name in _REGISTRY:
                raise TypeError(f"event type {name!r} registered twice")
            _REGISTRY[name] = cls

    def payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("seq", "ts")}


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/inf: a NaN loss must survive as a string, never as a number.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def to_dict(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "ts": round(event.ts, 6), "type": event.type, **_jsonable(event.payload())}


def to_json(event: Event) -> str:
    return json.dumps(to_dict(event), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """An event of a type this version does not know; kept so nothing is lost."""

    name: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def from_dict(data: dict[str, Any]) -> Event:
    kind = data.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    seq = int(data.get("seq", 0))
    ts = float(data.get("ts", 0.0))
    if cls is None:
        rest = {k: v for k, v in data.items() if k not in ("seq", "ts", "type")}
        return UnknownEvent(seq=seq, ts=ts, name=str(kind), data=rest)
    names = _field_names(cls)
    return cls(seq=seq, ts=ts, **{k: v for k, v in data.items() if k in names})


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> frozenset[str]:
    # Replay and attach parse every event: look the fields up once per class.
    return frozenset(f.name for f in dataclasses.fields(cls)) - {"seq", "ts"}


def from_json(line: str) -> Event:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    return from_dict(data)


def event_types() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


# --- the run ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SessionStarted(Event):
    type: ClassVar[str] = "session_started"
    session: str = ""
    name: str = ""
    provider: str = ""  # "openai" or "offline"
    model: str = ""
    group: str = ""
    levels: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    script: str = ""  # artifact: the baseline train.py as evaluated
    script_source: str = ""  # where the user's script lives (its folder is the run's cwd)
    schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    guidance: str = ""
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # corpus hash etc. so runs are comparable
    version: str = ""
    surrogate: bool = False  # the surrogate workload: val_bpb is a response surface, nothing trained


@dataclass(frozen=True, kw_only=True)
class RunResumed(Event):
    type: ClassVar[str] = "run_resumed"
    next_iteration: int = 0
    pid: int = 0


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    status: str = "completed"  # completed | stopped | failed
    reason: str = ""
    iterations: int = 0
    baseline_val_bpb: float | None = None
    best_val_bpb: float | None = None


# --- commands and their acknowledgement ----------------------------------------


@dataclass(frozen=True, kw_only=True)
class CommandReceived(Event):
    type: ClassVar[str] = "command_received"
    command: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "tui", "cli", "channel"
    ok: bool = True
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class PauseRequested(Event):
    type: ClassVar[str] = "pause_requested"


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    type: ClassVar[str] = "paused"
    next_iteration: int = 0


@dataclass(frozen=True, kw_only=True)
class Unpaused(Event):
    type: ClassVar[str] = "unpaused"


@dataclass(frozen=True, kw_only=True)
class GuidanceChanged(Event):
    type: ClassVar[str] = "guidance_changed"
    guidance: str = ""
    source: str = "user"  # user | strategy | config


@dataclass(frozen=True, kw_only=True)
class BudgetChanged(Event):
    """The iteration budget changed mid-session (the time budget never does: it is the measurement)."""

    type: ClassVar[str] = "budget_changed"
    iterations: int = 0
    source: str = "user"


@dataclass(frozen=True, kw_only=True)
class ParamFrozen(Event):
    type: ClassVar[str] = "param_frozen"
    name: str = ""
    reason: str = ""
    source: str = "user"  # user | rule | strategy


@dataclass(frozen=True, kw_only=True)
class ParamUnfrozen(Event):
    type: ClassVar[str] = "param_unfrozen"
    name: str = ""
    reason: str = ""
    source: str = "user"


# --- LLM calls ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LLMRequest(Event):
    type: ClassVar[str] = "llm_request"
    call_id: str = ""
    level: str = ""  # inner | strategy | research
    purpose: str = ""
    iteration: int | None = None
    model: str = ""
    artifact: str = ""  # the raw request messages


@dataclass(frozen=True, kw_only=True)
class LLMDelta(Event):
    type: ClassVar[str] = "llm_delta"
    call_id: str = ""
    level: str = ""
    kind: str = "content"  # content | reasoning | reset (the call is retried: discard its text so far)
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class LLMResponse(Event):
    type: ClassVar[str] = "llm_response"
    call_id: str = ""
    level: str = ""
    ok: bool = True
    artifact: str = ""  # the raw reply text (and reasoning)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float = 0.0
    attempts: int = 1
    error: str = ""


# --- one iteration of Level 1 ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IterationStarted(Event):
    type: ClassVar[str] = "iteration_started"
    iteration: int = 0  # 0 is the baseline


@dataclass(frozen=True, kw_only=True)
class ProposalMade(Event):
    type: ClassVar[str] = "proposal_made"
    iteration: int = 0
    attempt: int = 1
    changes: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""
    source: str = "llm"  # llm | offline | tpe | cmaes | sobol (a classical sampler)
    call_id: str = ""


@dataclass(frozen=True, kw_only=True)
class ProposalRejected(Event):
    type: ClassVar[str] = "proposal_rejected"
    iteration: int = 0
    attempt: int = 1
    kind: str = "invalid"  # unparseable | invalid | vetoed | llm_error
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    raw: str = ""  # the reply, truncated, for unparseable ones
    mechanism: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainingStarted(Event):
    type: ClassVar[str] = "training_started"
    iteration: int = 0
    script: str = ""  # artifact: train.py as run
    diff: str = ""  # artifact: diff against the best so far
    slot: str = ""
    budget_s: float = 0.0
    seed: int | None = None  # the data-order seed this run used (BILEVEL_SEED)


@dataclass(frozen=True, kw_only=True)
class TrainingProgress(Event):
    type: ClassVar[str] = "training_progress"
    iteration: int = 0
    step: int | None = None
    percent: float | None = None
    loss: float | None = None
    tok_per_s: float | None = None
    mfu: float | None = None
    remaining_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingOutput(Event):
    type: ClassVar[str] = "training_output"
    iteration: int = 0
    stream: str = "stdout"
    line: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainingFinished(Event):
    type: ClassVar[str] = "training_finished"
    iteration: int = 0
    outcome: str = "ok"  # ok | crash | timeout | no_metrics | diverged | oom | cancelled
    val_bpb: float | None = None  # only for ok: a crash is never a number
    metrics: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    duration_s: float = 0.0
    reason: str = ""
    error_tail: str = ""
    log: str = ""  # artifact


@dataclass(frozen=True, kw_only=True)
class IterationFinished(Event):
    """The verdict on one iteration; folding these gives the trace and the best config."""

    type: ClassVar[str] = "iteration_finished"
    iteration: int = 0
    decision: str = ""  # baseline | keep | discard | crash | rejected | interrupted
    changes: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""
    val_bpb: float | None = None
    best_before: float | None = None
    best_after: float | None = None
    rule: str = ""  # which acceptance rule decided, with its numbers
    reason: str = ""
    outcome: str = ""  # training outcome, when it trained
    script: str = ""  # artifact of the script evaluated
    values: dict[str, Any] = field(default_factory=dict)  # full parameter values evaluated
    duration_s: float = 0.0
    source: str = ""  # llm | offline | tpe | cmaes | sobol
    mechanisms: dict[str, dict[str, int]] = field(default_factory=dict)  # hook calls per mechanism
    # The numbers the acceptance rule used: best, threshold, noise floor, margin, confirmation runs.
    acceptance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class IterationInterrupted(Event):
    """The iteration was cut short (stop, Ctrl-C, a killed process); it is re-run on resume."""

    type: ClassVar[str] = "iteration_interrupted"
    iteration: int = 0
    reason: str = ""


# --- search mechanisms ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MechanismActivated(Event):
    type: ClassVar[str] = "mechanism_activated"
    name: str = ""
    origin: str = "builtin"  # builtin | config | generated
    hooks: list[str] = field(default_factory=list)  # hooks it overrides
    artifact: str = ""  # its source
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class MechanismDeactivated(Event):
    type: ClassVar[str] = "mechanism_deactivated"
    name: str = ""
    reason: str = ""
    hook: str = ""  # the hook that failed, if any
    calls: dict[str, int] = field(default_factory=dict)  # hook calls over its lifetime


@dataclass(frozen=True, kw_only=True)
class MechanismEffect(Event):
    """Proof that an active mechanism changed what the loop did."""

    type: ClassVar[str] = "mechanism_effect"
    iteration: int = 0
    name: str = ""
    hook: str = ""
    effect: str = ""  # prompt | vetoed | modified | overrode
    detail: str = ""


# --- Level 1.5: search strategy -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StrategyStarted(Event):
    type: ClassVar[str] = "strategy_started"
    cycle: int = 0
    after_iteration: int = 0


@dataclass(frozen=True, kw_only=True)
class StrategyDecision(Event):
    """One Level 1.5 cycle's verdict; each applied freeze/unfreeze also gets its own event."""

    type: ClassVar[str] = "strategy_decision"
    cycle: int = 0
    source: str = "llm"  # llm | offline
    diagnosis: str = ""
    reasoning: str = ""
    guidance: str = ""
    candidates: list[str] = field(default_factory=list)  # the freeze rule's candidates
    freeze: list[str] = field(default_factory=list)  # applied
    unfreeze: list[str] = field(default_factory=list)  # applied
    refused: dict[str, str] = field(default_factory=dict)  # requested but refused: name -> why
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-parameter statistics used
    error: str = ""


# --- Level 2: mechanism research ----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResearchStarted(Event):
    type: ClassVar[str] = "research_started"
    research_id: str = ""
    cycle: int = 0
    after_iteration: int = 0
    source: str = "llm"  # llm | offline


@dataclass(frozen=True, kw_only=True)
class ResearchRound(Event):
    """A finished round of the dialogue; its tokens streamed as LLMDelta events with call_id."""

    type: ClassVar[str] = "research_round"
    research_id: str = ""
    round: str = ""  # explore | critique | specify | generate | repair
    call_id: str = ""
    artifact: str = ""  # the round's full text
    summary: str = ""


@dataclass(frozen=True, kw_only=True)
class MechanismValidated(Event):
    type: ClassVar[str] = "mechanism_validated"
    research_id: str = ""
    name: str = ""
    attempt: int = 1
    ok: bool = False
    failure: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)  # name, ok, detail
    missing_packages: list[str] = field(default_factory=list)
    source: str = ""  # artifact: the module
    diff: str = ""  # artifact: diff against the previous active set
    report: str = ""  # artifact: the validation report (Markdown)


@dataclass(frozen=True, kw_only=True)
class MechanismPending(Event):
    """A validated mechanism waits for the user's approval (level2.approval = "manual")."""

    type: ClassVar[str] = "mechanism_pending"
    research_id: str = ""
    name: str = ""
    source: str = ""
    diff: str = ""
    report: str = ""


@dataclass(frozen=True, kw_only=True)
class ResearchFinished(Event):
    type: ClassVar[str] = "research_finished"
    research_id: str = ""
    outcome: str = ""  # activated | rejected | declined | failed
    name: str = ""
    reason: str = ""


# --- noise floor and acceptance ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NoiseStarted(Event):
    """A noise measurement: the unchanged baseline, run once per seed."""

    type: ClassVar[str] = "noise_started"
    runs: int = 0
    seeds: list[int] = field(default_factory=list)
    fingerprint: str = ""  # script + corpus + hardware: the floor applies only where this matches
    hardware: str = ""
    script_sha256: str = ""  # of the baseline as evaluated, seed constants normalised
    dataset_id: str = ""


@dataclass(frozen=True, kw_only=True)
class NoiseRunFinished(Event):
    type: ClassVar[str] = "noise_run_finished"
    run: int = 0
    seed: int = 0
    outcome: str = "ok"
    val_bpb: float | None = None
    duration_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class NoiseMeasured(Event):
    """The spread of val_bpb over seeds; saved as the noise floor for the fingerprint."""

    type: ClassVar[str] = "noise_measured"
    fingerprint: str = ""
    hardware: str = ""
    seeds: list[int] = field(default_factory=list)  # of the successful runs
    values: list[float] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof = 1): the noise floor σ
    mad: float | None = None  # median absolute deviation (unscaled)
    failed: int = 0  # runs without a score (excluded)
    store: str = ""  # where the floor was saved


@dataclass(frozen=True, kw_only=True)
class AcceptanceConfigured(Event):
    """The keep/discard rule in force for this run, with the noise floor it found."""

    type: ClassVar[str] = "acceptance_configured"
    rule: str = ""  # min_delta | noise_sigma
    description: str = ""
    min_delta: float = 0.0
    noise_sigma: float = 0.0
    confirm: bool = False
    allow_seed_tuning: bool = False
    threshold: float | None = None  # the improvement a candidate must exceed; None until a floor exists
    fingerprint: str = ""
    hardware: str = ""
    noise_std: float | None = None
    noise_mad: float | None = None
    noise_runs: int = 0
    noise_session: str = ""
    seed_params: list[str] = field(default_factory=list)  # seed constants locked (or tunable) in the script


@dataclass(frozen=True, kw_only=True)
class ConfirmationStarted(Event):
    """A candidate new best is re-run with another seed before it may be kept."""

    type: ClassVar[str] = "confirmation_started"
    iteration: int = 0
    seed: int = 0
    first_val_bpb: float | None = None
    best: float | None = None

"""The event vocabulary: the one contract between engine, session store, UI and replay.

Every event is a frozen ``msgspec.Struct`` in one tagged union: the tag is the JSON
``type`` key, so a log line is ``{"type": "training_progress", "seq": 7, "ts": ..., ...}``.
Reading checks every field's type (a wrong-typed field is a :class:`EventDecodeError`
naming the field, which the session reader prefixes with the line); fields whose values
are a fixed set are ``Literal`` types.

Tolerated on read, so old and newer logs keep loading: an event type this version does
not know becomes :class:`UnknownEvent` keeping its data; unknown fields are ignored; the
strings "nan", "inf" and "-inf" that older writers put in float fields are read back as
floats.

Non-finite floats (a diverged loss) round-trip exactly. msgspec's encoder would write
them as ``null``, so a line whose fast encoding holds a ``null`` is checked, and if it
carries a non-finite float it is written by the standard library's encoder instead, with
the tokens ``NaN``, ``Infinity`` and ``-Infinity`` (what Python's ``json`` writes and reads).
The fast decoder refuses those tokens, and such a line is read by ``json`` instead: the
slow path costs only the rare lines that need it (see ``bench/bench_events.py``).

Adding an event: a ``class X(Event, tag="x")`` below, with defaults for every field and a
``Literal`` for a field with a fixed set of values. The module is over 500 lines because
it is the whole vocabulary, one short class per event, next to the codec that defines
how they are written; splitting them would put the contract in two places.
"""
from __future__ import annotations

import json
import math
import operator
import types
import typing
from typing import Any, ClassVar, Literal, Union

import msgspec

from core.record.change import NO_CHANGE, Change, CodeEdit, EditBlock, ParamChange, as_change, is_tagged

# The fixed sets of values; every value an emitter writes must be listed here.
Provider = Literal["openai", "offline"]
RunStatus = Literal["completed", "stopped", "failed"]
Level = Literal["inner", "strategy", "research"]
DeltaKind = Literal["content", "reasoning", "reset"]
# stale: queued for a slot, dropped because a new best arrived first (proposed again against it)
RejectionKind = Literal["unparseable", "invalid", "vetoed", "llm_error", "truncated", "repeat", "wrong_fields",
                        "stale"]
StructuredMode = Literal["json_schema", "json_object", "off"]
Stream = Literal["stdout", "stderr"]
WorkerKind = Literal["fresh", "warm"]
FailureClass = Literal["", "script", "infrastructure"]
# starting: the run began, no step yet (interpreter, data, model build); compiling: the untimed
# first steps (warm-up, compilation); evaluating: the budget is spent
ProgressPhase = Literal["starting", "compiling", "training", "evaluating"]
TrainingOutcome = Literal["ok", "crash", "timeout", "no_metrics", "diverged", "oom", "cancelled"]
Decision = Literal["baseline", "keep", "discard", "crash", "rejected", "interrupted", "cancelled"]
Origin = Literal["builtin", "config", "generated"]
Effect = Literal["prompt", "vetoed", "modified", "overrode", "refused"]  # refused: a decide that would keep a discard
ResearchRoundName = Literal["explore", "critique", "specify", "generate", "repair"]
ResearchOutcome = Literal["activated", "rejected", "declined", "failed", "dropped", "expired"]
AcceptanceRule = Literal["min_delta", "noise_sigma", "paper"]
PrescreenMode = Literal["off", "report", "gate"]
PrescreenVerdict = Literal["passed", "harmful", "failed", "skipped"]
SigmaSource = Literal["", "calibrated", "store", "declared"]  # where the σ a rule uses came from
AuditVerdictKind = Literal["holds", "within noise", "harmful", "superseded", "unmeasured"]
AuditStatus = Literal["completed", "skipped", "stopped"]
GuidanceSource = Literal["user", "strategy", "config"]
FreezeSource = Literal["user", "rule", "strategy"]
LevelSource = Literal["llm", "offline"]  # who answered Level 1.5 or Level 2: the LLM, or offline mode's algorithm
ResearchSource = Literal["llm", "offline", "ledger"]  # Level 2's, and "ledger": a level2.seed entry at the start
# A Level 1 proposal's source is open-ended, a str: "llm", "offline", "baseline" (iteration 0), a classical
# sampler, or a plugin proposer's registry name (core/record/registry.py; checked where the proposer is built).
# An executor's name is open-ended the same way (plugins add executors).


class EventDecodeError(ValueError):
    """A line that is not an event of this vocabulary; ``str()`` names the field and what was wrong."""


class EventEncodeError(ValueError):
    """An event that would write a line no reader accepts (a value outside its fixed set)."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    type: ClassVar[str] = "event"  # the tag, set on each class below
    seq: int = 0
    ts: float = 0.0

    def payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__struct_fields__ if name not in ("seq", "ts")}


class UnknownEvent(Event, tag="unknown_event"):
    """An event of a type this version does not know; kept so nothing is lost (and written back as it was)."""

    name: str = ""
    data: dict[str, Any] = {}


# --- the run ------------------------------------------------------------------


class SessionStarted(Event, tag="session_started"):
    session: str = ""
    name: str = ""
    provider: Provider | Literal[""] = ""
    model: str = ""
    group: str = ""
    levels: list[str] = []
    config: dict[str, Any] = {}
    script: str = ""  # artifact: the baseline train.py as evaluated
    script_source: str = ""  # where the user's script lives (its folder is the run's cwd)
    schema: dict[str, dict[str, Any]] = {}
    frozen: list[str] = []
    guidance: str = ""
    seed: int = 0
    data: dict[str, Any] = {}  # corpus hash etc. so runs are comparable
    version: str = ""
    surrogate: bool = False  # the surrogate workload: val_bpb is a response surface, nothing trained


class ScriptInspected(Event, tag="script_inspected"):
    """What the training script takes from its folder and what it fixes (the public
    autoresearch shape: constants imported from prepare.py, a literal seed)."""

    script: str = ""  # the user's script
    modules: list[str] = []  # sibling modules it imports: each run gets a copy
    constants: dict[str, str] = {}  # imported constant -> "prepare.py:31 = 300"
    set_per_run: dict[str, Any] = {}  # what the copy sets, e.g. TIME_BUDGET
    fixed_seeds: list[str] = []  # "torch.manual_seed(42) (line 458)"
    seed_note: str = ""  # what a run's seed can and cannot vary; empty when it reaches the script
    locked: dict[str, str] = {}  # constant -> why the search may not edit it


class RunResumed(Event, tag="run_resumed"):
    next_iteration: int = 0
    pid: int = 0


class RunFinished(Event, tag="run_finished"):
    status: RunStatus = "completed"
    reason: str = ""
    iterations: int = 0
    baseline_val_bpb: float | None = None
    best_val_bpb: float | None = None


# --- commands and their acknowledgement ----------------------------------------


class CommandReceived(Event, tag="command_received"):
    command: str = ""
    args: dict[str, Any] = {}
    source: str = ""  # "tui", "cli", "channel"
    ok: bool = True
    error: str = ""


# user: the pause command; budget: a spend cap reached (a raised cap lifts it); stuck: the stuck-loop rule
PauseCause = Literal["user", "budget", "stuck"]


class PauseRequested(Event, tag="pause_requested"):
    cause: PauseCause = "user"
    reason: str = ""  # what was reached, and what lifts it (empty for the user's own pause)


class Paused(Event, tag="paused"):
    next_iteration: int = 0
    cause: PauseCause = "user"
    reason: str = ""


class Unpaused(Event, tag="unpaused"):
    reason: str = ""  # empty: the user's resume; else what lifted a limit's pause (a raised cap)


class GuidanceChanged(Event, tag="guidance_changed"):
    guidance: str = ""
    source: GuidanceSource = "user"
    pinned: bool = False  # the user's guidance stands over Level 1.5's until the user replaces it
    cycle: int = 0  # the Level 1.5 cycle that wrote it (source "strategy")
    unread: str = ""  # why nothing in the run reads it (a sampler or offline mode proposes); empty: it is read


class GuidanceNotApplied(Event, tag="guidance_not_applied"):
    """A Level 1.5 cycle's guidance that was not applied, and why (the user's pinned guidance stands)."""

    cycle: int = 0
    guidance: str = ""
    reason: str = ""


class BudgetChanged(Event, tag="budget_changed"):
    """The iteration budget changed mid-session (the time budget never does: it is the measurement)."""

    iterations: int = 0
    source: str = "user"


# --- the run's limits: spend caps over money, tokens and GPU-hours, and the stuck-loop rule ---

SpendScope = Literal["total", "inner", "strategy", "research", "audit"]
SpendResource = Literal["usd", "tokens", "gpu_hours"]


class SpendEstimated(Event, tag="spend_estimated"):
    """What the run is expected to spend, at its start (core/engine/estimate.py); ``bilevel run --estimate``."""

    runs: int = 0  # training runs: the baseline, the iterations, calibration and the audit's share
    time_s: float = 0.0  # the time budget of each
    slots: int = 1
    devices_per_run: int = 1
    gpu_hours: float = 0.0  # runs × time budget × devices per run
    gpu_hours_max: float = 0.0  # with every run's start-up grace
    wall_hours: float = 0.0  # runs × (time budget) / slots
    calls: dict[str, int] = {}  # level -> LLM calls
    tokens: dict[str, int] = {}  # level -> LLM tokens (prompt at its budget, reply at its limit)
    usd: float | None = None  # None: no price known for the model
    price: str = ""  # where the price came from, or why there is none
    limits: dict[str, float] = {}  # the caps in force, as [budget] keys
    notes: list[str] = []


class SpendWarning(Event, tag="spend_warning"):
    """A share (50 %, 80 %) of a cap is spent; once per cap value, so a raised cap warns again."""

    scope: SpendScope = "total"
    resource: SpendResource = "usd"
    fraction: float = 0.5
    spent: float = 0.0
    cap: float = 0.0


class LimitsChanged(Event, tag="limits_changed"):
    """The caps and the stuck-loop rule now in force (every one named; a cap not named is unset)."""

    limits: dict[str, float] = {}
    source: str = "user"  # user | resume


class ParamFrozen(Event, tag="param_frozen"):
    name: str = ""
    reason: str = ""
    source: FreezeSource = "user"
    # "" freezes the whole parameter; else one direction (core/services/schema.py): "up", "down", "→VALUE"
    direction: str = ""


class ParamUnfrozen(Event, tag="param_unfrozen"):
    name: str = ""
    reason: str = ""
    source: FreezeSource = "user"
    direction: str = ""  # "" unfreezes the whole parameter; else that one direction


# --- LLM calls ------------------------------------------------------------------


class LLMRequest(Event, tag="llm_request"):
    call_id: str = ""
    level: Level = "inner"
    purpose: str = ""
    iteration: int | None = None
    model: str = ""
    artifact: str = ""  # the raw request messages


class LLMDelta(Event, tag="llm_delta"):
    call_id: str = ""
    level: Level = "inner"
    kind: DeltaKind = "content"  # reset: the call is retried, discard its text so far
    text: str = ""


class LLMResponse(Event, tag="llm_response"):
    call_id: str = ""
    level: Level = "inner"
    ok: bool = True
    artifact: str = ""  # the raw reply text (and reasoning)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float = 0.0
    attempts: int = 1
    error: str = ""
    finish_reason: str = ""  # stop | length | ... as the server said; "" when it said nothing
    max_tokens: int | None = None  # the limit the request carried


class LLMRetry(Event, tag="llm_retry"):
    """One failed attempt of a call that is tried again (timeouts included)."""

    call_id: str = ""
    level: Level = "inner"
    attempt: int = 1
    kind: str = ""  # the LLMError kind: timeout, connection, rate_limit, server, ...
    error: str = ""
    delay_s: float = 0.0


class StructuredOutput(Event, tag="structured_output"):
    """The response_format in force for this session's LLM calls; again only when it changes."""

    mode: StructuredMode = "json_schema"
    configured: str = "auto"
    reason: str = ""


class EndpointChecked(Event, tag="endpoint_checked"):
    """The check before the baseline passed: what the endpoint's context is and where that was learned.

    ``context_tokens``: the context the levels' prompt budgets use from here on (0: unknown, none set);
    ``applied``: it came from the server and replaces (or lowers) endpoint.context_tokens for this session.
    ``server_tokens``/``estimated_tokens``: the short call's prompt as the server counted it and as we did.
    """

    context_tokens: int = 0
    source: str = ""  # "llama.cpp /props", "vLLM /v1/models", "configured", "a prompt as long as the longest"
    applied: bool = False
    needed_tokens: int = 0  # the smallest context this run's prompts and replies fit in
    server_tokens: int = 0
    estimated_tokens: int = 0
    duration_s: float = 0.0
    note: str = ""


class ReplyRejected(Event, tag="reply_rejected"):
    """A Level 1.5 or Level 2 reply that did not answer what was asked; re-asked within a limit."""

    level: Level = "strategy"
    purpose: str = ""
    call_id: str = ""
    attempt: int = 1
    kind: RejectionKind = "wrong_fields"
    reason: str = ""
    raw: str = ""


# --- one iteration of Level 1 ------------------------------------------------------


class IterationStarted(Event, tag="iteration_started"):
    iteration: int = 0  # 0 is the baseline


class ProposalMade(Event, tag="proposal_made"):
    iteration: int = 0
    attempt: int = 1
    changes: Change = NO_CHANGE
    hypothesis: str = ""
    source: str = "llm"  # the proposer (open-ended: see the note at the top)
    call_id: str = ""
    # What the proposer saw (parallel trials): the finished iterations whose results it was given,
    # and the trials then running with results unknown. Replay explains every decision from these.
    saw_results: list[int] = []
    saw_running: list[int] = []

    def __post_init__(self) -> None:
        _typed_changes(self)


class ProposalRejected(Event, tag="proposal_rejected"):
    iteration: int = 0
    attempt: int = 1
    kind: RejectionKind = "invalid"
    reason: str = ""
    errors: list[str] = []
    changes: Change = NO_CHANGE
    raw: str = ""  # the reply, truncated, for unparseable ones
    mechanism: str = ""

    def __post_init__(self) -> None:
        _typed_changes(self)


class TrainingStarted(Event, tag="training_started"):
    iteration: int = 0
    script: str = ""  # artifact: train.py as run
    diff: str = ""  # artifact: diff against the best so far
    slot: str = ""
    budget_s: float = 0.0
    seed: int | None = None  # the data-order seed this run used (BILEVEL_SEED)
    node: str = ""  # the Ray node it ran on ("" locally)
    attempt: int = 1  # a run lost to the infrastructure (a node gone) is re-run as the next attempt


class TrainingProcess(Event, tag="training_process"):
    """The process a training run started: resume ends what carries its tag before anything else.

    The tag is derived from the run (core/record/processes.py), so the line is the same in two
    runs of a session; the pid and process group, which the machine decides, are in the
    session's processes.jsonl under this tag (logs written before that carry them here).
    """

    iteration: int = 0
    tag: str = ""  # BILEVEL_RUN_TAG in the environment of the script and all it starts
    attempt: int = 1
    seed: int | None = None  # an extra run's (confirmation, noise) seed; None for the iteration's own run


class DataPrepared(Event, tag="data_prepared"):
    """The data a session trains on, once prepared (after session_started, which is written first)."""

    data: dict[str, Any] = {}


class TrainingProgress(Event, tag="training_progress"):
    iteration: int = 0
    step: int | None = None
    percent: float | None = None
    loss: float | None = None
    tok_per_s: float | None = None
    mfu: float | None = None
    remaining_s: float | None = None
    phase: ProgressPhase | None = None  # None: the line said too little to tell


class TrainingOutput(Event, tag="training_output"):
    iteration: int = 0
    stream: Stream = "stdout"
    line: str = ""


class TrainingFinished(Event, tag="training_finished"):
    iteration: int = 0
    outcome: TrainingOutcome = "ok"
    val_bpb: float | None = None  # only for ok: a crash is never a number
    metrics: dict[str, float] = {}
    exit_code: int | None = None
    duration_s: float = 0.0
    reason: str = ""
    error_tail: str = ""
    log: str = ""  # artifact
    worker: WorkerKind = "fresh"  # its own process, or an iteration of a warm worker
    # Who failed, for a run that did not finish: the script (a crash, an OOM in its own code) or the
    # infrastructure (a node lost, a worker killed from outside): only the latter is re-run.
    failure: FailureClass = ""
    node: str = ""
    attempt: int = 1


class TrustedEvaluation(Event, tag="trusted_evaluation"):
    """Code scope: the trusted evaluation of a run's exported model (its own walled process), after its training.

    ``val_bpb`` is the score that counts (None: the run has none, ``reason`` says why: a model that is
    not causal, none exported, an evaluation that failed); ``script_val_bpb`` is what the script printed
    itself, kept for the record and never used."""

    iteration: int = 0
    attempt: int = 1
    val_bpb: float | None = None
    causal: bool = False
    reason: str = ""
    script_val_bpb: float | None = None
    training_s: float = 0.0  # the engine's clock over the training process
    duration_s: float = 0.0  # the evaluation's own time
    wall: str = ""  # what the evaluation's wall said was in force


class SlotInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One place a trial can run: a GPU (by index and UUID), a CPU slot, or a Ray cluster's GPU."""

    name: str  # what events and the app call it: "gpu0", "cpu1", "ray:gpu3"
    devices: str = ""  # CUDA_VISIBLE_DEVICES for it ("" on CPU)
    uuid: str = ""
    memory_total_mb: float | None = None
    skipped: str = ""  # why it is not used (another user's memory on it): shown, never trained on


class SlotsConfigured(Event, tag="slots_configured"):
    """The slots this run trains on, decided once per start (resume may find others)."""

    executor: str = "local"  # the executor's registry name: local, ray, or a plugin's (open-ended)
    slots: list[SlotInfo] = []
    address: str = ""  # the Ray cluster joined


class SlotSample(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    utilisation: float | None = None  # percent, from NVML
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None


class SlotsSampled(Event, tag="slots_sampled"):
    """GPU use per slot, sampled through NVML every few seconds while trials run (never on CPU)."""

    samples: list[SlotSample] = []


class IterationFinished(Event, tag="iteration_finished"):
    """The verdict on one iteration; folding these gives the trace and the best config."""

    iteration: int = 0
    decision: Decision = "baseline"
    changes: Change = NO_CHANGE
    hypothesis: str = ""
    val_bpb: float | None = None
    best_before: float | None = None
    best_after: float | None = None
    rule: str = ""  # which acceptance rule decided, with its numbers
    reason: str = ""
    outcome: TrainingOutcome | Literal[""] = ""  # when it trained
    script: str = ""  # artifact of the script evaluated
    values: dict[str, Any] = {}  # full parameter values evaluated
    duration_s: float = 0.0
    source: str = ""  # the proposer (open-ended: see the note at the top)
    mechanisms: dict[str, dict[str, int]] = {}  # hook calls per mechanism
    # The numbers the acceptance rule used: best, threshold, noise floor, margin, confirmation runs.
    acceptance: dict[str, Any] = {}
    error_tail: str = ""  # a crashed run's last log lines: shown to the next proposal, kept for resume

    def __post_init__(self) -> None:
        _typed_changes(self)


class IterationInterrupted(Event, tag="iteration_interrupted"):
    """The iteration was cut short (stop, Ctrl-C, a killed process); it is re-run on resume."""

    iteration: int = 0
    reason: str = ""


# --- search mechanisms ------------------------------------------------------------


class MechanismActivated(Event, tag="mechanism_activated"):
    name: str = ""
    origin: Origin = "builtin"
    hooks: list[str] = []  # hooks it overrides
    artifact: str = ""  # its source
    description: str = ""


class MechanismDeactivated(Event, tag="mechanism_deactivated"):
    name: str = ""
    reason: str = ""
    hook: str = ""  # the hook that failed, if any
    calls: dict[str, int] = {}  # hook calls over its lifetime


class MechanismEffect(Event, tag="mechanism_effect"):
    """Proof that an active mechanism changed what the loop did."""

    iteration: int = 0
    name: str = ""
    hook: str = ""
    effect: Effect = "prompt"
    detail: str = ""


# --- Level 1.5: search strategy -------------------------------------------------------


class StrategyStarted(Event, tag="strategy_started"):
    cycle: int = 0
    after_iteration: int = 0


class StrategyDecision(Event, tag="strategy_decision"):
    """One Level 1.5 cycle's verdict; each applied freeze/unfreeze also gets its own event."""

    cycle: int = 0
    source: LevelSource = "llm"
    diagnosis: str = ""
    reasoning: str = ""
    guidance: str = ""
    candidates: list[str] = []  # the freeze rule's candidates
    freeze: list[str] = []  # applied
    unfreeze: list[str] = []  # applied
    refused: dict[str, str] = {}  # requested but refused: name -> why
    stats: dict[str, dict[str, Any]] = {}  # per-parameter statistics used
    error: str = ""
    kept: dict[str, str] = {}  # freeze candidates the LLM kept active: name -> its reason
    attempts: int = 1  # replies asked for, re-asks included


# --- Level 2: mechanism research ----------------------------------------------------


class ResearchStarted(Event, tag="research_started"):
    research_id: str = ""
    cycle: int = 0
    after_iteration: int = 0
    source: ResearchSource = "llm"


class ResearchRound(Event, tag="research_round"):
    """A finished round of the dialogue; its tokens streamed as LLMDelta events with call_id."""

    research_id: str = ""
    round: ResearchRoundName = "explore"
    call_id: str = ""
    artifact: str = ""  # the round's full text
    summary: str = ""


class MechanismValidated(Event, tag="mechanism_validated"):
    research_id: str = ""
    name: str = ""
    attempt: int = 1
    ok: bool = False
    failure: str = ""
    steps: list[dict[str, Any]] = []  # name, ok, detail
    missing_packages: list[str] = []
    source: str = ""  # artifact: the module
    diff: str = ""  # artifact: diff against the previous active set
    report: str = ""  # artifact: the validation report (Markdown)
    duplicate_of: str = ""  # the active mechanism it is identical to (in source or behaviour): then not offered


class MechanismPending(Event, tag="mechanism_pending"):
    """A validated mechanism waits for the user's approval (level2.approval = "manual")."""

    research_id: str = ""
    name: str = ""
    source: str = ""
    diff: str = ""
    report: str = ""


class MechanismApproved(Event, tag="mechanism_approved"):
    """The user approved a pending mechanism; it activates at the boundary before ``activates_at``."""

    research_id: str = ""
    name: str = ""
    activates_at: int = 0  # the first iteration it runs in


class ResearchFinished(Event, tag="research_finished"):
    research_id: str = ""
    outcome: ResearchOutcome = "failed"
    name: str = ""
    reason: str = ""


# --- mechanism evidence: the pre-screen on the surrogate bench, before activation -------


class PrescreenStarted(Event, tag="prescreen_started"):
    """A validated mechanism's paired short searches on the surrogate begin (off the training slots)."""

    research_id: str = ""
    name: str = ""
    source_key: str = ""  # mechanisms.sandbox.fingerprint.source_key of its source: the ledger's key
    repeats: int = 0
    iterations: int = 0
    proposer: str = "offline"  # the bench always proposes offline (free): an LLM pre-screen would cost calls
    mode: PrescreenMode = "gate"


class MechanismPrescreened(Event, tag="mechanism_prescreened"):
    """The paired effect of a mechanism on the surrogate's final best, and what it did there.

    ``effect``: mean over the repeats of (best with it − best without it), in val_bpb; positive
    is harm (lower is better). ``ci_low``/``ci_high``: its percentile-bootstrap interval; ``p_value``:
    the exact sign-flip permutation test of the paired differences. ``verdict``: "harmful" when the
    whole interval lies on the worse side, "failed" when it never ran there, "skipped" when the
    surrogate does not model the session's parameters, else "passed".
    """

    research_id: str = ""
    name: str = ""
    source_key: str = ""
    source: str = ""  # artifact: the module screened
    mode: PrescreenMode = "gate"
    verdict: PrescreenVerdict = "passed"
    reason: str = ""
    proposer: str = "offline"
    workload: str = ""  # e.g. "surrogate h100"
    repeats: int = 0
    iterations: int = 0
    seeds: list[int] = []
    with_best: list[float | None] = []  # final best per repeat, with the mechanism
    without_best: list[float | None] = []  # the same seeds without it
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    side_effects: dict[str, int] = {}  # vetoed, modified, overrode, prompt, rejected, crashes, deactivated
    baseline_side_effects: dict[str, int] = {}  # rejected and crashes without it, for comparison
    unmodelled: list[str] = []  # the session's searchable parameters the surrogate does not have
    wall_s: float = 0.0


# --- noise floor and acceptance ------------------------------------------------------


class NoiseStarted(Event, tag="noise_started"):
    """A noise measurement: the unchanged baseline, run once per seed."""

    runs: int = 0
    seeds: list[int] = []
    fingerprint: str = ""  # script + corpus + hardware: the floor applies only where this matches
    hardware: str = ""
    script_sha256: str = ""  # of the baseline as evaluated, seed constants normalised
    dataset_id: str = ""
    seed_note: str = ""  # set when the script fixes its own seed: what the runs can and cannot vary


class NoiseRunFinished(Event, tag="noise_run_finished"):
    run: int = 0
    seed: int = 0
    outcome: TrainingOutcome = "ok"
    val_bpb: float | None = None
    duration_s: float = 0.0
    reason: str = ""


class NoiseMeasured(Event, tag="noise_measured"):
    """The spread of val_bpb over seeds; saved as the noise floor for the fingerprint."""

    fingerprint: str = ""
    hardware: str = ""
    seeds: list[int] = []  # of the successful runs
    values: list[float] = []
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof = 1): the noise floor σ
    mad: float | None = None  # median absolute deviation (unscaled)
    failed: int = 0  # runs without a score (excluded)
    store: str = ""  # where the floor was saved


class AcceptanceConfigured(Event, tag="acceptance_configured"):
    """The keep/discard rule in force for this run, with the noise floor it found."""

    rule: AcceptanceRule | Literal[""] = ""
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
    seed_params: list[str] = []  # seed constants locked (or tunable) in the script
    seed_note: str = ""  # set when the script fixes its own seed: what a confirmation can vary
    k: float = 0.0  # the margin in σ the rule uses (0: any improvement beyond min_delta)
    sigma_source: SigmaSource = ""  # where noise_std came from
    mode: Literal["", "default", "paper"] = ""  # acceptance.rule


class ConfirmationStarted(Event, tag="confirmation_started"):
    """A candidate new best is re-run with another seed before it may be kept."""

    iteration: int = 0
    seed: int = 0
    first_val_bpb: float | None = None
    best: float | None = None


# --- the evidence loop: the noise floor at session start and the keep-chain audit --------
# Runs outside the search (calibration, audit) train under negative run numbers, handed out
# in the order their plans were recorded, so a resume finds each one's result by number.


class CalibrationStarted(Event, tag="calibration_started"):
    """acceptance.calibrate = n: the unchanged baseline on n fresh seeds, before the search."""

    runs: list[int] = []  # run numbers (negative), one per seed
    seeds: list[int] = []


class CalibrationRunFinished(Event, tag="calibration_run_finished"):
    run: int = 0
    seed: int = 0
    outcome: TrainingOutcome = "ok"
    val_bpb: float | None = None
    reason: str = ""


class NoiseCalibrated(Event, tag="noise_calibrated"):
    """σ and the baseline's mean over the calibration seeds (std None: too few runs scored)."""

    seeds: list[int] = []
    values: list[float] = []
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof = 1)
    mad: float | None = None
    failed: int = 0
    reason: str = ""


class NoiseDeclared(Event, tag="noise_declared"):
    """The script declared its own σ in its summary (``noise_sigma:``; the surrogate does)."""

    std: float = 0.0
    iteration: int = 0  # the run whose summary said it


class SeedFixed(Event, tag="seed_fixed"):
    """The script fixes its own seed: runs on "other seeds" differ only by jitter. Said loudly, with the rule
    that applies instead."""

    note: str = ""
    consequence: str = ""


class AuditRun(msgspec.Struct, frozen=True, kw_only=True):
    """One planned run of an audit: a configuration on one seed."""

    run: int  # run number (negative)
    config: str  # "baseline", "best", "without #7", "proposed"
    seed: int
    values: dict[str, Any] = {}
    # search.scope = "code": the kept edit blocks in force for this configuration, in the order they were kept
    edits: list[EditBlock] = []


class AuditPlanned(Event, tag="audit_planned"):
    """A keep-chain audit and its cost, recorded before any of its runs starts."""

    audit: int = 0  # 1, 2, … within the session
    trigger: Literal["end", "command"] = "end"
    repeats: int = 0
    chain: list[int] = []  # every keep of the search when it was planned, in order
    keeps: list[int] = []  # the keeps it measures (largest first)
    unaudited: list[int] = []  # keeps the share did not cover
    superseded: list[int] = []  # keeps a later keep overwrote entirely (nothing to leave out)
    runs: list[AuditRun] = []
    estimated_s: float = 0.0  # runs × the time budget
    allowance: int | None = None  # runs the share allows (None: on demand, every keep)


class AuditSkipped(Event, tag="audit_skipped"):
    audit: int = 0
    chain: list[int] = []  # the keeps it would have measured
    reason: str = ""


class AuditRunFinished(Event, tag="audit_run_finished"):
    audit: int = 0
    run: int = 0
    config: str = ""
    seed: int = 0
    outcome: TrainingOutcome = "ok"
    val_bpb: float | None = None
    reason: str = ""


class AuditVerdict(Event, tag="audit_verdict"):
    """One keep: the best without it minus the best, over paired seeds (positive: the keep helped)."""

    audit: int = 0
    iteration: int = 0  # the keep
    changes: Change = NO_CHANGE  # the keep's change (its constants), left out in the audit
    recorded_gain: float | None = None  # what the search credited it with (best before − its val_bpb)
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    pairs: int = 0
    verdict: AuditVerdictKind = "within noise"

    def __post_init__(self) -> None:
        _typed_changes(self)


class AuditProposed(Event, tag="audit_proposed"):
    """The best without the keeps that did not hold, and its runs (none when every keep held)."""

    audit: int = 0
    dropped: list[int] = []
    values: dict[str, Any] = {}
    runs: list[AuditRun] = []


class AuditFinished(Event, tag="audit_finished"):
    audit: int = 0
    status: AuditStatus = "completed"
    baseline_mean: float | None = None
    best_mean: float | None = None
    gain: float | None = None  # best − baseline over paired seeds (negative: the search helped)
    gain_ci_low: float | None = None
    gain_ci_high: float | None = None
    proposed_mean: float | None = None
    dropped: list[int] = []
    reason: str = ""

# --- app-side helpers (never written to a log) ---------------------------------------


# --- endpoint outages: a failing endpoint pauses the call that met it, never burns an iteration ---

# unreachable: a transport failure past the client's retries; unusable: replies of the wrong shape in a row
OutageCause = Literal["unreachable", "unusable"]


class EndpointDown(Event, tag="endpoint_down"):
    """A call found the endpoint down: it waits, probing, instead of failing (the event's ts is "since")."""

    call_id: str = ""
    level: Level = "inner"
    cause: OutageCause = "unreachable"
    kind: str = ""  # the LLMError kind of the failure, or "unusable"
    reason: str = ""


class EndpointProbe(Event, tag="endpoint_probe"):
    """A probe of a down endpoint failed (or the first wait begins); the next one in ``delay_s``."""

    call_id: str = ""
    level: Level = "inner"
    probe: int = 0  # probes sent so far for this call
    kind: str = ""
    error: str = ""
    delay_s: float = 0.0


class EndpointUp(Event, tag="endpoint_up"):
    """The endpoint answered a waiting call usably: the run goes on by itself."""

    call_id: str = ""
    level: Level = "inner"
    probes: int = 0
    down_s: float = 0.0


class EndpointWaitEnded(Event, tag="endpoint_wait_ended"):
    """A waiting call gave up because the run stopped or ended; its iteration is interrupted, not used up."""

    call_id: str = ""
    level: Level = "inner"
    reason: str = ""


class MergedDeltas(LLMDelta, tag="llm_delta_merged"):
    """A run of consecutive deltas of one call handed over as one (a replay jump); ``merged`` counts them."""

    merged: int = 1


def _typed_changes(event: Event) -> None:
    """A plain name -> value mapping given as ``changes`` (an older log, an older caller) is a ParamChange."""
    changes = event.changes  # type: ignore[attr-defined]
    if type(changes) is not ParamChange and type(changes) is not CodeEdit:
        msgspec.structs.force_setattr(event, "changes", as_change(changes))


# --- the registry, the codec ------------------------------------------------------------

_NOT_LOGGED = (UnknownEvent, MergedDeltas)


def all_subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls``, depth first: the members of a tagged union (events, commands)."""
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(all_subclasses(sub))
    return out


_REGISTRY: dict[str, type[Event]] = {}
for _cls in all_subclasses(Event):
    _cls.type = _cls.__struct_config__.tag  # type: ignore[misc]
    if _cls not in _NOT_LOGGED:
        if _cls.type in _REGISTRY:
            raise TypeError(f"event type {_cls.type!r} registered twice")
        _REGISTRY[_cls.type] = _cls

AnyEvent = Union[tuple(_REGISTRY.values())]  # type: ignore[valid-type]
_DECODER = msgspec.json.Decoder(AnyEvent)
_ENCODER = msgspec.json.Encoder()
_UNIONS = (Union, types.UnionType)
_NONFINITE_TEXT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
                   "-infinity": -math.inf, "+inf": math.inf}


def event_types() -> dict[str, type[Event]]:
    """Every event type a log may hold, by its ``type`` name."""
    return dict(_REGISTRY)


def _literal_checks(cls: type) -> tuple[tuple[str, frozenset[Any]], ...]:
    hints = typing.get_type_hints(cls)
    checks = []
    for name in cls.__struct_fields__:
        values = _literal_values(hints[name])
        if values:
            checks.append((name, frozenset(values)))
    return tuple(checks)


def _literal_values(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in _UNIONS:
        args = typing.get_args(tp)
        if all(typing.get_origin(a) is Literal for a in args):
            return [v for a in args for v in typing.get_args(a)]
    return []


def _literal_guard(cls: type) -> Any:
    """A fast test that an event's fixed-set fields hold listed values (the writer calls it per event)."""
    checks = _literal_checks(cls)
    if not checks:
        return None
    get = operator.attrgetter(*(name for name, _ in checks))
    allowed = tuple(values for _, values in checks)
    if len(checks) == 1:
        only = allowed[0]
        return lambda event: get(event) in only
    if len(checks) == 2:
        first, second = allowed
        return lambda event: (v := get(event))[0] in first and v[1] in second

    def every(event: Event) -> bool:
        for value, values in zip(get(event), allowed):
            if value not in values:
                return False
        return True
    return every


_GUARDS = {cls: _literal_guard(cls) for cls in _REGISTRY.values()}


def _refuse(event: Event) -> typing.NoReturn:
    for name, allowed in _literal_checks(type(event)):
        if getattr(event, name) not in allowed:
            raise EventEncodeError(f"{event.type}.{name} = {getattr(event, name)!r} is not one of "
                                   f"{sorted(allowed)}: add it to core/record/events.py")
    raise AssertionError("unreachable")  # pragma: no cover


def encode(event: Event) -> bytes:
    """One log line (without the newline) that :func:`decode` reads back equal."""
    cls = type(event)
    if cls is UnknownEvent:
        return _stdlib_line({"seq": event.seq, "ts": event.ts, "type": event.name, **event.data})
    guard = _GUARDS.get(cls)
    if guard is not None and not guard(event):
        _refuse(event)
    line = _ENCODER.encode(event)
    if b"null" in line:  # a None, or a non-finite float msgspec wrote as null
        data = msgspec.to_builtins(event)
        if _has_nonfinite(data):
            return _stdlib_line(data)
    return line


def _stdlib_line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


def to_json(event: Event) -> str:
    return encode(event).decode("utf-8")


def to_dict(event: Event) -> dict[str, Any]:
    """Plain data (non-finite floats stay floats) that :func:`from_dict` reads back equal."""
    if isinstance(event, UnknownEvent):
        return {"seq": event.seq, "ts": event.ts, "type": event.name, **event.data}
    return msgspec.to_builtins(event)


def decode(line: bytes | str) -> Event:
    """The event of one log line; :class:`EventDecodeError` says what is wrong with a bad one."""
    try:
        return _DECODER.decode(line)
    except msgspec.DecodeError:
        pass  # an unknown type, an old "nan" string, a NaN token, or a real error: the careful path says which
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    return from_dict(data)


from_json = decode


def from_dict(data: Any) -> Event:
    """The event of plain data (a parsed log line); checks types like :func:`decode`."""
    if not isinstance(data, dict):
        raise EventDecodeError(f"an event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        rest = {k: v for k, v in data.items() if k not in ("seq", "ts", "type")}
        head = _convert({"seq": data.get("seq", 0), "ts": data.get("ts", 0.0), "type": "unknown_event"}, UnknownEvent)
        return UnknownEvent(seq=head.seq, ts=head.ts, name=str(kind), data=rest)
    return _convert(_upgrade_old_shape(cls, _revive_old_floats(cls, data)), cls)


def _upgrade_old_shape(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """An older log's ``changes`` (a plain parameter -> value mapping) as the tagged change it means."""
    changes = data.get("changes")
    if "changes" not in cls.__struct_fields__ or not isinstance(changes, dict) or is_tagged(changes):
        return data  # the tagged shape (or not a mapping at all): msgspec checks it and says what is wrong
    return {**data, "changes": msgspec.to_builtins(ParamChange(params=changes))}


def _convert(data: dict[str, Any], cls: type[Event]) -> Any:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"{data.get('type')}: {exc}") from None


# Older writers put non-finite floats in as the strings "nan"/"inf": where the field holds floats, read them back.
_FLOATY: dict[type, dict[str, Any]] = {}


def _float_fields(cls: type) -> dict[str, Any]:
    found = _FLOATY.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FLOATY[cls] = {n: hints[n] for n in cls.__struct_fields__ if _may_hold_float(hints[n])}
    return found


def _may_hold_float(tp: Any) -> bool:
    if tp is float:
        return True
    return any(_may_hold_float(a) for a in typing.get_args(tp) if a is not str)


def _revive_old_floats(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    fields = _float_fields(cls)
    out = None
    for name, tp in fields.items():
        if name in data:
            value = _revive(tp, data[name])
            if value is not data[name]:
                out = out if out is not None else dict(data)
                out[name] = value
    return out if out is not None else data


def _revive(tp: Any, value: Any) -> Any:
    if isinstance(value, str):
        if _accepts_float(tp) and value.strip().lower() in _NONFINITE_TEXT:
            return _NONFINITE_TEXT[value.strip().lower()]
        return value
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) in (dict, list) or arg is float:
                revived = _revive(arg, value)
                if revived is not value:
                    return revived
        return value
    if origin is dict and isinstance(value, dict):
        inner = typing.get_args(tp)[1]
        revived = {k: _revive(inner, v) for k, v in value.items()}
        return revived if any(revived[k] is not value[k] for k in value) else value
    if origin is list and isinstance(value, list):
        inner = typing.get_args(tp)[0]
        revived_list = [_revive(inner, v) for v in value]
        return revived_list if any(a is not b for a, b in zip(revived_list, value)) else value
    return value


def _accepts_float(tp: Any) -> bool:
    return tp is float or (typing.get_origin(tp) in _UNIONS and float in typing.get_args(tp))

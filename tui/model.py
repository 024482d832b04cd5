"""What the app shows: the run's state from the one fold, plus the views only a screen needs.

Everything about the run (trace rows with their live phase, tokens, active mechanisms,
the budget in force, approvals waiting, freezes and who made them) is
:class:`core.record.state.RunState`'s, the same fold the engine, resume and the report use;
this module keeps what is about showing it: strategy cycles as cards, research dialogues
as Markdown streamed by call id, the patch list, the event log's lines, the user's
not-yet-acknowledged pause, and which parts of the screen an event made stale, so the app
repaints at a fixed rate only what changed. No Textual import here: the model is plain
data, tested and benchmarked on its own. Slots and per-trial detail are
:mod:`tui.model_trials`'s. Over ~500 lines because it is one small handler per event type
that changes a view, next to the properties the panes read.
"""
from __future__ import annotations

import io
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.record import events as ev
from core.record.change import NO_CHANGE
from core.record.safe_events import safe_event
from core.analysis.printer import HeadlessPrinter
from core.analysis.spend_text import warning_line
from core.record.state import IterationTrace, ParamChange, RunState
from tui.model_trials import TrialBoard, TrialView
from tui.dialogue import (CHUNK_CHARS, LLMCall, ResearchView, chunk_markdown, dialogue_parts,  # noqa: F401
                          reasoning_text, round_counters)

LOG_LINES = 1000  # event-log lines kept in memory (the session file has them all)

# Parts of the screen an event can make stale.
HEADER, TRACE, PLOT, PROGRESS, STRATEGY, PARAMS, RESEARCH, PATCHES, LOG, SLOTS = (
    "header", "trace", "plot", "progress", "strategy", "params", "research", "patches", "log", "slots")
ALL_PARTS = frozenset({HEADER, TRACE, PLOT, PROGRESS, STRATEGY, PARAMS, RESEARCH, PATCHES, LOG, SLOTS})


@dataclass
class StrategyCycle:
    cycle: int
    after_iteration: int
    ts: float
    decision: ev.StrategyDecision | None = None
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (freeze|unfreeze, name, reason)
    guidance_not_applied: ev.GuidanceNotApplied | None = None  # its guidance lost to the user's pinned one


OUTCOME_MARKS = {"declined": "⊘", "expired": "⌛", "rejected": "⊘", "dropped": "⊘", "failed": "✗"}


@dataclass
class PatchEntry:
    """Something the patch viewer can show: a train.py diff or a mechanism's source."""

    key: str
    kind: str  # iteration | mechanism
    label: str
    artifact: str  # the diff (iterations) or the module source (mechanisms)
    iteration: int | None = None
    diff: str = ""  # mechanisms: diff against the previous version
    report: str = ""  # mechanisms: the validation report (Markdown)
    ok: bool | None = None
    research_id: str = ""
    outcome: str = ""  # mechanisms from research: how it ended (activated, declined, expired, ...)


class ViewModel:
    """Folds events into what the panes show and remembers which parts went stale."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = RunState()
        self.trials = TrialBoard()  # slots and per-trial detail: parallel trials, the detail view
        self.events = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.cycles: list[StrategyCycle] = []
        self.calls: dict[str, LLMCall] = {}
        self.research: dict[str, ResearchView] = {}
        self.research_order: list[str] = []
        self.patches: dict[str, PatchEntry] = {}
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.new_log: list[str] = []
        self.log_reset = True
        self.dirty: set[str] = set(ALL_PARTS)
        self.dirty_rows: set[int] = set()
        self.dirty_params: bool = True
        self.local_pause: bool | None = None  # the user asked to pause (True) / resume (False), not yet seen
        self.acks: list[ev.CommandReceived] = []  # acknowledgements not yet shown to the user
        self.limit_notices: list[tuple[str, str]] = []  # (title, text): spend warnings, a limit's pause, not yet shown
        self.stopping = False  # the engine accepted a stop and has not finished yet
        self._printer = HeadlessPrinter(out=io.StringIO(), progress_every_s=math.inf)

    # --- folding -------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> None:
        event = safe_event(event, block=True)  # every pane shows only cleaned text (newlines kept)
        self.state.apply(event)
        self.events += 1
        if event.ts:
            if self.first_ts is None:
                self.first_ts = event.ts
            self.last_ts = event.ts
        if self.trials.apply(event):
            self.dirty.add(SLOTS)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        else:
            self.dirty.add(HEADER)
        if not isinstance(event, (ev.TrainingProgress, ev.LLMDelta, ev.TrainingOutput)):
            self._log(event)

    def apply_all(self, events: list[ev.Event]) -> None:
        for event in events:
            self.apply(event)

    def take_dirty(self) -> tuple[set[str], set[int], bool]:
        """The stale parts, rows and parameter table since the last call (and forget them)."""
        parts, rows, params = self.dirty, self.dirty_rows, self.dirty_params
        self.dirty, self.dirty_rows, self.dirty_params = set(), set(), False
        return parts, rows, params

    def take_log(self) -> tuple[bool, list[str]]:
        """(whether the log must be redrawn from ``self.log``, the lines added since)."""
        reset, lines = self.log_reset, self.new_log
        self.log_reset, self.new_log = False, []
        return reset, lines

    def _log(self, event: ev.Event) -> None:
        line = self._printer.format(event)
        if isinstance(event, ev.MechanismPending):  # the printer's words are for a headless run; here it is v
            line = f"Level 2 {event.research_id}: {event.name} waits for your approval: press v{self.expiry_text()}"
        if not line:
            return
        stamp = _clock(event.ts - self.first_ts) if self.first_ts is not None and event.ts else "--:--"
        # one stamped line per line: a format's second line (a note, a seed warning) is an event's too
        for i, part in enumerate(line.split("\n")):
            text = f"{stamp}  {part}" if i == 0 else f"{stamp}    {part}"
            self.log.append(text)
            self.new_log.append(text)
        if len(self.new_log) > LOG_LINES:
            self.new_log = self.new_log[-LOG_LINES:]
            self.log_reset = True
        self.dirty.add(LOG)

    def touch(self, iteration: int) -> None:
        """The trace row of ``iteration`` changed."""
        self.dirty_rows.add(iteration)
        self.dirty.add(TRACE)

    # --- what the header and panes read, from the run's state ----------------------------------

    @property
    def rows(self) -> dict[int, IterationTrace]:
        return self.state.iterations

    def row(self, n: int) -> IterationTrace | None:
        """Iteration ``n``'s trace row; a verdict the run's fold did not take (one that came after a
        later iteration's, from an engine older than the fold) is shown from the verdict itself."""
        row = self.state.iterations.get(n)
        trial = self.trials.trials.get(n)
        verdict = trial.verdict if trial is not None else None
        if row is None or row.final or verdict is None:
            return row
        shown = IterationTrace(**{**row.__dict__})
        shown.phase, shown.final = verdict.decision, True
        shown.changes = verdict.changes if verdict.changes != NO_CHANGE else shown.changes
        shown.hypothesis = verdict.hypothesis or shown.hypothesis
        shown.val_bpb, shown.best_before = verdict.val_bpb, verdict.best_before
        shown.duration_s, shown.reason, shown.outcome = verdict.duration_s, verdict.reason, verdict.outcome
        return shown

    def trial(self, n: int) -> TrialView | None:
        return self.trials.trials.get(n)

    @property
    def multi_slot(self) -> bool:
        """More than one slot trains: the slots pane shows, the trace has a slot column, in finish order."""
        return self.trials.multi

    @property
    def in_flight(self) -> list[int]:
        """Iterations training now (several with parallel trials)."""
        if self.trials.multi:
            return self.trials.in_flight
        it = self.training_iteration
        return [it] if it is not None else []

    @property
    def param_changes(self) -> list[ParamChange]:
        return self.state.param_changes

    @property
    def pending(self) -> dict[str, ev.MechanismPending]:
        """research id -> a validated mechanism waiting for approval."""
        return self.state.awaiting

    @property
    def approval_deadline(self) -> int | None:
        """The iteration whose proposal expires a pending approval (one at a time: the budget's last;
        it must come before then, or no iteration is left for the mechanism to run in)."""
        total = self.iterations_total
        if not self.pending or total is None or self.finished is not None or self.iterations_done >= total:
            return None  # nothing waits, or no boundary is left before which to approve (the engine expires it)
        return total

    def expiry_text(self) -> str:
        """`` before #N (k iterations left), or it expires`` for a pending approval; empty when unknown."""
        deadline = self.approval_deadline
        if deadline is None:
            return ""
        left = max(0, deadline - 1 - self.iterations_done)
        return f" before #{deadline} is proposed ({left} iteration{'s' if left != 1 else ''} left), or it expires"

    @property
    def active_mechanisms(self) -> dict[str, str]:
        """name -> origin of every active mechanism."""
        return {name: e.origin for name, e in self.state.mechanisms.items()}

    @property
    def finished(self) -> ev.RunFinished | None:
        return self.state.finished

    @property
    def slot(self) -> str:
        return self.state.slot

    @property
    def training_iteration(self) -> int | None:
        return self.state.training.iteration if self.state.training is not None else None

    @property
    def tokens_by_level(self) -> dict[str, int]:
        return {level: u.tokens for level, u in self.state.usage.items()}

    @property
    def status(self) -> str:
        """running | pausing… | paused | resuming… | completed | stopped | failed | waiting | endpoint down."""
        s = self.state
        if self.finished is not None and s.status in ("completed", "stopped", "failed"):
            return s.status
        if self.stopping:
            return "stopping…"
        if s.endpoint_down:  # a call waits out an outage: the run is paused by the endpoint, stop still works
            return "endpoint down"
        if s.paused:
            if self.local_pause is False:
                return "resuming…"
            return {"budget": "paused: cap", "stuck": "paused: stuck"}.get(s.pause_cause, "paused")
        if s.pause_requested or self.local_pause:
            return "pausing…"
        return "running" if s.session else "waiting"

    @property
    def grace_s(self) -> float | None:
        """The seconds a run may go past its budget before it is killed (the config's rule), None if unknown."""
        budget = self.state.config.get("budget") if isinstance(self.state.config, dict) else None
        if not isinstance(budget, dict) or "time_s" not in budget:
            return None
        from core.record.config import BudgetConfig

        try:
            return msgspec.convert({k: v for k, v in budget.items() if k in ("time_s", "grace_s")},
                                   BudgetConfig).deadline_grace_s
        except (msgspec.ValidationError, TypeError):
            return None  # a config this version cannot read: say nothing rather than something wrong

    @property
    def iterations_total(self) -> int | None:
        """The budget in force: a change by the user or by a resume counts."""
        return self.state.iterations_budget

    @property
    def iterations_done(self) -> int:
        if self.trials.multi:  # verdicts in finish order: counted as they came
            return sum(1 for n in self.trials.finish_order if n and self.trials.trials[n].verdict is not None
                       and self.trials.trials[n].verdict.decision != "interrupted")
        return self.state.iterations_done

    def verdict_counts(self) -> tuple[int, int]:
        """(iterations that trained, iterations whose proposal was rejected and never trained), the baseline
        and interrupted ones left out."""
        decisions = [r.decision for r in self.state.records if r.iteration > 0 and r.decision != "interrupted"]
        rejected = decisions.count("rejected")
        return len(decisions) - rejected, rejected

    def remaining_s(self, now: float | None) -> float | None:
        """Estimated seconds left: mean iteration time times the iterations still to run."""
        total = self.iterations_total
        durations = [r.duration_s for r in self.state.records if r.duration_s]
        if total is None or not durations or self.finished is not None:
            return None
        left = max(0, total - self.iterations_done)
        mean = sum(durations) / len(durations)
        estimate = left * mean
        training = self.state.training
        if training is not None and training.ts and now is not None:
            estimate -= min(mean, max(0.0, now - training.ts))
        return max(0.0, estimate)

    def best_points(self) -> list[tuple[int, float | None, str]]:
        """(iteration, val_bpb, decision) of every judged iteration in order; None for a run with no score
        (a crash, a cancelled run: the plot marks them)."""
        shown = (self.row(n) for n in sorted(self.rows))
        return [(r.iteration, r.val_bpb, outcome_label(r)) for r in shown if r is not None and r.final
                and (r.val_bpb is not None or r.phase != "rejected")]

    def research_parts(self, research_id: str) -> list[str]:
        """The research dialogue as Markdown parts in event order (see :func:`dialogue_parts`)."""
        view = self.research.get(research_id)
        return dialogue_parts(view, self.calls) if view is not None else []

    def research_reasoning(self, research_id: str) -> str:
        """The research session's reasoning deltas (thinking models), per round; empty when there are none."""
        view = self.research.get(research_id)
        return reasoning_text(view, self.calls)[0] if view is not None else ""

    def research_markdown(self, research_id: str) -> str:
        """The whole dialogue as one Markdown document."""
        return "\n\n".join(self.research_parts(research_id))

    def round_counters(self, research_id: str) -> list[tuple[str, int, str]]:
        """(round name, tokens, state) per round: state is done | streaming | failed."""
        view = self.research.get(research_id)
        return round_counters(view, self.calls) if view is not None else []


FAILURE_LABELS = {"timeout": "timeout", "oom": "out of mem", "diverged": "diverged", "no_metrics": "no metrics"}


def outcome_label(row: IterationTrace) -> str:
    """The trace's outcome word: a crash says what kind it was (a timeout or running out of memory
    is not a bug in the change, and a researcher reads them differently)."""
    if row.final and row.phase == "crash":
        return FAILURE_LABELS.get(row.outcome, "crash")
    return row.phase


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


# --- handlers: one per event type that changes a view ----------------------------------------


def _session_started(m: ViewModel, e: ev.SessionStarted) -> None:
    m.dirty |= {HEADER, STRATEGY, PARAMS}
    m.dirty_params = True


def _run_finished(m: ViewModel, e: ev.RunFinished) -> None:
    m.local_pause = None
    m.stopping = False
    for view in m.research.values():  # an older log may leave one waiting: the run's end expired it
        if view.finished is None and (view.pending is not None or view.approved is not None):
            view.pending = None
            view.finished = ev.ResearchFinished(research_id=view.research_id, outcome="expired",
                                                reason="the run ended before it was activated")
            view.segments.append(("text", "\n### Outcome: expired\n\nthe run ended before it was activated\n\n"))
            m.dirty.add(RESEARCH)
    m.dirty |= {HEADER, PROGRESS, STRATEGY}  # the guidance says no cycle will rewrite it any more


def _run_resumed(m: ViewModel, e: ev.RunResumed) -> None:
    m.stopping = False
    m.dirty.add(HEADER)


def _iteration_started(m: ViewModel, e: ev.IterationStarted) -> None:
    m.touch(e.iteration)
    m.dirty |= {HEADER, PROGRESS}


def _row_changed(m: ViewModel, e: ev.ProposalMade | ev.ProposalRejected | ev.MechanismEffect) -> None:
    m.touch(e.iteration)


def _training_started(m: ViewModel, e: ev.TrainingStarted) -> None:
    m.touch(e.iteration)
    m.dirty |= {HEADER, PROGRESS}
    if e.diff:
        key = f"it-{e.iteration:05d}"
        m.patches[key] = PatchEntry(key=key, kind="iteration", label=f"#{e.iteration} train.py",
                                    artifact=e.diff, iteration=e.iteration)
        m.dirty.add(PATCHES)


def _training_progress(m: ViewModel, e: ev.TrainingProgress) -> None:
    m.dirty.add(PROGRESS)


def _training_finished(m: ViewModel, e: ev.TrainingFinished) -> None:
    m.touch(e.iteration)
    m.dirty |= {PROGRESS, HEADER}


def _iteration_finished(m: ViewModel, e: ev.IterationFinished) -> None:
    m.touch(e.iteration)
    m.dirty |= {HEADER, PLOT, PROGRESS, PARAMS}
    m.dirty_params = True


def _interrupted(m: ViewModel, e: ev.IterationInterrupted) -> None:
    m.touch(e.iteration)
    m.dirty |= {HEADER, PROGRESS}


def _mechanism_activated(m: ViewModel, e: ev.MechanismActivated) -> None:
    if e.artifact and not any(p.artifact == e.artifact for p in m.patches.values()):
        key = f"mech-{len(m.patches):05d}-{e.name}"
        m.patches[key] = PatchEntry(key=key, kind="mechanism", label=f"{e.name} ({e.origin})",
                                    artifact=e.artifact, ok=True)
    m.dirty |= {HEADER, RESEARCH, PATCHES}


def _mechanism_deactivated(m: ViewModel, e: ev.MechanismDeactivated) -> None:
    m.dirty |= {HEADER, RESEARCH}


def _guidance(m: ViewModel, e: ev.GuidanceChanged) -> None:
    m.dirty |= {STRATEGY}


def _guidance_not_applied(m: ViewModel, e: ev.GuidanceNotApplied) -> None:
    cycle = next((c for c in reversed(m.cycles) if c.cycle == e.cycle), None)
    if cycle is not None:
        cycle.guidance_not_applied = e
    m.dirty |= {STRATEGY}


def _param_change(m: ViewModel, e: ev.ParamFrozen | ev.ParamUnfrozen) -> None:
    action = "freeze" if isinstance(e, ev.ParamFrozen) else "unfreeze"
    if e.source == "strategy" and m.cycles and m.cycles[-1].decision is None:
        m.cycles[-1].actions.append((action, f"{e.name} {e.direction}" if e.direction else e.name, e.reason))
    m.dirty |= {STRATEGY, PARAMS}
    m.dirty_params = True


def _pause_state(m: ViewModel, e: ev.Event) -> None:
    if isinstance(e, (ev.PauseRequested, ev.Paused)) and m.local_pause:
        m.local_pause = None
    if isinstance(e, ev.Unpaused):
        m.local_pause = None
    m.dirty.add(HEADER)


def _limit_notice(m: ViewModel, e: ev.Event) -> None:
    """A spend warning, or a pause a limit asked for: a toast, beside its line in the events pane."""
    if isinstance(e, ev.SpendWarning):
        m.limit_notices.append(("Budget", warning_line(e)))
    elif isinstance(e, ev.Paused) and e.cause != "user":
        m.limit_notices.append(("Paused by a spend cap" if e.cause == "budget" else "Paused: stuck loop", e.reason))
    del m.limit_notices[:-10]
    m.dirty.add(HEADER)


def _command(m: ViewModel, e: ev.CommandReceived) -> None:
    if not e.ok and e.command in ("pause", "resume"):
        m.local_pause = None
    if e.ok and e.command == "stop" and m.state.finished is None:
        m.stopping = True
        m.dirty.add(HEADER)
    m.acks.append(e)
    if len(m.acks) > 50:
        del m.acks[:-50]
    m.dirty.add(HEADER)


def _llm_request(m: ViewModel, e: ev.LLMRequest) -> None:
    m.calls[e.call_id] = call = m.calls.get(e.call_id) or LLMCall(e.call_id, e.level)
    call.purpose = e.purpose
    if e.level == "research":
        view = _current_research(m)
        if view is not None:
            view.rounds.append((e.purpose, e.call_id))
            view.segments.append(("round", f"### Round {len(view.rounds)} · {e.purpose}\n\n"))
            view.segments.append(("call", e.call_id))
            m.dirty.add(RESEARCH)


def _llm_delta(m: ViewModel, e: ev.LLMDelta) -> None:
    call = m.calls.get(e.call_id)
    if call is None:
        call = m.calls[e.call_id] = LLMCall(e.call_id, e.level)
    if e.kind == "reset":  # the call is retried from the start
        call.chunks.clear()
        call.reasoning_chunks.clear()
        call.deltas = 0
    else:
        call.deltas += getattr(e, "merged", 1)  # a replay hands over a run of tokens as one delta
        (call.reasoning_chunks if e.kind == "reasoning" else call.chunks).append(e.text)
    if e.level == "research":
        m.dirty.add(RESEARCH)


def _llm_response(m: ViewModel, e: ev.LLMResponse) -> None:
    call = m.calls.get(e.call_id)
    if call is None:
        call = m.calls[e.call_id] = LLMCall(e.call_id, e.level)
    call.done, call.ok, call.error = True, e.ok, e.error
    call.prompt_tokens, call.completion_tokens = e.prompt_tokens, e.completion_tokens
    # Non-research calls only matter for their token counts: drop their text.
    if e.level != "research":
        m.calls.pop(e.call_id, None)
    else:
        m.dirty.add(RESEARCH)
    m.dirty.add(HEADER)


def _strategy_started(m: ViewModel, e: ev.StrategyStarted) -> None:
    m.cycles.append(StrategyCycle(e.cycle, e.after_iteration, e.ts))
    m.dirty.add(STRATEGY)


def _strategy_decision(m: ViewModel, e: ev.StrategyDecision) -> None:
    cycle = next((c for c in reversed(m.cycles) if c.cycle == e.cycle), None)
    if cycle is None:
        cycle = StrategyCycle(e.cycle, 0, e.ts)
        m.cycles.append(cycle)
    cycle.decision = e
    m.dirty |= {STRATEGY, PARAMS}
    m.dirty_params = True


def _current_research(m: ViewModel) -> ResearchView | None:
    for rid in reversed(m.research_order):
        view = m.research[rid]
        if view.finished is None:
            return view
    return None


def _research_started(m: ViewModel, e: ev.ResearchStarted) -> None:
    view = ResearchView(e.research_id, e.cycle, e.after_iteration, e.source, e.ts)
    origin = "offline rule (no LLM)" if e.source == "offline" else "LLM dialogue"
    view.segments.append(("title", f"## Research {e.research_id}\n\nCycle {e.cycle}, after iteration "
                                   f"#{e.after_iteration} — {origin}.\n\n"))
    m.research[e.research_id] = view
    m.research_order.append(e.research_id)
    m.dirty |= {RESEARCH, HEADER}


def _research_round(m: ViewModel, e: ev.ResearchRound) -> None:
    view = m.research.get(e.research_id)
    if view is None:
        return
    if not any(cid == e.call_id for _, cid in view.rounds):
        # A round whose tokens were not streamed: show its summary.
        view.rounds.append((e.round, e.call_id))
        view.segments.append(("round", f"### Round {len(view.rounds)} · {e.round}\n\n"))
        view.segments.append(("text", (e.summary or "(no text)") + "\n\n"))
    view.round_done.add(e.call_id)
    m.dirty.add(RESEARCH)


def _mechanism_validated(m: ViewModel, e: ev.MechanismValidated) -> None:
    view = m.research.get(e.research_id)
    if view is not None:
        view.validations.append(e)
        mark = "passed" if e.ok else f"FAILED — {e.failure}"
        steps = "\n".join(f"- {'✓' if s.get('ok') else '✗'} {s.get('name', '')}"
                          + (f": {s.get('detail')}" if s.get("detail") else "") for s in e.steps)
        view.segments.append(("text", f"\n### Validation of `{e.name}` (attempt {e.attempt}): {mark}\n\n"
                                      + (steps + "\n\n" if steps else "")))
    if e.source:
        key = f"mech-{e.research_id}-{e.attempt}"
        m.patches[key] = PatchEntry(key=key, kind="mechanism", research_id=e.research_id,
                                    label=f"{e.name} {'✓' if e.ok else '✗'} ({e.research_id}#{e.attempt})",
                                    artifact=e.source, diff=e.diff, report=e.report, ok=e.ok)
        m.dirty.add(PATCHES)
    m.dirty.add(RESEARCH)


def _mechanism_pending(m: ViewModel, e: ev.MechanismPending) -> None:
    view = m.research.get(e.research_id)
    if view is not None:
        view.pending = e
        view.segments.append(("text", f"\n**`{e.name}` waits for your approval** (press `v`{m.expiry_text()}).\n\n"))
    if e.source and not any(p.research_id == e.research_id for p in m.patches.values()):
        # a built-in offered for approval was never validated with a source: list it now, not once approved
        key = f"mech-{e.research_id}-pending"
        m.patches[key] = PatchEntry(key=key, kind="mechanism", research_id=e.research_id,
                                    label=f"{e.name} ⚑ pending ({e.research_id})", artifact=e.source, diff=e.diff,
                                    report=e.report, ok=True)
        m.dirty.add(PATCHES)
    m.dirty |= {RESEARCH, HEADER}


def _mechanism_approved(m: ViewModel, e: ev.MechanismApproved) -> None:
    view = m.research.get(e.research_id)
    if view is not None:
        view.approved, view.pending = e, None
        view.segments.append(("text", f"\n**`{e.name}` approved** — it activates before iteration "
                                      f"#{e.activates_at}.\n\n"))
    m.dirty |= {RESEARCH, HEADER}


def _research_finished(m: ViewModel, e: ev.ResearchFinished) -> None:
    view = m.research.get(e.research_id)
    if view is not None:
        view.finished = e
        view.pending = None
        name = f" `{e.name}`" if e.name else ""
        view.segments.append(("text", f"\n### Outcome: {e.outcome}{name}\n\n{e.reason}\n\n"))
    for entry in m.patches.values():  # a validated module that was then declined or expired must not stay a ✓
        if entry.research_id == e.research_id and entry.ok:
            entry.outcome = e.outcome
            if e.outcome != "activated":
                entry.label = entry.label.replace(" ✓ ", f" {OUTCOME_MARKS.get(e.outcome, '✗')} {e.outcome} ", 1)
            entry.label = entry.label.replace(" ⚑ pending ", f" {OUTCOME_MARKS.get(e.outcome, '✓')} {e.outcome} ", 1)
            m.dirty.add(PATCHES)
    m.dirty |= {RESEARCH, HEADER}


_HANDLERS: dict[type, Any] = {
    ev.SessionStarted: _session_started,
    ev.RunFinished: _run_finished,
    ev.RunResumed: _run_resumed,
    ev.IterationStarted: _iteration_started,
    ev.ProposalMade: _row_changed,
    ev.ProposalRejected: _row_changed,
    ev.TrainingStarted: _training_started,
    ev.TrainingProgress: _training_progress,
    ev.TrainingOutput: lambda m, e: None,
    ev.TrainingFinished: _training_finished,
    ev.IterationFinished: _iteration_finished,
    ev.IterationInterrupted: _interrupted,
    ev.MechanismEffect: _row_changed,
    ev.MechanismActivated: _mechanism_activated,
    ev.MechanismDeactivated: _mechanism_deactivated,
    ev.GuidanceChanged: _guidance,
    ev.GuidanceNotApplied: _guidance_not_applied,
    ev.ParamFrozen: _param_change,
    ev.ParamUnfrozen: _param_change,
    ev.PauseRequested: _pause_state,
    ev.Paused: lambda m, e: (_pause_state(m, e), _limit_notice(m, e)),
    ev.Unpaused: _pause_state,
    ev.SpendWarning: _limit_notice,
    ev.CommandReceived: _command,
    ev.LLMRequest: _llm_request,
    ev.LLMDelta: _llm_delta,
    ev.MergedDeltas: _llm_delta,  # a replay jump hands over a run of tokens as one
    ev.LLMResponse: _llm_response,
    ev.StrategyStarted: _strategy_started,
    ev.StrategyDecision: _strategy_decision,
    ev.ResearchStarted: _research_started,
    ev.ResearchRound: _research_round,
    ev.MechanismValidated: _mechanism_validated,
    ev.MechanismPending: _mechanism_pending,
    ev.MechanismApproved: _mechanism_approved,
    ev.ResearchFinished: _research_finished,
}

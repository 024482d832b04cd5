"""What the app keeps about slots and trials: which trial runs where, and everything about one iteration.

With parallel trials several iterations train at once, finish in any order, and each slot has
its own progress and GPU samples. The run's fold (:class:`core.record.state.RunState`) keeps
the run; this board keeps what only a screen needs, built from the same events:

- every slot the executor configured (skipped GPUs with their reason), the trial it runs
  and its latest NVML sample;
- every trial's events as they came: the proposal(s) and rejections with what the proposer
  saw, the guidance in force then, mechanism effects, its training start/progress/finish,
  the last lines of its output and its verdict — what the iteration detail view shows;
- the order verdicts arrived in (the trace's order once the run has more than one slot).

Plain data, no Textual: tested and benchmarked with the rest of the view model.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core.record import events as ev

OUTPUT_LINES = 40  # a trial's last output lines kept for the detail view (the log artifact has them all)


@dataclass
class SlotView:
    name: str
    devices: str = ""
    uuid: str = ""
    memory_total_mb: float | None = None
    skipped: str = ""  # why it is never trained on
    node: str = ""  # the Ray node of its latest run
    iteration: int | None = None  # the trial it runs now
    sample: ev.SlotSample | None = None  # the latest NVML sample


@dataclass
class TrialView:
    """One iteration's events, as the detail view and the slots pane read them."""

    iteration: int
    proposals: list[ev.ProposalMade] = field(default_factory=list)
    rejections: list[ev.ProposalRejected] = field(default_factory=list)
    effects: list[ev.MechanismEffect] = field(default_factory=list)
    guidance: str = ""  # in force when it was proposed
    guidance_source: str = ""
    mechanisms: list[str] = field(default_factory=list)  # active when it was proposed
    started: ev.TrainingStarted | None = None  # the latest attempt's start
    attempts: list[ev.TrainingStarted] = field(default_factory=list)
    progress: ev.TrainingProgress | None = None
    training: ev.TrainingFinished | None = None
    verdict: ev.IterationFinished | None = None
    interrupted: ev.IterationInterrupted | None = None
    output: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))  # (stream, line)

    @property
    def in_flight(self) -> bool:
        """Training now: started, not finished, not cut short."""
        return self.started is not None and self.training is None and self.verdict is None \
            and self.interrupted is None

    @property
    def slot(self) -> str:
        return self.started.slot if self.started is not None else ""


class TrialBoard:
    """Slots and trials folded from events; ``apply`` says whether the slots view went stale."""

    def __init__(self) -> None:
        self.slots: dict[str, SlotView] = {}
        self.trials: dict[int, TrialView] = {}
        self.finish_order: list[int] = []  # iterations in the order their verdicts came
        self._rank: dict[int, int] = {}
        self.executor = ""
        self.address = ""
        self.guidance = ""
        self.guidance_source = "config"
        self.mechanisms: list[str] = []

    def trial(self, n: int) -> TrialView:
        t = self.trials.get(n)
        if t is None:
            t = self.trials[n] = TrialView(n)
        return t

    def slot(self, name: str) -> SlotView:
        s = self.slots.get(name)
        if s is None:
            s = self.slots[name] = SlotView(name)
        return s

    @property
    def working_slots(self) -> list[SlotView]:
        return [s for s in self.slots.values() if not s.skipped]

    @property
    def multi(self) -> bool:
        """More than one slot trains: the app shows the slots pane and a slot column."""
        return len(self.working_slots) > 1

    @property
    def in_flight(self) -> list[int]:
        """Iterations training now, in iteration order."""
        return sorted(s.iteration for s in self.slots.values() if s.iteration is not None)

    def rank(self, n: int) -> int:
        """Where iteration ``n`` sits in finish order: verdicts first as they came, then the rest by number."""
        return self._rank.get(n, 1_000_000 + n)

    def apply(self, e: ev.Event) -> bool:
        handler = _HANDLERS.get(type(e))
        return bool(handler(self, e)) if handler is not None else False


def _free(board: TrialBoard, n: int) -> None:
    for s in board.slots.values():
        if s.iteration == n:
            s.iteration = None


def _session_started(b: TrialBoard, e: ev.SessionStarted) -> bool:
    b.guidance, b.guidance_source = e.guidance, "config"
    return False


def _guidance(b: TrialBoard, e: ev.GuidanceChanged) -> bool:
    b.guidance, b.guidance_source = e.guidance, e.source
    return False


def _mechanism_on(b: TrialBoard, e: ev.MechanismActivated) -> bool:
    if e.name not in b.mechanisms:
        b.mechanisms.append(e.name)
    return False


def _mechanism_off(b: TrialBoard, e: ev.MechanismDeactivated) -> bool:
    if e.name in b.mechanisms:
        b.mechanisms.remove(e.name)
    return False


def _configured(b: TrialBoard, e: ev.SlotsConfigured) -> bool:
    b.executor, b.address = e.executor, e.address
    for info in e.slots:
        s = b.slot(info.name)
        s.devices, s.uuid, s.memory_total_mb, s.skipped = info.devices, info.uuid, info.memory_total_mb, info.skipped
    return True


def _sampled(b: TrialBoard, e: ev.SlotsSampled) -> bool:
    for sample in e.samples:
        b.slot(sample.name).sample = sample
    return True


def _proposal(b: TrialBoard, e: ev.ProposalMade) -> bool:
    t = b.trial(e.iteration)
    t.proposals.append(e)
    t.guidance, t.guidance_source, t.mechanisms = b.guidance, b.guidance_source, list(b.mechanisms)
    return False


def _iteration_started(b: TrialBoard, e: ev.IterationStarted) -> bool:
    """An iteration begun again (re-run after an interruption, a detach or a resume): what its
    proposer saw and did is this attempt's; the earlier proposal's prompt and effects would show twice."""
    t = b.trials.get(e.iteration)
    if t is not None and t.verdict is None:
        t.proposals.clear()
        t.rejections.clear()
        t.effects.clear()
    return False


def _rejected(b: TrialBoard, e: ev.ProposalRejected) -> bool:
    b.trial(e.iteration).rejections.append(e)
    return False


def _effect(b: TrialBoard, e: ev.MechanismEffect) -> bool:
    b.trial(e.iteration).effects.append(e)
    return False


def _started(b: TrialBoard, e: ev.TrainingStarted) -> bool:
    t = b.trial(e.iteration)
    t.started, t.progress, t.training, t.verdict, t.interrupted = e, None, None, None, None
    t.attempts.append(e)
    _free(b, e.iteration)
    s = b.slot(e.slot or "cpu")
    s.iteration, s.node = e.iteration, e.node
    return True


def _progress(b: TrialBoard, e: ev.TrainingProgress) -> bool:
    b.trial(e.iteration).progress = e
    return True


def _output(b: TrialBoard, e: ev.TrainingOutput) -> bool:
    b.trial(e.iteration).output.append((e.stream, e.line))
    return False


def _training_finished(b: TrialBoard, e: ev.TrainingFinished) -> bool:
    b.trial(e.iteration).training = e
    _free(b, e.iteration)
    return True


def _verdict(b: TrialBoard, e: ev.IterationFinished) -> bool:
    t = b.trial(e.iteration)
    t.verdict = e
    if e.iteration not in b._rank:
        b._rank[e.iteration] = len(b.finish_order)
        b.finish_order.append(e.iteration)
    _free(b, e.iteration)
    return True


def _interrupted(b: TrialBoard, e: ev.IterationInterrupted) -> bool:
    b.trial(e.iteration).interrupted = e
    _free(b, e.iteration)
    return True


def _run_finished(b: TrialBoard, e: ev.RunFinished) -> bool:
    for s in b.slots.values():
        s.iteration = None
    return True


_HANDLERS: dict[type, Any] = {
    ev.SessionStarted: _session_started,
    ev.GuidanceChanged: _guidance,
    ev.MechanismActivated: _mechanism_on,
    ev.MechanismDeactivated: _mechanism_off,
    ev.SlotsConfigured: _configured,
    ev.SlotsSampled: _sampled,
    ev.IterationStarted: _iteration_started,
    ev.ProposalMade: _proposal,
    ev.ProposalRejected: _rejected,
    ev.MechanismEffect: _effect,
    ev.TrainingStarted: _started,
    ev.TrainingProgress: _progress,
    ev.TrainingOutput: _output,
    ev.TrainingFinished: _training_finished,
    ev.IterationFinished: _verdict,
    ev.IterationInterrupted: _interrupted,
    ev.RunFinished: _run_finished,
}

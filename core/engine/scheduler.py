"""The scheduler: runs every trial of a run, on one slot or on every slot at once.

The engine hands it the whole run, through its run port (core/engine/run_port.py). Pause,
stop, the iteration budget and the expiry of approvals are decided here, once, whichever way
the trials run:

**The baseline** runs first and alone, on one slot: every later verdict compares with it, so
nothing can be proposed before it is measured. Then, before the first proposal, the run port
records what the baseline declared and runs the calibration (``acceptance.calibrate``); after
the last iteration, before the run ends, the keep-chain audit (core/engine/audit.py).

**One at a time** (one slot, and no batches of several): an iteration is proposed, trained
and judged, then Level 1.5 runs when ``search.outer_period`` more have finished (and Level 2
starts, concurrent, when due), all as one step that a hard stop cancels; the next iteration
starts only after it.

**Asynchronous** (``run.schedule = "async"``): whenever a slot frees, a proposal is made
for it; k free slots get k proposals from one call (:mod:`core.levels.proposal_batch`),
which sees every trial running. Up to ``run.max_queued`` proposals wait for a slot, made
ahead so that a slot never waits for the LLM; a new best drops them (a ProposalRejected of
kind "stale"; their iterations are proposed again against the new best) and never a running
trial. A trial's verdict compares its result with the best when the result arrives.
Level 1.5 and Level 2 count finished iterations: a strategy cycle runs each time
``search.outer_period`` more have finished, while trials keep running, and changes only
later proposals; a mechanism activates at the next proposal.

**Batch** (``run.schedule = "batch"``): q = ``run.batch_size`` proposals (0: one per slot),
all trained before the next batch. The log is made deterministic by ordering, not by luck:
while a batch trains, each trial's events are held back and written, trial by trial in
iteration order, once every trial of the batch has trained; the verdicts are then made in
iteration order, so the best each verdict compares with does not depend on which run ended
first. Only the TrainingProcess events are written at once, because a resume after kill -9
ends the processes they name; the trials start one after another, each once the one before
it has its process, so these too come in iteration order. Nothing the machine decides is in
the log: a run's tag is derived from the session, its resumes, the iteration, seed and attempt
(:mod:`core.record.processes`), its pid and process group go to ``processes.jsonl`` beside
the log, and every duration is measured on the engine's monotonic clock. With the scripted
LLM, a ``clock`` for the timestamps and a fixed ``monotonic`` given to the engine, two runs
write the same bytes (tests/test_parallel_trials.py compares them).

Control with trials in flight: pause stops new proposals and new starts (running trials
finish); abort cancels one trial's run or all of them; a soft stop lets the running trials
finish, a hard one interrupts them; trials that were queued or cut short are recorded as
interrupted and re-run (with their numbers, on any slot) when the session is resumed.
"""
from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.record import events as ev
from core.engine.run_port import RunPort
from core.levels.context import TrainRun
from core.levels.proposal_batch import BatchProposer, Known
from core.levels.trace import fmt_bpb
from core.services.script import TrainScript

if TYPE_CHECKING:
    from core.levels.inner import Proposal


@dataclass
class Held:
    """A batch trial's events, held back until the batch has trained; ``started`` once its process runs."""

    events: list[ev.Event] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


# The batch trial the running task belongs to (its events are held), or None.
HELD: contextvars.ContextVar[Held | None] = contextvars.ContextVar("bilevel_held_events", default=None)


@dataclass
class Queued:
    """A usable proposal waiting for (or running on) a slot, with the best it was proposed against."""

    iteration: int
    proposal: "Proposal"
    best_text: str
    best_script: str  # artifact of that best: the proposal is stale once the best script differs
    best_val: float | None
    values: dict[str, Any]  # the full parameter values it runs
    started: float  # the engine's monotonic clock, when its iteration started


class Scheduler:
    """Runs every trial of a run, the baseline first, until the budget, a stop, or a fatal error."""

    def __init__(self, port: RunPort) -> None:
        self.port = port
        self.ctx = port.context  # events, state, config, artifacts, the monotonic clock
        self.proposer = BatchProposer(port.inner)
        self.trials: dict[int, asyncio.Task[None]] = {}
        self.running: dict[int, Queued] = {}
        self.queued: list[Queued] = []
        self.unproposed: list[int] = []  # started, with no usable proposal (a dropped one): asked again first
        self._wake = asyncio.Event()
        self._proposing: asyncio.Task[Any] | None = None
        self._current: asyncio.Task[None] | None = None  # the step in progress, one at a time
        self._cycle = 0

    @property
    def capacity(self) -> int:
        return self.port.executor.capacity

    @property
    def one_at_a_time(self) -> bool:
        """The baseline, or one slot with no batches of several: each step ends before the next begins."""
        run = self.ctx.cfg.run
        several = self.capacity > 1 or (run.schedule == "batch" and run.batch_size > 1)
        return not several or not self.ctx.state.records

    def poke(self) -> None:
        """A command arrived (pause, resume, stop, abort): look again."""
        self._wake.set()

    def cut_short(self) -> None:
        """A hard stop: the step or proposal in progress is abandoned (its iteration is recorded as interrupted)."""
        for task in (self._proposing, self._current):
            if task is not None and not task.done():
                task.cancel()
        self.poke()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        ctx = self.ctx
        self._cycle = len(ctx.state.proposals) // ctx.cfg.search.outer_period
        try:
            while True:
                self._wake.clear()
                self._reap()
                if self.port.stopping:
                    await self._stop()
                    return
                if ctx.state.records and not await self.port.before_search():
                    continue  # a stop cut the calibration short
                self.port.check_limits(more=bool(self.trials or self.queued or self.unproposed or self._numbers(1)))
                if not self._held_by_a_cap():  # a reached cap spends nothing more on the outer levels either
                    await self._outer_levels()
                if not self._paused() and await self._step():
                    continue
                left = self._numbers(1)
                self._expire_late_approvals(left)
                if not (self.trials or self.queued or self.unproposed or left) and not ctx.state.paused:
                    if not await self.port.audit_at_end():
                        continue  # a stop cut the audit short: resume finishes it
                    await self.port.finish("completed", f"{ctx.cfg.budget.iterations} iterations done")
                    return
                await self._wait()
        except BaseException:
            await self._abandon()
            raise

    async def _step(self) -> bool:
        """Start what comes next (one at a time: run it); False when nothing can start now."""
        if self.one_at_a_time:
            return await self._one()
        if self.ctx.cfg.run.schedule == "batch":
            return await self._batch()
        self._drop_stale()
        self._start()  # a queued proposal takes a freed slot at once, before any LLM call
        numbers = self._numbers(self.capacity + self.ctx.cfg.run.max_queued - len(self.trials) - len(self.queued))
        if not numbers:
            return False
        await self._propose(numbers)
        return True  # reap and drop what went stale while it was proposing, then start

    def _paused(self) -> bool:
        """Pause takes effect here, between steps: nothing new is proposed or started (running trials finish)."""
        s = self.ctx.state
        if s.pause_requested and not s.paused:
            self.ctx.emit(ev.Paused(next_iteration=s.next_iteration, cause=s.pause_cause or "user",  # type: ignore[arg-type]
                                    reason=s.pause_reason))
        elif s.paused and self.port.pause_lifted:
            self.ctx.emit(ev.Unpaused())
        return s.paused

    def _held_by_a_cap(self) -> bool:
        s = self.ctx.state
        return (s.paused or s.pause_requested) and s.pause_cause == "budget"

    async def _wait(self) -> None:
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waker, *self.trials.values()}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    def _numbers(self, room: int) -> list[int]:
        """The iterations to propose next: those without a usable proposal, then interrupted ones, then new."""
        if room <= 0:
            return []
        state, budget = self.ctx.state, self.ctx.cfg.budget.iterations
        out = self.unproposed[:room]
        out += [n for n in state.to_rerun if n <= budget][: room - len(out)]
        n = state.next_new_iteration
        while len(out) < room and n <= budget:
            out.append(n)
            n += 1
        return out

    def _expire_late_approvals(self, numbers: list[int]) -> None:
        """Approvals no proposal is left to activate at: recorded as expired, never left pending.

        A mechanism joins at the next proposal. ``numbers``: the iterations about to be proposed.
        One at a time, the budget's last iteration is the last boundary (an empty list: the run's
        end expires them); in parallel a dropped proposal is made again, so only an empty list is.
        """
        if not self.port.approvals_pending:
            return
        budget = self.ctx.cfg.budget.iterations
        if self.one_at_a_time:
            if numbers and numbers[-1] >= budget:
                self.port.expire_approvals(f"no iteration is left for it to run in (#{numbers[-1]} is the last)")
        elif not numbers:
            self.port.expire_approvals("no iteration is left for it to run in (every one is proposed)")

    # --- one at a time ----------------------------------------------------------------------

    async def _one(self) -> bool:
        """The baseline, or one iteration and the outer levels it completes; a hard stop cancels it."""
        numbers = self._numbers(1)
        if not numbers:
            return False
        await self.port.activate_ready()  # a validated mechanism joins at the next iteration
        self._expire_late_approvals(numbers)
        n = numbers[0]
        self._current = asyncio.ensure_future(self.port.inner.run_baseline() if n == 0 else self._iteration(n))
        try:
            await self._current
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.port.stopping or (task is not None and task.cancelling()):  # the run itself is cancelled
                raise
            if self.ctx.state.running is not None:
                self.ctx.interrupted(self.ctx.state.running)
        finally:
            self._current = None
        return True

    async def _iteration(self, n: int) -> None:
        await self.port.inner.run_iteration(n)
        await self._outer_levels()

    # --- proposals -----------------------------------------------------------------------

    async def _propose(self, numbers: list[int]) -> list[Queued]:
        ctx = self.ctx
        for n in numbers:
            if n not in ctx.state.in_flight:
                ctx.emit(ev.IterationStarted(iteration=n))
        self.unproposed = [n for n in self.unproposed if n not in numbers]
        started = ctx.monotonic()
        await self.port.activate_ready()  # a validated mechanism joins at the next proposal
        best_script, best_val = ctx.state.best_script, ctx.state.best_val_bpb
        best_text = ctx.read_artifact(best_script)
        best = TrainScript.parse(best_text)
        known = [Known(q.iteration, q.values, q.proposal.changes, q.proposal.hypothesis)
                 for q in [*self.running.values(), *self.queued]]
        self._proposing = asyncio.ensure_future(self.proposer.propose(numbers, known, best))
        try:
            results = await self._proposing
        except asyncio.CancelledError:
            if not self.port.stopping:
                raise
            for n in numbers:
                ctx.interrupted(n)
            return []
        finally:
            self._proposing = None
        made = []
        for n in numbers:
            got = results[n]
            if isinstance(got, str):
                self.port.inner.record_rejected(n, got, started=started)
                continue
            candidate = got.candidate if got.candidate is not None else best.apply(got.changes.params)
            got.candidate = candidate
            made.append(Queued(n, got, best_text, best_script, best_val, candidate.values(), started))
        self.queued += made
        return made

    def _drop_stale(self) -> None:
        """A new best arrived: the queued proposals, made against the old one, are asked again."""
        state = self.ctx.state
        for q in [q for q in self.queued if q.best_script != state.best_script]:
            self.queued.remove(q)
            self.unproposed.append(q.iteration)
            reason = (f"dropped before it ran: a new best (val_bpb {fmt_bpb(state.best_val_bpb)}) arrived after it "
                      f"was proposed against {fmt_bpb(q.best_val)}; proposed again")
            self.ctx.emit(ev.ProposalRejected(iteration=q.iteration, attempt=q.proposal.attempt, kind="stale",
                                              reason=reason, changes=q.proposal.changes))

    # --- trials ----------------------------------------------------------------------------

    def _start(self) -> None:
        while len(self.trials) < self.capacity and self.queued:
            q = self.queued.pop(0)
            self.running[q.iteration] = q
            self.trials[q.iteration] = asyncio.ensure_future(self.port.inner.run_trial(
                q.iteration, q.proposal, q.best_text, started=q.started, best_at_proposal=q.best_val))

    def _reap(self) -> None:
        """Forget finished trials; a trial's fatal error ends the run (the others are interrupted)."""
        for n, task in list(self.trials.items()):
            if task.done():
                del self.trials[n]
                self.running.pop(n, None)
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _outer_levels(self) -> None:
        """Level 1.5's cycles (and Level 2, when due) that the finished iterations have completed."""
        finished = len(self.ctx.state.proposals)
        while self._cycle < finished // self.ctx.cfg.search.outer_period:
            self._cycle += 1
            await self.port.outer_levels(self._cycle, finished)

    async def _stop(self) -> None:
        """Soft: running trials finish; hard (their cancel events are set): they are interrupted."""
        ctx = self.ctx
        for q in self.queued:
            ctx.interrupted(q.iteration)
        for n in self.unproposed:
            ctx.interrupted(n)
        self.queued, self.unproposed = [], []
        results = await asyncio.gather(*self.trials.values(), return_exceptions=True)
        self.trials.clear()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                self.port.log(f"a trial failed while the run stopped: {r!r}")
        await self.port.finish("stopped", self.port.stop_reason)

    async def _abandon(self) -> None:
        """A fatal error or a cancelled run: every trial in flight is cut short and recorded as interrupted."""
        port = self.port
        port.request_stop(port.stop_reason if port.stopping else "the run ended with trials in flight", hard=True)
        await asyncio.gather(*self.trials.values(), return_exceptions=True)
        self.trials.clear()
        for n in [*(q.iteration for q in self.queued), *self.unproposed]:
            if n in self.ctx.state.in_flight:
                self.ctx.interrupted(n)
        self.queued, self.unproposed = [], []

    # --- batches ---------------------------------------------------------------------------

    async def _batch(self) -> bool:
        """Propose, train and judge one batch; False when no iteration is left to propose."""
        q = self.ctx.cfg.run.batch_size or self.capacity
        numbers = self._numbers(q)
        if not numbers:
            return False
        batch = sorted(await self._propose(numbers), key=lambda item: item.iteration)
        self.queued = []
        held = [Held() for _ in batch]
        runs = await asyncio.gather(*(self._held_training(item, mine, held[i - 1] if i else None)
                                      for i, (item, mine) in enumerate(zip(batch, held))),
                                    return_exceptions=True)
        for item, mine, run in zip(batch, held, runs):
            for event in mine.events:
                self.ctx.emit(event)
            if isinstance(run, BaseException):
                raise run
            if run is not None:
                await self.port.inner.judge_trial(item.iteration, item.proposal, run,
                                                  started=item.started, best_at_proposal=item.best_val)
        return True

    async def _held_training(self, item: Queued, mine: Held, before: Held | None) -> TrainRun | None:
        if before is not None:  # start in iteration order: the one before has its process (or is done)
            await before.started.wait()
        HELD.set(mine)
        try:
            return await self.port.inner.train_trial(item.iteration, item.proposal, item.best_text)
        finally:
            mine.started.set()

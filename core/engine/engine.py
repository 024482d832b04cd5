"""The asyncio orchestrator: schedules the levels, owns the command inbox, emits events.

Everything the engine knows is in its events: each emitted event is written to the
session log, applied to :class:`~core.record.state.RunState` and handed to subscribers (the
UI, the headless printer). The engine never blocks the event loop: training runs are
subprocesses read asynchronously, LLM calls are async, data preparation runs in a thread.
The levels never see the engine: they get its run context (core/engine/context.py), which
also trains and calls the LLM for them. Every trial, the baseline included, runs under
core/engine/scheduler.py, which sees the engine through its run port (core/engine/run_port.py).
Over ~500 lines because a run's whole life (start, restart, every command's handler, mechanism
attachment) belongs to this one object.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import sys
from pathlib import Path
from typing import Any, Callable

from msgspec.structs import replace as replace_struct

from core import __version__
from core.record import commands as cmds
from core.record import events as ev
from core.record import config as config_mod
from core.record import layout, registry
from core.record.config import Config, from_dict
from core.engine.context import EngineContext, client_for, spec_dict
from core.engine import calibration, limits
from core.engine.estimate import estimate
from core.record.pricing import Price, price_of
from core.engine.audit import Auditor
from core.services.executor_choice import make_executor
from core.engine.scheduler import HELD, Scheduler
from core.levels.context import FatalRunError, Ready
from core.levels.inner import InnerLoop
from core.levels.research import ResearchLevel, SeedSource, drop_unfinished_research
from core.levels.strategy import StrategyLevel
from core.record.channel import watch_commands
from core.services.llm import LLMClient
from core.engine.mechanism_host import MechanismHost
from core.engine.ledger_sync import LedgerWriter
from core.record.ledger import Ledger
from core.services.schema import infer_schema
from core.services.script import ParamSpec, TrainScript
from core.services import code_edit, code_run, script_folder
from core.services.data_budget import repeat_warning
from core.services.seeds import seed_params
from core.record.session import (SessionError, SessionReader, SessionWriter, StorageFault, new_session_dir,
                                 storage_fault)
from core.record.session_lock import SessionLock
from core.services import process_control
from core.record.state import RunState, fold

# Parameters that define the measurement rather than the model: never the LLM's to change.
PROTOCOL_PARAMS = ("TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "DEVICE", "COMPILE", "NOISE_SIGMA", "SURFACE")

Subscriber = Callable[[ev.Event], None]


class Engine:
    def __init__(self, cfg: Config, session_dir: Path, *, state: RunState | None = None,
                 llm: LLMClient | None = None, log: Callable[[str], None] | None = None,
                 lock: SessionLock | None = None, clock: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(session_dir)
        # Where runs train (local slots or a Ray cluster); first, so a bad [run] holds no lock
        self.executor = make_executor(cfg.run, cfg.plugins)
        # One engine per session, taken before the log is read or repaired; held until run() ends.
        self.lock = lock or SessionLock.acquire(self.dir)
        try:
            # clock: the timestamps' source; a test that compares two logs byte for byte fixes it
            # a surrogate's run costs less than an fsync: its events are fsync'd in batches (SessionWriter)
            self.writer = SessionWriter(self.dir, **({} if clock is None else {"clock": clock}),
                                        batch_fsync=cfg.surrogate)
            # monotonic: what every recorded duration is measured with; that test fixes it too
            self.monotonic = monotonic or time.monotonic
        except BaseException:
            self.lock.release()
            raise
        self.state = state or RunState()
        self.subscribers: list[Subscriber] = []
        self.log = log or (lambda msg: None)
        self.llm = llm
        self._own_llm = llm is None
        self.schema: dict[str, ParamSpec] = {}
        self.data_dir: Path | None = None
        self.stopping = False
        self._began_here = False  # this process wrote SessionStarted (a fresh run, not a resume)
        self.stop_reason = ""
        self._commands: asyncio.Queue[tuple[cmds.Command | cmds.Unreadable, str]] = asyncio.Queue()
        self._unpaused = asyncio.Event()
        self.training_cancels: dict[int, asyncio.Event] = {}  # iteration -> its run's cancel, while it trains
        self.mechanisms = MechanismHost(self.emit, self._schema_dicts, cfg.level2.hook_timeout_s, self.dir)
        self.context = EngineContext(self)  # all the levels see of the engine
        self.inner = InnerLoop(self.context)
        self.scheduler = Scheduler(self)  # runs every trial; sees this engine as its RunPort
        self.strategy = StrategyLevel(self.context)
        self.research = ResearchLevel(self.context)
        # every validated mechanism, its pre-screen and what it did here go to the user's ledger
        self.subscribe(LedgerWriter(self.dir, lambda: self.state, lambda msg: self.log(msg)))
        self._research_task: asyncio.Task[None] | None = None
        self._ready: list[Ready] = []  # validated mechanisms waiting for the next boundary
        self._approvals: dict[str, asyncio.Future[bool]] = {}
        self._awaiting: dict[str, str] = {}  # research id -> mechanism name, while approval is pending
        self._ended = False  # run() returned: the log is closed, commands are refused to subscribers only
        self._finishing = ""  # set once the run is ending: why a new approval request expires at once
        self.storage_fault: StorageFault | None = None  # the session folder stopped taking writes: the run ends
        self._evidence_ready = False  # before_search done in this process
        self._priced_cfg: Config | None = None  # the config _price() last read (core/record/pricing.py)
        self._priced: Price | None = None

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, cfg: Config, **kw: Any) -> "Engine":
        return cls(cfg, new_session_dir(cfg.sessions_path(), cfg.name), **kw)

    @classmethod
    def resume(cls, session_dir: Path, overrides: dict[str, Any] | None = None, **kw: Any) -> "Engine":
        """Continue a session; refused (SessionError) while another engine holds it or its log is damaged."""
        lock = SessionLock.acquire(Path(session_dir))
        try:
            return cls._resume_locked(Path(session_dir), overrides, lock, **kw)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resume_locked(cls, session_dir: Path, overrides: dict[str, Any] | None, lock: SessionLock,
                       **kw: Any) -> "Engine":
        reader = SessionReader(session_dir)
        problems = reader.check()
        if problems:
            listed = "\n  ".join(reader.warnings()[:10])
            more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
            first = problems[0].line
            raise SessionError(
                f"{reader.log} is damaged; resume writes nothing to a log it cannot read whole:\n  {listed}{more}\n"
                f"To recover: keep a copy, then either cut the log before line {first} "
                f"(head -n {first - 1} {reader.log} > fixed && mv fixed {reader.log}) to continue from there, "
                "or start a new session. `bilevel replay --headless` shows what the log holds.")
        events = list(reader.events())
        end_recorded_processes(events)  # an interrupted run's training processes, before anything starts
        state = fold(events)
        if not state.session:
            raise FatalRunError(f"{session_dir}: the session never started (no session_started event): "
                                "nothing was run in it; delete the folder and start again")
        data = json.loads(json.dumps(state.config))  # deep copy
        # The budget in force (changes recorded since the start included), then this resume's overrides;
        # _restart records a changed budget as an event, so the next resume keeps it.
        recorded = {"budget.iterations": state.iterations_budget} if state.budget_changes else {}
        if state.limits is not None:  # caps changed mid-session (or at an earlier resume)
            recorded.update(config_mod.limit_overrides(state.limits))
        if state.learned_context_tokens:  # the context the server told the check before the baseline
            recorded["endpoint.context_tokens"] = state.learned_context_tokens
        config_mod.apply_overrides(data, {**recorded, **(overrides or {})})
        cfg = from_dict(data, source=f"{layout.events_path(session_dir)} (session_started)")
        return cls(cfg, session_dir, state=state, lock=lock, **kw)

    # --- events ----------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> ev.Event:
        held = HELD.get()
        if held is not None:  # a batch trial's event: written when its batch has trained (core/engine/scheduler.py)
            if not isinstance(event, ev.TrainingProcess):
                held.events.append(event)
                return event
            held.started.set()  # resume must find its process: written at once
        try:
            stamped = self.writer.append(event)
        except StorageFault as exc:  # raised where it happened; a side task's fault stops the run too
            self._storage_failed(exc)
            raise
        self.state.apply(stamped)
        if isinstance(stamped, ev.EndpointChecked) and stamped.applied:  # the levels' budgets use it from now on
            self.cfg = config_mod.with_overrides(self.cfg, {"endpoint.context_tokens": stamped.context_tokens})
        for sub in list(self.subscribers):
            try:
                sub(stamped)
            except Exception as exc:  # noqa: BLE001 - a broken viewer must not stop the run
                self.log(f"subscriber failed on {stamped.type}: {exc!r}")
        return stamped

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def artifact(self, relpath: str, data: str | bytes) -> str:
        return self.writer.artifact(relpath, data)

    def read_artifact(self, relpath: str) -> str:
        return layout.read_artifact(self.dir, relpath)

    def _schema_dicts(self) -> dict[str, Any]:
        return {n: spec_dict(s) for n, s in self.schema.items()}

    # --- commands ------------------------------------------------------------------------------

    def submit(self, command: cmds.Command | cmds.Unreadable, /, source: str = "api") -> None:
        """Queue a command; it is acknowledged by a CommandReceived event (an Unreadable one is refused).

        After the run the log is closed: the refusal goes to the subscribers only, never silence.
        """
        if self._ended:
            self._refuse_unlogged(command, source)
            return
        self._commands.put_nowait((command, source))

    def _refuse_unlogged(self, command: cmds.Command | cmds.Unreadable, source: str) -> None:
        name = command.name if isinstance(command, cmds.Unreadable) else command.command
        args = command.args if isinstance(command, cmds.Unreadable) else command.args()
        refusal = ev.CommandReceived(command=name, args=args, source=source, ok=False, error=self._over())
        for sub in list(self.subscribers):
            try:
                sub(refusal)
            except Exception as exc:  # noqa: BLE001 - a broken viewer must not stop the others
                self.log(f"subscriber failed on {refusal.type}: {exc!r}")

    def _over(self) -> str:
        status = self.state.finished.status if self.state.finished is not None else "ending"
        return (f"the run is over ({status}): nothing is left for the command to change; "
                f"bilevel resume {self.dir} continues the session")

    def request_stop(self, reason: str, *, hard: bool = False) -> None:
        """Stop at the next iteration boundary; ``hard`` also cuts every running iteration short."""
        self.stopping = True
        self.stop_reason = reason
        self._unpaused.set()
        self.context.release_waits()  # a call waiting for a down endpoint gives up: its iteration is re-run
        if hard:
            for cancel in list(self.training_cancels.values()):
                cancel.set()
            self.scheduler.cut_short()
        self.scheduler.poke()

    async def _command_loop(self) -> None:
        while True:
            cmd, source = await self._commands.get()
            if isinstance(cmd, cmds.Unreadable):
                self.emit(ev.CommandReceived(command=cmd.name, args=cmd.args, source=source, ok=False, error=cmd.error))
                continue
            try:
                cmd, error = self._handle(cmd)
            except Exception as exc:  # noqa: BLE001 - a malformed command must not kill the inbox
                error = f"malformed command: {exc!r}"
            self.emit(ev.CommandReceived(command=cmd.command, args=cmd.args(), source=source,
                                         ok=not error, error=error or ""))
            if not error:
                self._after_command(cmd, source)

    def _handle(self, cmd: cmds.Command) -> tuple[cmds.Command, str | None]:
        """Validate a command against the run; returns it (completed) and an error message or None."""
        if self._finishing:  # this run is ending (a resumed session's old RunFinished does not count)
            return cmd, self._over()
        if isinstance(cmd, (cmds.Freeze, cmds.Unfreeze)):
            if cmd.name not in self.schema:
                return cmd, f"unknown parameter {cmd.name!r}"
            if self.schema[cmd.name].locked:
                return cmd, f"{cmd.name} is locked by the configuration"
        if isinstance(cmd, cmds.SetBudget):
            if cmd.time_s not in (None, self.cfg.budget.time_s):
                return cmd, ("the time budget defines the measurement and cannot change mid-session; "
                             "start a new session to compare at another budget")
            if cmd.iterations is not None and cmd.iterations < len(self.state.records) - 1:
                return cmd, f"iterations must be an integer ≥ {max(0, len(self.state.records) - 1)} (iterations done)"
        if isinstance(cmd, cmds.SetLimits):
            try:
                self._with_limits(cmd.limits)
            except config_mod.ConfigError as exc:
                return cmd, str(exc)
        if isinstance(cmd, cmds.Resume) and self._held_by() == "budget":
            return cmd, (f"paused by a spend cap ({self.state.pause_reason.split(':', 1)[0]}): a resume would pause "
                         "again at once; raise or unset the cap instead")
        if isinstance(cmd, cmds.AbortTraining):
            if not self.training_cancels:
                return cmd, "no training run is in progress"
            if cmd.iteration is not None and cmd.iteration not in self.training_cancels:
                training = sorted(self.training_cancels)
                return cmd, (f"the run of iteration #{cmd.iteration} is no longer in progress "
                             f"({', '.join(f'#{n}' for n in training)} {'is' if len(training) == 1 else 'are'})")
        if isinstance(cmd, (cmds.ApproveMechanism, cmds.RejectMechanism)):
            rid = cmd.research_id
            if rid is None and len(self._approvals) == 1:
                rid = next(iter(self._approvals))
                cmd = replace_struct(cmd, research_id=rid)
            if rid not in self._approvals:
                waiting = ", ".join(self._approvals) or "none"
                return cmd, f"no mechanism waits for approval under {rid!r} (waiting: {waiting})"
            if isinstance(cmd, cmds.ApproveMechanism) and self._next_boundary() > self.cfg.budget.iterations:
                return cmd, (f"no iteration is left for it to run in (the run ends after #{self.cfg.budget.iterations}"
                             "); raise the iteration budget first")
        return cmd, None

    def _guidance_unread(self) -> str:
        """Why nothing in this run reads the guidance (empty when the Level 1 LLM does)."""
        entry = registry.entry("proposer", self.cfg.proposer)
        if entry.prompted:
            return ""
        proposer = entry.described or f"the proposer {entry.name!r}"
        return (f"nothing reads guidance in this run: Level 1 proposes with {proposer}, which ignores it "
                "(only the Level 1 LLM reads guidance)")

    def _next_boundary(self) -> int:
        """The first iteration a mechanism activated from now on would run in."""
        running = self.state.running
        return self.state.next_iteration if running is None else max(running + 1, self.state.next_iteration)

    @property
    def pause_lifted(self) -> bool:
        """A resume (or a stop) arrived since the last pause was asked for."""
        return self._unpaused.is_set()

    @property
    def approvals_pending(self) -> bool:
        return bool(self._approvals)

    def expire_approvals(self, reason: str) -> None:
        """Pending approvals that can no longer apply: recorded as expired, never left pending."""
        for rid, fut in list(self._approvals.items()):
            self.emit(ev.ResearchFinished(research_id=rid, outcome="expired", name=self._awaiting.get(rid, ""),
                                          reason=reason))
            del self._approvals[rid]
            if not fut.done():
                fut.set_result(False)

    def _after_command(self, cmd: cmds.Command, source: str) -> None:
        if isinstance(cmd, cmds.Pause) and not self.state.paused:
            self._unpaused.clear()
            self.emit(ev.PauseRequested())
        elif isinstance(cmd, cmds.Resume):
            self._unpaused.set()
            if self.state.pause_requested and not self.state.paused:
                self.emit(ev.Unpaused())  # resumed before the pause took effect
        elif isinstance(cmd, cmds.Stop):
            self.request_stop(cmd.reason, hard=cmd.now)
        elif isinstance(cmd, cmds.AbortTraining):  # one trial's run, or (None) every one in progress
            for n, cancel in list(self.training_cancels.items()):
                if cmd.iteration in (None, n):
                    cancel.set()
        elif isinstance(cmd, cmds.SetBudget) and cmd.iterations is not None:
            self.emit(ev.BudgetChanged(iterations=cmd.iterations, source=source))
            self.cfg = config_mod.with_overrides(self.cfg, {"budget.iterations": cmd.iterations})
        elif isinstance(cmd, cmds.SetLimits):
            self.cfg = self._with_limits(cmd.limits)
            self.emit(ev.LimitsChanged(limits=config_mod.spend_limits(self.cfg), source=source))
        elif isinstance(cmd, cmds.SetGuidance):
            # Accepted even when nothing reads it (offline, a sampler): the log and the pane say so.
            self.emit(ev.GuidanceChanged(guidance=cmd.guidance, source="user", pinned=cmd.pinned,
                                         unread=self._guidance_unread()))
        elif isinstance(cmd, cmds.Freeze) and cmd.name not in self.state.frozen:
            self.emit(ev.ParamFrozen(name=cmd.name, reason=cmd.reason))
        elif isinstance(cmd, cmds.Unfreeze) and cmd.name in self.state.frozen:
            self.emit(ev.ParamUnfrozen(name=cmd.name, reason=cmd.reason))
        elif isinstance(cmd, (cmds.ApproveMechanism, cmds.RejectMechanism)):
            fut = self._approvals.pop(cmd.research_id)  # type: ignore[arg-type]
            if isinstance(cmd, cmds.ApproveMechanism):
                self.emit(ev.MechanismApproved(research_id=cmd.research_id or "",
                                               name=self._awaiting.get(cmd.research_id or "", ""),
                                               activates_at=self._next_boundary()))
            if not fut.done():
                fut.set_result(isinstance(cmd, cmds.ApproveMechanism))
        self.scheduler.poke()

    # --- limits: the spend caps and the stuck-loop rule (core/engine/limits.py) -----------------

    def _with_limits(self, changed: dict[str, Any]) -> Config:
        """The config with these [budget] limits, validated like a file (ConfigError says what is wrong)."""
        return config_mod.with_overrides(self.cfg, config_mod.limit_settings(changed))

    def _held_by(self) -> str:
        """The cause of the pause requested or in force ("" when none)."""
        s = self.state
        return s.pause_cause if (s.paused or s.pause_requested) else ""

    def check_limits(self, *, more: bool) -> None:
        """Between steps: warn at 50/80 % of a cap, pause at a reached cap or a stuck streak, and lift a
        limit's pause once the limits in force allow the run to go on.

        ``more``: iterations or trials are left; with none, only the audit's GPU-hours are left to cap.
        """
        warnings, reached = limits.check_caps(self.cfg, self.state, self._price())
        if not more:  # only the end-of-run audit is left to start: its training time, in total or its own
            reached = [r for r in reached if self.cfg.audit.enabled and r.key == "max_gpu_hours"
                       and r.scope in ("total", "audit")]
        for warning in warnings:
            self.emit(warning)
        stuck = limits.stuck_reason(self.cfg, self.state) if more else ""
        held = self._held_by()
        if reached:
            self._hold("budget", reached[0].reason(str(self.dir)))
        elif stuck:
            self._hold("stuck", stuck)
        elif held == "budget":
            self._lift("the caps in force allow more (spent so far: "
                       f"{limits.spend_line(limits.spent(self.state, self._price()))})")
        elif held == "stuck":
            rule = self.cfg.budget.stuck_after
            self._lift(f"budget.stuck_after is now {rule}" if rule else "the stuck-loop rule is off now")

    def _price(self) -> Price | None:
        """The model's price, read again only when the config object changes (a command replaces it)."""
        if self._priced_cfg is not self.cfg:
            self._priced_cfg, self._priced = self.cfg, price_of(self.cfg)
        return self._priced

    def _hold(self, cause: str, reason: str) -> None:
        s = self.state
        if self._held_by() == cause and limits.same_limit(s.pause_reason, reason):
            return
        self._unpaused.clear()
        if s.paused:  # paused already (by the user, or another limit): the pause now has this reason
            self.emit(ev.Paused(next_iteration=s.next_iteration, cause=cause, reason=reason))  # type: ignore[arg-type]
        else:
            self.emit(ev.PauseRequested(cause=cause, reason=reason))  # type: ignore[arg-type]

    def _lift(self, reason: str) -> None:
        self._unpaused.set()
        self.emit(ev.Unpaused(reason=reason))

    def _estimate(self) -> ev.SpendEstimated:
        slots = self.executor.slots
        devices = len([d for d in slots[0].devices.split(",") if d.strip()]) if slots and slots[0].devices else 1
        return estimate(self.cfg, slots=self.executor.capacity, devices_per_run=max(1, devices),
                        done=len(self.state.proposals))

    # --- the run ------------------------------------------------------------------------------

    async def run(self, *, audit_only: str = "") -> RunState:
        """Run (or continue) the experiment until its iteration budget, a stop, or a fatal error.

        ``audit_only``: the status the search had ended with; only an on-demand audit runs.
        """
        process_control.become_subreaper()  # setsid grandchildren of a run come back to us, to be ended
        commands = asyncio.create_task(self._command_loop())
        # Attached viewers (other processes) send commands as files in the session folder.
        channel = asyncio.create_task(watch_commands(self.dir, self.submit, log=self.log))
        try:
            if self.llm is None and not self.cfg.offline:
                self.llm = client_for(self.cfg)
            fresh = not self.state.session or self._began_here
            if fresh:
                await self.start_session()
            else:
                await self._restart()
            self.emit(ev.SlotsConfigured(executor=self.executor.name, address=self.executor.address,
                                         slots=[*self.executor.slots, *self.executor.skipped]))
            self.context.acceptance_policy()  # fail fast: a rule that needs a noise floor nobody measured
            await self._attach_initial_mechanisms()
            if fresh and not audit_only:
                await self._seed_from_ledger()
            if not audit_only:
                self.emit(self._estimate())  # what this run (or what is left of it) is expected to spend
            if audit_only:
                done = await Auditor(self.context, self.log).on_demand()
                await self.finish("stopped" if not done or self.stopping else audit_only,  # type: ignore[arg-type]
                                  "audit done" if done else self.stop_reason)
            else:
                await self.scheduler.run()
        except FatalRunError as exc:
            await self.finish("failed", str(exc))
        except (StorageFault, OSError) as exc:  # a full disk, a read-only folder, ...
            fault = storage_fault(exc)
            if fault is None:
                raise
            self._storage_failed(fault)
            try:  # the final event, when the folder still takes one
                await self.finish("failed", "")
            except (StorageFault, OSError):
                pass
        finally:
            commands.cancel()
            channel.cancel()
            await asyncio.gather(commands, channel, return_exceptions=True)
            while not self._commands.empty():  # arrived as the run ended: refused, in the log
                late, late_source = self._commands.get_nowait()
                name = late.name if isinstance(late, cmds.Unreadable) else late.command
                args = late.args if isinstance(late, cmds.Unreadable) else late.args()
                try:
                    self.emit(ev.CommandReceived(command=name, args=args, source=late_source, ok=False,
                                                 error=self._over()))
                except StorageFault:
                    break  # the folder takes no more: the fault is already the run's end
            await self.mechanisms.close()
            await self.context.close()  # the warm training workers
            if self._research_task is not None and not self._research_task.done():
                self._research_task.cancel()
                await asyncio.gather(self._research_task, return_exceptions=True)
            if self._own_llm and self.llm is not None:
                await self.llm.aclose()
            self._ended = True
            self.writer.close()
            self.lock.release()
        return self.state

    def _storage_failed(self, fault: StorageFault) -> None:
        """Remember the first storage fault and stop: nothing more can be recorded reliably."""
        if self.storage_fault is None:
            self.storage_fault = fault  # the CLI's one line and RunFinished's reason say it; no log line too
            self.request_stop(f"storage fault: {fault}", hard=True)

    def close(self) -> None:
        """Give up a session without running it (frees the log and the lock)."""
        self.writer.close()
        self.lock.release()

    async def outer_levels(self, cycle: int, n: int) -> None:
        """Level 1.5's cycle and, every research_period cycles, Level 2 (concurrent), after ``n`` iterations."""
        levels = self.cfg.search.active_levels
        if "strategy" in levels:
            await self.strategy.run_cycle(cycle, n)
        if "research" in levels and cycle % self.cfg.search.research_period == 0:
            if n >= self.cfg.budget.iterations:
                self.log(f"Level 2 skipped at cycle {cycle}: no iteration is left for a new mechanism to run in")
            elif self._research_task is not None and not self._research_task.done():
                self.log(f"Level 2 research still running; cycle {cycle} skips starting another")
            else:  # concurrent with the inner loop: it only reads the trace so far
                self._research_task = asyncio.create_task(self.research.run(cycle, n))
                if self.cfg.surrogate and self.cfg.level2.approval == "auto":
                    # A surrogate run answers in microseconds for a simulated TIME_BUDGET: the race between
                    # Level 2 and the inner loop would measure this machine, not the workload. It is modelled
                    # as finishing within one trial: its mechanism activates at the next boundary, every time.
                    await asyncio.wait({self._research_task})

    def queue_activation(self, ready: Ready) -> None:
        """Activate at the next iteration boundary, never mid-iteration."""
        self._ready.append(ready)

    async def await_approval(self, research_id: str, name: str) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._approvals[research_id] = fut
        self._awaiting[research_id] = name
        if self._finishing:  # validated after the last iteration: nothing left to approve it for
            self.expire_approvals(self._finishing)
        elif self._next_boundary() > self.cfg.budget.iterations:
            self.expire_approvals(f"no iteration is left for it to run in (#{self.cfg.budget.iterations} "
                                   "is the last)")
        try:
            return await fut
        finally:
            self._awaiting.pop(research_id, None)

    def mechanisms_in_play(self) -> set[str]:
        """Active, queued for activation, or waiting for approval: not worth researching again."""
        return set(self.mechanisms.names) | {r.name for r in self._ready} | set(self._awaiting.values())

    async def activate_ready(self) -> None:
        ready, self._ready = self._ready, []
        for r in ready:
            try:
                mech = (load_generated(r.path, f"bilevel_mechanism_{r.research_id.replace('-', '_')}",
                                       self.cfg, self.dir)
                        if r.origin == "generated" else builtin_mechanism(r.name, self.cfg.plugins))
            except (ImportError, ValueError) as exc:
                self.emit(ev.ResearchFinished(research_id=r.research_id, outcome="failed", name=r.name,
                                              reason=f"could not load the validated module: {exc}"))
                continue
            ok = await self.mechanisms.attach(mech, self.state, origin=r.origin, artifact=r.source_rel,
                                              description=r.description)
            self.emit(ev.ResearchFinished(research_id=r.research_id, outcome="activated" if ok else "failed",
                                          name=r.name, reason=r.description if ok else "on_attach failed"))

    async def _attach_initial_mechanisms(self) -> None:
        """Built-ins named in the config, and on resume whatever was active before."""
        previous = dict(self.state.mechanisms)
        drop_unfinished_research(self.state, self.emit)
        for name in self.cfg.search.active_mechanisms:
            if name not in self.state.mechanism_history:  # on resume: active ones follow, deactivated ones stay off
                await self.mechanisms.attach(builtin_mechanism(name, self.cfg.plugins), self.state, origin="config",
                                             description="enabled in the configuration")
        for name, e in previous.items():
            try:
                mech = (load_generated(layout.artifact_path(self.dir, e.artifact), f"bilevel_mechanism_resumed_{name}",
                                       self.cfg, self.dir)
                        if e.origin == "generated" else builtin_mechanism(name, self.cfg.plugins))
            except (ImportError, ValueError, OSError) as exc:
                self.emit(ev.MechanismDeactivated(name=name, reason=f"could not be reloaded on resume: {exc}"))
                continue
            await self.mechanisms.attach(mech, self.state, origin=e.origin, artifact=e.artifact,
                                         description="re-attached on resume")

    async def _seed_from_ledger(self) -> None:
        """level2.seed: each named ledger mechanism validated again and activated before the first iteration.

        The ledger is read here (the engine's I/O), the rest is Level 2's normal path (ResearchLevel.seed).
        A name matches any session's name for it; among several sources, the newest.
        """
        names = self.cfg.level2.seed
        if not names:
            return
        found: dict[str, SeedSource] = {}
        missing = ""
        try:
            with Ledger() as ledger:
                for name in names:
                    rows = ledger.find(name)
                    if rows:
                        m = rows[-1]
                        found[name] = SeedSource(m.name, m.origin, m.origin_session, m.source)
                missing = f" ({ledger.path})"
        except (sqlite3.Error, OSError) as exc:
            missing = f": the ledger could not be read ({exc})"
        for index, name in enumerate(names, 1):
            await self.research.seed(index, name, found.get(name), missing)

    async def before_search(self) -> bool:
        """After the baseline, before the first proposal: the declared σ, a fixed seed, the calibration."""
        if self._evidence_ready:
            return True
        calibration.before_search(self.context, self.log)
        if calibration.calibration_due(self.context) and not await calibration.calibrate(self.context, self.log):
            return False
        self._evidence_ready = True
        return True

    async def audit_at_end(self) -> bool:
        return await Auditor(self.context, self.log).at_end()

    async def run_audit(self) -> RunState:
        """``bilevel audit``: the keep-chain audit of a session whose search is over, as events in it."""
        # the search's own status: complete when no iteration of its budget is left
        done = self.state.next_iteration > self.cfg.budget.iterations and not self.state.in_flight
        prior = "completed" if done else (self.state.finished.status if self.state.finished is not None else "stopped")
        return await self.run(audit_only=prior)

    async def finish(self, status: str, reason: str) -> None:
        self._finishing = f"the run ended ({status}) before it was approved"
        self.context.release_waits()  # Level 2 waiting for a down endpoint must not hold the end
        self.expire_approvals(self._finishing)
        task = self._research_task
        if task is not None and not task.done():
            if status == "completed":
                await asyncio.wait({task})  # let the last research session finish and report
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for r in self._ready:  # validated (and approved) but the run ended before the next boundary
            self.emit(ev.ResearchFinished(research_id=r.research_id, outcome="expired", name=r.name,
                                          reason=f"the run ended ({status}) before it could be activated"))
        self._ready = []
        if self.storage_fault is not None:  # however the loop came to its end, this is why
            status, reason = "failed", f"storage fault: {self.storage_fault}"
        self.emit(ev.RunFinished(status=status, reason=reason, iterations=len(self.state.proposals),
                                 baseline_val_bpb=self.state.baseline_val_bpb, best_val_bpb=self.state.best_val_bpb))

    async def start_session(self) -> None:
        """Write SessionStarted, then prepare the data: everything before the first iteration."""
        self.begin_session()
        await self._ensure_data()

    def begin_session(self) -> None:
        """Write SessionStarted (durable) before anything slow, so every session folder can be resumed.

        Does nothing once the session has started; a bad script raises FatalRunError.
        """
        if self.state.session:
            return
        self._began_here = True
        cfg = self.cfg
        source_path = cfg.script_path()
        try:
            text = source_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FatalRunError(f"cannot read the training script {source_path}: {exc.strerror or exc}") from exc
        try:
            script = TrainScript.parse(text)
        except ValueError as exc:
            raise FatalRunError(f"{source_path}: {exc}") from exc
        folder = script_folder.inspect(source_path, text)
        if folder.problems:
            raise FatalRunError("; ".join(folder.problems))
        if cfg.surrogate and "NOISE_SIGMA" not in script.params:
            raise FatalRunError(f'script.preset = "surrogate" needs the surrogate script (baseline/surrogate.py or '
                                f"a copy of it); {source_path} has no NOISE_SIGMA constant")
        if cfg.search.scope == "code":
            self._check_code_scope(text)
        script = script.apply(self._protocol_overrides(script))
        data_info = {"source": cfg.data.source}  # the rest comes with data_prepared
        self.schema = self._build_schema(script)
        baseline_rel = self.artifact(layout.baseline_script_name(), script.text)
        self.emit(ev.SessionStarted(
            session=self.dir.name, name=cfg.name, provider=cfg.endpoint.provider,
            model=cfg.endpoint.model if not cfg.offline else "offline", group=cfg.search.group,
            levels=list(cfg.search.active_levels), config=cfg.to_dict(), script_source=str(source_path),
            script=baseline_rel, schema=self._schema_dicts(), frozen=[], guidance=cfg.search.guidance,
            seed=cfg.search.seed, data=data_info, version=__version__, surrogate=cfg.surrogate,
        ))
        self._emit_script_inspected(folder, script)

    def _check_code_scope(self, text: str) -> None:
        """search.scope = "code" needs a script that marks its protocol and a platform with the training wall."""
        if not code_edit.has_protocol(text):
            raise FatalRunError('search.scope = "code" needs a script that marks its protocol (the data loader, the '
                                'evaluation, the summary) between "# >>> protocol" and "# <<< protocol" lines, as '
                                "baseline/train.py does; this one marks none")
        if self.executor.name != "local":
            raise FatalRunError(f'search.scope = "code" trains behind the training wall on this machine; the '
                                f"{self.executor.name!r} executor is not supported")
        refused = code_run.wall_refusal(self.cfg.script.python or sys.executable)
        if refused:
            raise FatalRunError(refused)

    async def _restart(self) -> None:
        """Continue a session: re-run an iteration cut short, never a kept one."""
        self.schema = self._build_schema(TrainScript.parse(self.read_artifact(self.state.baseline_script)))
        for n in list(self.state.in_flight):  # every trial cut short: re-run, with its number, on any slot
            self.emit(ev.IterationInterrupted(iteration=n, reason="the process ended during this iteration"))
        await self._ensure_data()
        self.emit(ev.RunResumed(next_iteration=self.state.next_iteration, pid=os.getpid()))
        if self.cfg.budget.iterations != self.state.iterations_budget:  # e.g. resume --iterations N
            self.emit(ev.BudgetChanged(iterations=self.cfg.budget.iterations, source="resume"))
        recorded = self.state.limits
        if recorded is None:
            recorded = config_mod.spend_limits(from_dict(self.state.config))
        if config_mod.spend_limits(self.cfg) != recorded:  # e.g. resume --set budget.max_usd=…
            self.emit(ev.LimitsChanged(limits=config_mod.spend_limits(self.cfg), source="resume"))

    def _protocol_overrides(self, script: TrainScript) -> dict[str, Any]:
        """Preset values, then the run's time budget, written into the working copy."""
        from baseline.presets import PRESETS

        changes = {k: v for k, v in PRESETS[self.cfg.script.preset].items() if k in script.params}
        if not self.cfg.acceptance.allow_seed_tuning:  # the engine's seed, not the script's constant
            changes.update({name: self.cfg.search.seed for name in seed_params(script)})
        if "TIME_BUDGET" in script.params:
            budget = self.cfg.budget.time_s
            changes["TIME_BUDGET"] = int(budget) if float(budget).is_integer() else budget
        return {k: v for k, v in changes.items() if script.params[k].value != v}

    def _emit_script_inspected(self, folder: script_folder.ScriptFolder, script: TrainScript) -> None:
        measuring = script_folder.measurement_params(script)
        if not (folder.modules or folder.fixed_seeds or measuring):
            return
        self.emit(ev.ScriptInspected(
            script=str(folder.script), modules=list(folder.modules),
            constants={c.name: f"{c.where()} = {c.value!r}" for c in folder.constants},
            set_per_run={k: v for edits in folder.changes(self.cfg.budget.time_s).values() for k, v in edits.items()},
            fixed_seeds=[f"{s.call} (line {s.lineno})" for s in folder.fixed_seeds], seed_note=folder.seed_note(),
            locked=measuring))

    def _build_schema(self, script: TrainScript) -> dict[str, ParamSpec]:
        wanted = set(self.cfg.search.locked) | set(PROTOCOL_PARAMS) | set(script_folder.measurement_params(script))
        if not self.cfg.acceptance.allow_seed_tuning:
            wanted |= set(seed_params(script))
        locked = {p for p in wanted if p in script.params}
        missing = sorted(set(self.cfg.search.locked) - locked)
        if missing:
            self.log(f"search.locked names parameters this script does not have: {', '.join(missing)}")
        try:
            return infer_schema(script, locked=locked, bounds=self.cfg.search.bounds)
        except ValueError as exc:
            raise FatalRunError(f"search.bounds: {exc}") from exc

    async def _ensure_data(self) -> None:
        """The prepared data this session trains on; prepared (and recorded) when missing."""
        if self.cfg.data.source == "none" or self.state.data.get("source") == "none":
            return
        data_dir = self.state.data.get("dir")
        self.data_dir = Path(data_dir) if data_dir else None
        if self.data_dir is not None and (self.data_dir / layout.DATA_META_FILE).exists():
            return
        info = await self._prepare_data()
        if not data_dir:
            self.emit(ev.DataPrepared(data=info))

    async def _prepare_data(self) -> dict[str, Any]:
        source = self.cfg.data.source
        if source == "none" or self.cfg.surrogate:  # the surrogate reads no data
            return {"source": "none"}
        try:
            from baseline.prepare import PrepareError, prepare
        except ImportError as exc:  # a base install: no numpy
            raise FatalRunError(f"data preparation needs the training extra: "
                                f"pip install 'bilevel-autoresearch[train]' ({exc})") from exc

        d = self.cfg.data
        self.log(f"preparing data ({source}) — cached after the first time")
        try:
            data_dir = await asyncio.to_thread(
                prepare, source, name=d.name or None, max_bytes=d.max_bytes, vocab_size=d.vocab_size,
                log=self.log)
        except (PrepareError, OSError, ValueError) as exc:
            raise FatalRunError(f"data preparation failed: {exc}") from exc
        self.data_dir = Path(data_dir)
        meta = json.loads((self.data_dir / layout.DATA_META_FILE).read_text(encoding="utf-8"))
        if self.cfg.script.preset == "reference" and (warning := repeat_warning(meta, self.cfg.budget.time_s)):
            self.log(warning)  # the GPU workload would mostly re-read its data
        # Recorded so that runs on different corpora or tokenizers are never compared.
        keep = ("name", "content_sha256", "dataset_id", "tokenizer_id", "vocab_size", "source", "tokens")
        return {"dir": str(self.data_dir), **{k: meta[k] for k in keep if k in meta}}


def end_recorded_processes(events: list[ev.Event]) -> list[int]:
    """Kill what is left of the training runs a log records (an engine killed mid-run leaves them).

    Only processes that carry a recorded run tag are touched, so a reused pid or process
    group of someone else's is never signalled. Returns the pids ended.
    """
    tags = {e.tag for e in events if isinstance(e, ev.TrainingProcess) and e.tag}
    return process_control.end_tagged(tags) if tags else []


def load_generated(path: Path, module_name: str, cfg: Config, session_dir: Path) -> Any:
    """A validated generated module, to run in its isolated worker; any failure raises (never falls back)."""
    from core.engine.mechanism_host import generated_module

    return generated_module(path, module_name, cfg)


def builtin_mechanism(name: str, plugin_tables: Any = None) -> Any:
    """A built-in mechanism, or an installed plugin's made with its ``[plugins.NAME]`` options."""
    import mechanisms

    tables = plugin_tables or {}
    options = registry.settings(registry.entry("mechanism", name), tables) if name in tables else {}
    return mechanisms.builtin(name, **options)

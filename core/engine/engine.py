"""The asyncio orchestrator: schedules the levels, owns the command inbox, emits events.

Everything the engine knows is in its events: each emitted event is written to the
session log, applied to :class:`~core.record.state.RunState` and handed to subscribers (the
UI, the headless printer). The engine never blocks the event loop: training runs are
subprocesses read asynchronously, LLM calls are async, data preparation runs in a thread.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from core import __version__
from core.record import events as ev
from core.record import config as config_mod
from core.record.config import Config, from_dict
from core.engine.acceptance import AcceptanceError, AcceptancePolicy, build_policy
from core.services.executors import SlotPool
from core.levels.inner import FatalRunError, InnerLoop
from core.levels.research import Ready, ResearchLevel
from core.levels.strategy import StrategyLevel
from core.record.channel import watch_commands
from core.services.llm import ChatResult, LLMClient, LLMError
from core.engine.mechanism_host import MechanismHost
from core.services.script import ParamSpec, TrainScript, infer_schema
from core.services.seeds import seed_params
from core.record.session import SessionReader, SessionWriter, new_session_dir
from core.record.state import RunState, fold
from core.services.trainer import TrainResult, run_training

# Parameters that define the measurement rather than the model: never the LLM's to change.
PROTOCOL_PARAMS = ("TIME_BUDGET", "EVAL_TOKENS", "DEVICE", "COMPILE", "NOISE_SIGMA")
PROGRESS_EVERY_S = 0.2  # throttle for progress events
MAX_OUTPUT_EVENTS = 400  # training output lines per run as events; the log file has all
COMMANDS = ("pause", "resume", "stop", "abort_training", "set_guidance", "freeze", "unfreeze",
            "approve_mechanism", "reject_mechanism", "set_budget")

Subscriber = Callable[[ev.Event], None]


@dataclass
class Command:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str = "api"


class Engine:
    def __init__(self, cfg: Config, session_dir: Path, *, state: RunState | None = None,
                 llm: LLMClient | None = None, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(session_dir)
        self.writer = SessionWriter(self.dir)
        self.state = state or RunState()
        self.subscribers: list[Subscriber] = []
        self.log = log or (lambda msg: None)
        self.llm = llm
        self._own_llm = llm is None
        self.slots = SlotPool.from_config(None if cfg.run.gpus == "cpu" else cfg.run.gpus)
        self.schema: dict[str, ParamSpec] = {}
        self.data_dir: Path | None = None
        self.stopping = False
        self.stop_reason = ""
        self._acceptance: AcceptancePolicy | None = None
        self.last_script_artifact = ""
        self.last_error_tail = ""
        self._commands: asyncio.Queue[Command] = asyncio.Queue()
        self._unpaused = asyncio.Event()
        self._cancel_training: asyncio.Event | None = None
        self._current: asyncio.Task[Any] | None = None
        self.mechanisms = MechanismHost(self.emit, self._schema_dicts, cfg.level2.hook_timeout_s, self.dir)
        self.inner = InnerLoop(self)
        self.strategy = StrategyLevel(self)
        self.research = ResearchLevel(self)
        self._research_task: asyncio.Task[None] | None = None
        self._ready: list[Ready] = []  # validated mechanisms waiting for the next boundary
        self._approvals: dict[str, asyncio.Future[bool]] = {}
        self._awaiting: dict[str, str] = {}  # research id -> mechanism name, while approval is pending

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, cfg: Config, **kw: Any) -> "Engine":
        return cls(cfg, new_session_dir(cfg.sessions_path(), cfg.name), **kw)

    @classmethod
    def resume(cls, session_dir: Path, overrides: dict[str, Any] | None = None, **kw: Any) -> "Engine":
        state = fold(SessionReader(session_dir).events())
        if not state.session:
            raise FatalRunError(f"{session_dir}: the session never started (no session_started event)")
        data = json.loads(json.dumps(state.config))  # deep copy
        recorded = {"budget.iterations": state.iterations_budget} if state.iterations_budget is not None else {}
        for dotted, value in {**recorded, **(overrides or {})}.items():
            node = data
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        cfg = from_dict(data, source=f"{session_dir}/events.jsonl (session_started)")
        return cls(cfg, session_dir, state=state, **kw)

    # --- events ----------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> ev.Event:
        stamped = self.writer.append(event)
        self.state.apply(stamped)
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
        return (self.dir / relpath).read_text(encoding="utf-8")

    def interrupted(self, iteration: int) -> None:
        self.emit(ev.IterationInterrupted(iteration=iteration, reason=self.stop_reason or "interrupted"))

    def current_schema(self, values: dict[str, Any]) -> dict[str, ParamSpec]:
        """The schema with today's best values; bounds stay anchored at the baseline."""
        return {n: replace(s, value=values.get(n, s.value)) for n, s in self.schema.items()}

    def devices(self) -> list[str]:
        """The GPUs this run trains on (empty on the CPU): part of a noise floor's fingerprint."""
        return [s.devices for s in self.slots.slots if not s.is_cpu]

    def acceptance_policy(self) -> AcceptancePolicy:
        """The keep/discard rule of this run, recorded once by an AcceptanceConfigured event."""
        if self._acceptance is None:
            try:
                policy, event = build_policy(self.cfg, self.read_artifact(self.state.baseline_script),
                                             self.state.data, self.devices())
            except AcceptanceError as exc:
                raise FatalRunError(str(exc)) from exc
            self._acceptance = policy
            self.emit(event)
        return self._acceptance

    def _schema_dicts(self) -> dict[str, Any]:
        return {n: _spec_dict(s) for n, s in self.schema.items()}

    # --- commands ------------------------------------------------------------------------------

    def submit(self, command: str, /, source: str = "api", **args: Any) -> None:
        """Queue a command; it is acknowledged by a CommandReceived event."""
        self._commands.put_nowait(Command(command, args, source))

    def request_stop(self, reason: str, *, hard: bool = False) -> None:
        """Stop at the next iteration boundary; ``hard`` also cuts the running iteration short."""
        self.stopping = True
        self.stop_reason = reason
        self._unpaused.set()
        if hard:
            if self._cancel_training is not None:
                self._cancel_training.set()
            if self._current is not None and not self._current.done():
                self._current.cancel()

    async def _command_loop(self) -> None:
        while True:
            cmd = await self._commands.get()
            try:
                error = self._handle(cmd)
            except Exception as exc:  # noqa: BLE001 - a malformed command must not kill the inbox
                error = f"malformed command: {exc!r}"
            self.emit(ev.CommandReceived(command=cmd.name, args=cmd.args, source=cmd.source,
                                         ok=not error, error=error or ""))
            self._after_command(cmd, error)

    def _handle(self, cmd: Command) -> str | None:
        """Validate a command; returns an error message or None."""
        if cmd.name not in COMMANDS:
            return f"unknown command {cmd.name!r} (commands: {', '.join(COMMANDS)})"
        if cmd.name in ("freeze", "unfreeze"):
            name = cmd.args.get("name")
            if name not in self.schema:
                return f"unknown parameter {name!r}"
            if self.schema[name].locked:
                return f"{name} is locked by the configuration"
        if cmd.name == "set_guidance" and not isinstance(cmd.args.get("guidance"), str):
            return "set_guidance needs a 'guidance' string"
        if cmd.name == "set_budget":
            if cmd.args.get("time_s") not in (None, self.cfg.budget.time_s):
                return ("the time budget defines the measurement and cannot change mid-session; "
                        "start a new session to compare at another budget")
            iterations = cmd.args.get("iterations")
            if iterations is not None and (not isinstance(iterations, int) or isinstance(iterations, bool)
                                           or iterations < len(self.state.records) - 1):
                return f"iterations must be an integer ≥ {max(0, len(self.state.records) - 1)} (iterations done)"
        if cmd.name == "abort_training" and self._cancel_training is None:
            return "no training run is in progress"
        if cmd.name in ("approve_mechanism", "reject_mechanism"):
            rid = cmd.args.get("research_id")
            if rid is None and len(self._approvals) == 1:
                cmd.args["research_id"] = rid = next(iter(self._approvals))
            if rid not in self._approvals:
                waiting = ", ".join(self._approvals) or "none"
                return f"no mechanism waits for approval under {rid!r} (waiting: {waiting})"
        return None

    def _after_command(self, cmd: Command, error: str | None) -> None:
        if error:
            return
        if cmd.name == "pause" and not self.state.paused:
            self._unpaused.clear()
            self.emit(ev.PauseRequested())
        elif cmd.name == "resume":
            self._unpaused.set()
            if self.state.pause_requested and not self.state.paused:
                self.emit(ev.Unpaused())  # resumed before the pause took effect
        elif cmd.name == "stop":
            self.request_stop(cmd.args.get("reason", "stopped by the user"), hard=bool(cmd.args.get("now")))
        elif cmd.name == "abort_training" and self._cancel_training is not None:
            self._cancel_training.set()
        elif cmd.name == "set_budget" and cmd.args.get("iterations") is not None:
            self.emit(ev.BudgetChanged(iterations=cmd.args["iterations"], source=cmd.source))
            self.cfg = config_mod.with_overrides(self.cfg, {"budget.iterations": cmd.args["iterations"]})
        elif cmd.name == "set_guidance":
            self.emit(ev.GuidanceChanged(guidance=cmd.args["guidance"], source="user"))
        elif cmd.name == "freeze" and cmd.args["name"] not in self.state.frozen:
            self.emit(ev.ParamFrozen(name=cmd.args["name"], reason=cmd.args.get("reason", "frozen by the user")))
        elif cmd.name == "unfreeze" and cmd.args["name"] in self.state.frozen:
            self.emit(ev.ParamUnfrozen(name=cmd.args["name"], reason=cmd.args.get("reason", "unfrozen by the user")))
        elif cmd.name in ("approve_mechanism", "reject_mechanism"):
            fut = self._approvals.pop(cmd.args["research_id"])
            if not fut.done():
                fut.set_result(cmd.name == "approve_mechanism")

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> RunState:
        """Run (or continue) the experiment until its iteration budget, a stop, or a fatal error."""
        commands = asyncio.create_task(self._command_loop())
        # Attached viewers (other processes) send commands as files in the session folder.
        channel = asyncio.create_task(watch_commands(self.dir, self.submit, log=self.log))
        try:
            if self.llm is None and not self.cfg.offline:
                self.llm = _client_for(self.cfg)
            if not self.state.session:
                await self.start_session()
            else:
                await self._restart()
            self.acceptance_policy()  # fail fast: a rule that needs a noise floor nobody measured
            await self._attach_initial_mechanisms()
            await self._loop()
        except FatalRunError as exc:
            await self._finish("failed", str(exc))
        finally:
            commands.cancel()
            channel.cancel()
            await asyncio.gather(channel, return_exceptions=True)
            if self._research_task is not None and not self._research_task.done():
                self._research_task.cancel()
                await asyncio.gather(self._research_task, return_exceptions=True)
            if self._own_llm and self.llm is not None:
                await self.llm.aclose()
            self.writer.close()
        return self.state

    async def _loop(self) -> None:
        while True:
            if self.state.pause_requested and not self.stopping:
                self.emit(ev.Paused(next_iteration=self.state.next_iteration))
                await self._unpaused.wait()
                if not self.stopping:
                    self.emit(ev.Unpaused())
            if self.stopping:
                await self._finish("stopped", self.stop_reason)
                return
            n = self.state.next_iteration
            if n > self.cfg.budget.iterations:
                await self._finish("completed", f"{self.cfg.budget.iterations} iterations done")
                return
            await self._activate_ready()
            step = self.inner.run_baseline() if n == 0 else self._iteration_and_outer_levels(n)
            self._current = asyncio.create_task(step)
            try:
                await self._current
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                if self.state.running is not None:
                    self.interrupted(self.state.running)
            finally:
                self._current = None

    async def _iteration_and_outer_levels(self, n: int) -> None:
        await self.inner.run_iteration(n)
        levels = self.cfg.search.active_levels
        if n % self.cfg.search.outer_period:
            return
        cycle = n // self.cfg.search.outer_period
        if "strategy" in levels:
            await self.strategy.run_cycle(cycle, n)
        if "research" in levels and cycle % self.cfg.search.research_period == 0:
            if n >= self.cfg.budget.iterations:
                self.log(f"Level 2 skipped at cycle {cycle}: no iteration is left for a new mechanism to run in")
            elif self._research_task is not None and not self._research_task.done():
                self.log(f"Level 2 research still running; cycle {cycle} skips starting another")
            else:  # concurrent with the inner loop: it only reads the trace so far
                self._research_task = asyncio.create_task(self.research.run(cycle, n))

    def queue_activation(self, ready: Ready) -> None:
        """Activate at the next iteration boundary, never mid-iteration."""
        self._ready.append(ready)

    async def await_approval(self, research_id: str, name: str) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._approvals[research_id] = fut
        self._awaiting[research_id] = name
        try:
            return await fut
        finally:
            self._awaiting.pop(research_id, None)

    def mechanisms_in_play(self) -> set[str]:
        """Active, queued for activation, or waiting for approval: not worth researching again."""
        return set(self.mechanisms.names) | {r.name for r in self._ready} | set(self._awaiting.values())

    @property
    def generated_sources(self) -> dict[str, str]:
        return {name: self.read_artifact(e.artifact) for name, e in self.state.mechanisms.items()
                if e.origin == "generated" and e.artifact}

    async def _activate_ready(self) -> None:
        ready, self._ready = self._ready, []
        for r in ready:
            try:
                mech = (load_generated(r.path, f"bilevel_mechanism_{r.research_id.replace('-', '_')}",
                                       self.cfg, self.dir)
                        if r.origin == "generated" else builtin_mechanism(r.name))
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
        for name in self.cfg.search.active_mechanisms:
            if name not in previous:
                await self.mechanisms.attach(builtin_mechanism(name), self.state, origin="config",
                                             description="enabled in the configuration")
        for name, e in previous.items():
            try:
                mech = (load_generated(self.dir / e.artifact, f"bilevel_mechanism_resumed_{name}",
                                       self.cfg, self.dir)
                        if e.origin == "generated" else builtin_mechanism(name))
            except (ImportError, ValueError, OSError) as exc:
                self.emit(ev.MechanismDeactivated(name=name, reason=f"could not be reloaded on resume: {exc}"))
                continue
            await self.mechanisms.attach(mech, self.state, origin=e.origin, artifact=e.artifact,
                                         description="re-attached on resume")

    async def _finish(self, status: str, reason: str) -> None:
        task = self._research_task
        if task is not None and not task.done():
            if status == "completed" and not self._approvals:
                await asyncio.wait({task})  # let the last research session finish and report
                await self._activate_ready()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.emit(ev.RunFinished(status=status, reason=reason, iterations=len(self.state.proposals),
                                 baseline_val_bpb=self.state.baseline_val_bpb, best_val_bpb=self.state.best_val_bpb))

    async def start_session(self) -> None:
        """Prepare the data and write SessionStarted: everything before the first iteration."""
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
        if cfg.surrogate and "NOISE_SIGMA" not in script.params:
            raise FatalRunError(f'script.preset = "surrogate" needs the surrogate script (baseline/surrogate.py or '
                                f"a copy of it); {source_path} has no NOISE_SIGMA constant")
        script = script.apply(self._protocol_overrides(script))
        data_info = await self._prepare_data()
        self.schema = self._build_schema(script)
        baseline_rel = self.artifact("baseline/train.py", script.text)
        self.emit(ev.SessionStarted(
            session=self.dir.name, name=cfg.name, provider=cfg.endpoint.provider,
            model=cfg.endpoint.model if not cfg.offline else "offline", group=cfg.search.group,
            levels=list(cfg.search.active_levels), config=cfg.to_dict(), script_source=str(source_path),
            script=baseline_rel, schema=self._schema_dicts(), frozen=[], guidance=cfg.search.guidance,
            seed=cfg.search.seed, data=data_info, version=__version__, surrogate=cfg.surrogate,
        ))

    async def _restart(self) -> None:
        """Continue a session: re-run an iteration cut short, never a kept one."""
        self.schema = self._build_schema(TrainScript.parse(self.read_artifact(self.state.baseline_script)))
        if self.state.running is not None:
            self.emit(ev.IterationInterrupted(iteration=self.state.running,
                                              reason="the process ended during this iteration"))
        data_dir = self.state.data.get("dir")
        self.data_dir = Path(data_dir) if data_dir else None
        if self.data_dir is not None and not (self.data_dir / "meta.json").exists():
            await self._prepare_data()
        self.emit(ev.RunResumed(next_iteration=self.state.next_iteration, pid=os.getpid()))

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

    def _build_schema(self, script: TrainScript) -> dict[str, ParamSpec]:
        wanted = set(self.cfg.search.locked) | set(PROTOCOL_PARAMS)
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

    async def _prepare_data(self) -> dict[str, Any]:
        source = self.cfg.data.source
        if source == "none" or self.cfg.surrogate:  # the surrogate reads no data
            return {"source": "none"}
        from baseline.prepare import PrepareError, prepare

        d = self.cfg.data
        self.log(f"preparing data ({source}) — cached after the first time")
        try:
            data_dir = await asyncio.to_thread(
                prepare, source, name=d.name or None, max_bytes=d.max_bytes, vocab_size=d.vocab_size,
                log=self.log)
        except (PrepareError, OSError, ValueError) as exc:
            raise FatalRunError(f"data preparation failed: {exc}") from exc
        self.data_dir = Path(data_dir)
        meta = json.loads((self.data_dir / "meta.json").read_text(encoding="utf-8"))
        # Recorded so that runs on different corpora or tokenizers are never compared.
        keep = ("name", "content_sha256", "dataset_id", "tokenizer_id", "vocab_size", "source", "tokens")
        return {"dir": str(self.data_dir), **{k: meta[k] for k in keep if k in meta}}

    # --- services the levels use ------------------------------------------------------------

    async def call_llm(self, level: str, purpose: str, messages: list[dict[str, str]], *,
                       iteration: int | None = None, json: bool = False, stream_events: bool = False,
                       call_id: str | None = None) -> ChatResult:
        """One LLM call with its request and reply kept as artifacts and bracketed by events."""
        assert self.llm is not None, "no LLM client in offline mode"
        call_id = call_id or uuid.uuid4().hex[:10]
        stem = f"llm/{iteration if iteration is not None else 'x'}-{level}-{purpose}-{call_id}"
        request_rel = self.artifact(f"{stem}.request.json",
                                    _dumps({"model": self.llm.model, "messages": messages}))
        self.emit(ev.LLMRequest(call_id=call_id, level=level, purpose=purpose, iteration=iteration,
                                model=self.llm.model, artifact=request_rel))
        def delta(kind: str, text: str) -> None:
            self.emit(ev.LLMDelta(call_id=call_id, level=level, kind=kind, text=text))

        def retry(attempt: int, error: Exception, delay_s: float) -> None:
            # A retried stream starts over: viewers drop what they showed of this call.
            delta("reset", f"attempt {attempt} failed ({error}); retrying in {delay_s:.1f}s")

        started = time.monotonic()
        try:
            result = await self.llm.chat(messages, level=level, json=json, on_delta=delta if stream_events else None,
                                         on_retry=retry if stream_events else None)
        except LLMError as exc:
            self.emit(ev.LLMResponse(call_id=call_id, level=level, ok=False, error=str(exc),
                                     duration_s=time.monotonic() - started))
            raise
        reply = result.content if not result.reasoning else f"<reasoning>\n{result.reasoning}\n</reasoning>\n{result.content}"
        response_rel = self.artifact(f"{stem}.response.txt", reply)
        self.emit(ev.LLMResponse(call_id=call_id, level=level, ok=True, artifact=response_rel,
                                 prompt_tokens=result.usage.prompt_tokens,
                                 completion_tokens=result.usage.completion_tokens,
                                 duration_s=result.duration_s, attempts=result.attempts))
        return result

    async def train(self, iteration: int, text: str, diff: str, *, seed: int | None = None) -> TrainResult:
        """Run one training subprocess on a free slot, streaming its progress into events.

        ``seed``: an extra run (confirmation, noise) with that data-order seed instead of the
        session's; its script and log are kept beside the iteration's own, never replacing them.
        """
        folder = "baseline" if iteration == 0 else f"iterations/{iteration:04d}"
        suffix = "" if seed is None else f".seed{seed}"
        if seed is None:
            script_rel = self.artifact(f"{folder}/train.py", text) if iteration else self.state.baseline_script
        else:
            script_rel = self.artifact(f"{folder}/train{suffix}.py", text)
        run_seed = self.cfg.search.seed if seed is None else seed
        diff_rel = self.artifact(f"{folder}/diff.patch", diff) if diff else ""
        log_rel = f"artifacts/{folder}/train{suffix}.log"
        log_path = self.dir / log_rel
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)  # a re-run after an interruption starts a fresh log
        if seed is None:
            self.last_script_artifact = script_rel
        source_dir = Path(self.state.script_source or self.cfg.script_path()).parent
        emitter = _TrainingEmitter(self, iteration)
        cancel = self._cancel_training = asyncio.Event()
        try:
            async with self.slots.slot() as slot:
                env = {**slot.env(), "BILEVEL_SEED": str(run_seed),
                       # a user's script may import helpers that sit next to the original
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(source_dir), os.environ.get("PYTHONPATH")]))}
                if self.data_dir is not None:
                    env["BILEVEL_DATA_DIR"] = str(self.data_dir)
                self.emit(ev.TrainingStarted(iteration=iteration, script=script_rel, diff=diff_rel,
                                             slot=slot.devices or "cpu", budget_s=self.cfg.budget.time_s,
                                             seed=run_seed))
                result = await run_training(
                    self.dir / script_rel, cwd=source_dir, python=self.cfg.script.python or sys.executable,
                    budget_s=self.cfg.budget.time_s, grace_s=self.cfg.budget.deadline_grace_s, env=env,
                    log_path=log_path, on_progress=emitter.progress, on_line=emitter.line, cancel=cancel)
        finally:
            self._cancel_training = None
        emitter.flush()
        self.last_error_tail = result.error_tail
        self.emit(ev.TrainingFinished(
            iteration=iteration, outcome=result.outcome.value, val_bpb=result.val_bpb, metrics=result.metrics,
            exit_code=result.exit_code, duration_s=result.duration_s, reason=result.reason,
            error_tail=result.error_tail[-4000:], log=log_rel,
        ))
        return result


class _TrainingEmitter:
    """Turns a run's output into events without flooding the log."""

    def __init__(self, engine: Engine, iteration: int) -> None:
        self.engine, self.iteration = engine, iteration
        self._last = 0.0
        self._held: Any = None
        self._lines = 0

    def progress(self, p: Any) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            self._held = p
            return
        self._last, self._held = now, None
        self._emit_progress(p)

    def _emit_progress(self, p: Any) -> None:
        self.engine.emit(ev.TrainingProgress(iteration=self.iteration, step=p.step, percent=p.percent, loss=p.loss,
                                             tok_per_s=p.tok_per_s, mfu=p.mfu, remaining_s=p.remaining_s))

    def line(self, stream: str, text: str) -> None:
        self._lines += 1
        if self._lines <= MAX_OUTPUT_EVENTS:
            self.engine.emit(ev.TrainingOutput(iteration=self.iteration, stream=stream, line=text[:1000]))
        elif self._lines == MAX_OUTPUT_EVENTS + 1:
            self.engine.emit(ev.TrainingOutput(iteration=self.iteration, stream="stderr",
                                               line="… further output only in the training log"))

    def flush(self) -> None:
        if self._held is not None:
            self._emit_progress(self._held)
            self._held = None


def load_generated(path: Path, module_name: str, cfg: Config, session_dir: Path) -> Any:
    """A validated generated module, loaded in-process; any failure raises (never falls back)."""
    from mechanisms.sandbox import MechanismLoadError, load_mechanism

    try:
        return load_mechanism(path, module_name, allow_imports=cfg.level2.allow_imports, write_root=session_dir)
    except MechanismLoadError as exc:
        raise ImportError(str(exc)) from exc


def builtin_mechanism(name: str) -> Any:
    import mechanisms

    return mechanisms.builtin(name)


def _spec_dict(spec: ParamSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "value": spec.value, "locked": spec.locked, "minimum": spec.minimum,
            "maximum": spec.maximum, "choices": list(spec.choices) if spec.choices else None,
            "log_scale": spec.log_scale, "pow2": spec.pow2}


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


def _client_for(cfg: Config) -> LLMClient:
    e = cfg.endpoint
    return LLMClient(e.base_url, e.model, api_key_env=e.api_key_env or None, timeout_s=e.timeout_s,
                     max_retries=e.max_retries, stream=e.stream, json_mode=e.json_mode,
                     temperature=e.temperature, max_tokens=e.max_tokens)

"""The engine's side of the run context: what the levels receive instead of the Engine.

:class:`EngineContext` implements :class:`core.levels.context.RunContext` over one
engine: events, state, artifacts, training on a free slot with its progress as events,
and LLM calls kept as artifacts and bracketed by events. The levels see only the Protocol.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from core.record import events as ev
from core.record import layout
from core.record.processes import ProcessRecord, record_process, run_tag
from core.record.config import Config
from core.record.safe_text import safe_block
from core.engine.acceptance import AcceptanceError, AcceptancePolicy, build_policy, calibrated_floor
from core.levels.context import DEFAULT_MAX_TOKENS, FatalRunError, Ready, TrainRun
from core.services.environment import listed
from core.services import script_folder
from core.services.slot_sampler import SlotSampler
from core.services.surrogate_run import is_surrogate, run_surrogate
from core.services.executors import Executor, failure_class
from core.services.trial_request import TrialRequest
from core.services.llm import ChatResult, LLMClient, LLMError, is_outage
from core.services.endpoint_context import ServerContext, server_context
from core.engine.outage import Check, EndpointGate, Unusable, WaitAbandoned
from core.services import code_run
from core.services.script import ParamSpec, TrainScript
from core.services.trainer import TrainResult
from core.services.warm_worker import WarmPool, warm_plan

if TYPE_CHECKING:
    from core.engine.mechanism_host import MechanismHost
    from core.record.state import RunState

PROGRESS_EVERY_S = 0.2  # throttle for progress events
MAX_OUTPUT_EVENTS = 400  # training output lines per run as events; the log file has all
MAX_RETRIES = 2  # re-runs of one training after an OOM at start-up or a lost node


class EngineSide(Protocol):
    """What the context reads of the engine (``core.engine.engine.Engine``), named so no import is needed."""

    cfg: Config
    state: "RunState"
    schema: dict[str, ParamSpec]
    dir: Path
    stopping: bool
    stop_reason: str
    mechanisms: "MechanismHost"
    executor: Executor
    llm: LLMClient | None
    data_dir: Path | None
    training_cancels: dict[int, asyncio.Event]
    monotonic: Callable[[], float]

    def emit(self, event: ev.Event) -> ev.Event: ...
    def artifact(self, relpath: str, data: str | bytes) -> str: ...
    def read_artifact(self, relpath: str) -> str: ...
    def _schema_dicts(self) -> dict[str, Any]: ...
    def mechanisms_in_play(self) -> set[str]: ...
    def queue_activation(self, ready: Ready) -> None: ...
    async def await_approval(self, research_id: str, name: str) -> bool: ...


class EngineContext:
    """A :class:`~core.levels.context.RunContext` backed by one engine (its live config and state)."""

    def __init__(self, engine: EngineSide) -> None:
        self._engine = engine
        self._acceptance: AcceptancePolicy | None = None
        self._structured_recorded = ""  # the response_format mode last recorded by a StructuredOutput event
        self.endpoint = EndpointGate(self.emit, engine.monotonic)  # calls wait out outages here
        self.warm = WarmPool()  # the warm training workers, one per slot; ended by close()
        # GPU use per slot while trials run (NVML; nothing on CPU)
        self.sampler = SlotSampler(lambda: engine.executor.sample(),
                                   lambda samples: self.emit(ev.SlotsSampled(samples=samples)))

    async def close(self) -> None:
        await self.sampler.close()
        await self.warm.close()
        await self._engine.executor.close()

    # --- what the run is -----------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self._engine.cfg  # live: a budget change replaces the engine's config

    @property
    def state(self) -> "RunState":
        return self._engine.state

    @property
    def schema(self) -> dict[str, ParamSpec]:
        return self._engine.schema

    @property
    def session_dir(self) -> Path:
        return self._engine.dir

    @property
    def stopping(self) -> bool:
        return self._engine.stopping

    @property
    def mechanisms(self) -> "MechanismHost":
        return self._engine.mechanisms

    def emit(self, event: ev.Event) -> ev.Event:
        return self._engine.emit(event)

    def monotonic(self) -> float:
        return self._engine.monotonic()

    def artifact(self, relpath: str, data: str | bytes) -> str:
        return self._engine.artifact(relpath, data)

    def read_artifact(self, relpath: str) -> str:
        return self._engine.read_artifact(relpath)

    def interrupted(self, iteration: int) -> None:
        self.emit(ev.IterationInterrupted(iteration=iteration, reason=self._engine.stop_reason or "interrupted"))

    def current_schema(self, values: dict[str, Any]) -> dict[str, ParamSpec]:
        """The schema with today's best values and frozen directions; bounds stay anchored at the baseline."""
        frozen = self.state.frozen_directions
        return {n: replace(s, value=values.get(n, s.value), frozen_directions=tuple(sorted(frozen.get(n, ()))))
                for n, s in self.schema.items()}

    def schema_dicts(self) -> dict[str, Any]:
        return self._engine._schema_dicts()

    def devices(self) -> list[str]:
        """The GPUs this run trains on (empty on the CPU): part of a noise floor's fingerprint."""
        return [s.devices for s in self._engine.executor.slots if s.devices]

    def acceptance_policy(self) -> AcceptancePolicy:
        """The keep/discard rule of this run, recorded by an AcceptanceConfigured event (again when σ arrives)."""
        if self._acceptance is None:
            try:
                policy, event = build_policy(self.cfg, self.read_artifact(self.state.baseline_script),
                                             self.state.data, self.devices(),
                                             calibrated=calibrated_floor(self.state),
                                             declared=self.state.declared_sigma)
            except AcceptanceError as exc:
                raise FatalRunError(str(exc)) from exc
            self._acceptance = policy
            self.emit(event)
        return self._acceptance

    def refresh_acceptance(self) -> AcceptancePolicy:
        """σ became known (calibrated, or declared by the baseline): the rule is built and recorded again."""
        self._acceptance = None
        return self.acceptance_policy()

    # --- Level 2's hand-over ----------------------------------------------------------------

    def generated_sources(self) -> dict[str, str]:
        return {name: self.read_artifact(e.artifact) for name, e in self.state.mechanisms.items()
                if e.origin == "generated" and e.artifact}

    def mechanisms_in_play(self) -> set[str]:
        return self._engine.mechanisms_in_play()

    def queue_activation(self, ready: Ready) -> None:
        self._engine.queue_activation(ready)

    async def await_approval(self, research_id: str, name: str) -> bool:
        return await self._engine.await_approval(research_id, name)

    async def prescreen(self, ready: Ready) -> ev.MechanismPrescreened:
        from core.engine.prescreen import prescreened  # the bench loads the surrogate: only when needed

        return await prescreened(self.cfg, self.state, self.read_artifact, self.emit, ready)

    # --- services ------------------------------------------------------------------------------

    def release_waits(self) -> None:
        """A stop or the run's end: every call waiting for a down endpoint gives up (WaitAbandoned)."""
        self.endpoint.release()

    async def call_llm(self, level: str, purpose: str, messages: list[dict[str, str]], *,
                       iteration: int | None = None, json: bool = False, stream_events: bool = False,
                       call_id: str | None = None, schema: dict | None = None,
                       max_tokens: int | None = None, stream: bool | None = None,
                       check: Check | None = None, wait_out: bool = True) -> ChatResult:
        """One LLM call with its request and reply kept as artifacts and bracketed by events.

        Every retried attempt is an LLMRetry event; the reply's finish_reason and the
        max_tokens sent are on its LLMResponse; the response_format in force is a
        StructuredOutput event the first time and whenever the endpoint makes it change.
        `stream` overrides endpoint.stream for this call (None: the endpoint's setting).
        An outage (past the client's retries) or, with ``check`` (why a reply is unusable, or
        None), ``endpoint.unusable_replies`` unusable replies in a row never come back as a
        failure: the call waits, probing, until the endpoint answers (see core.engine.outage);
        ``wait_out=False`` (the check before the baseline) fails at once instead.
        """
        llm = self._engine.llm
        assert llm is not None, "no LLM client in offline mode"
        # prompts quote replies, guidance, mechanisms and logs: no control or invisible character reaches the model
        messages = [{**m, "content": safe_block(m["content"])} if isinstance(m.get("content"), str) else m
                    for m in messages]
        call_id = call_id or f"c{self.state.last_seq + 1}"  # the seq its request gets: unique, and the same in a re-run
        # a call's own limit wins: the levels pass reply_tokens (endpoint.max_tokens included), the check its own 16
        limit = max_tokens or self.cfg.endpoint.max_tokens or DEFAULT_MAX_TOKENS.get(level)
        stem = layout.llm_stem(iteration, level, purpose, call_id)
        request_rel = self.artifact(f"{stem}.request.json",
                                    _dumps({"model": llm.model, "messages": messages, "schema": schema,
                                            "max_tokens": limit}))
        self.emit(ev.LLMRequest(call_id=call_id, level=level, purpose=purpose, iteration=iteration,
                                model=llm.model, artifact=request_rel))
        def delta(kind: str, text: str) -> None:
            self.emit(ev.LLMDelta(call_id=call_id, level=level, kind=kind, text=text))

        def retry(attempt: int, error: LLMError, delay_s: float) -> None:
            self.emit(ev.LLMRetry(call_id=call_id, level=level, attempt=attempt, kind=error.kind,
                                  error=str(error)[:1000], delay_s=delay_s))
            if stream_events:  # a retried stream starts over: viewers drop what they showed of this call
                delta("reset", f"attempt {attempt} failed ({error}); retrying in {delay_s:.1f}s")

        def ask(max_retries: int | None = None) -> Any:
            return llm.chat(messages, level=level, json=json, on_delta=delta if stream_events else None,
                            on_retry=retry, schema=schema, schema_name=f"{level}_{purpose}",
                            max_tokens=limit, stream=stream, max_retries=max_retries)

        def probe_failed() -> None:
            if stream_events:
                delta("reset", "the endpoint is down; waiting for it")

        started = self.monotonic()
        endpoint = self.cfg.endpoint
        try:
            outage: LLMError | Unusable | None = None
            try:
                result = await ask()
            except LLMError as exc:
                if not is_outage(exc) or not wait_out:
                    raise
                outage = exc
            else:
                problem = check(result) if check is not None else None
                if self.endpoint.note_reply(problem, endpoint.unusable_replies) and wait_out:
                    self._keep_reply(stem, result)  # the reply that made it N in a row, for the record
                    outage = Unusable(f"{endpoint.unusable_replies} unusable replies in a row; the last: {problem}")
            if outage is not None:  # one budget of retries per call: past it the call waits, never fails
                result = await self.endpoint.hold(lambda: ask(0), call_id=call_id, level=level, error=outage,
                                                  check=check, sleep=llm.sleep, probe_max_s=endpoint.probe_max_s,
                                                  on_probe_failed=probe_failed)
        except (LLMError, WaitAbandoned) as exc:
            self._record_structured_mode(llm)
            self.emit(ev.LLMResponse(call_id=call_id, level=level, ok=False,
                                     error=str(exc) or "the run stopped while the endpoint was down",
                                     duration_s=self.monotonic() - started,
                                     attempts=getattr(exc, "attempts", 1), max_tokens=limit))
            raise
        if json:
            self._record_structured_mode(llm)
        response_rel = self._keep_reply(stem, result)
        self.emit(ev.LLMResponse(call_id=call_id, level=level, ok=True, artifact=response_rel,
                                 prompt_tokens=result.usage.prompt_tokens,
                                 completion_tokens=result.usage.completion_tokens,
                                 duration_s=self.monotonic() - started, attempts=result.attempts,
                                 finish_reason=result.finish_reason or "", max_tokens=limit))
        return result

    async def endpoint_context(self) -> ServerContext | None:
        llm = self._engine.llm
        return None if llm is None else await server_context(llm)

    def _keep_reply(self, stem: str, result: ChatResult) -> str:
        reply = result.content if not result.reasoning else f"<reasoning>\n{result.reasoning}\n</reasoning>\n{result.content}"
        return self.artifact(f"{stem}.response.txt", reply)

    def _record_structured_mode(self, llm: LLMClient) -> None:
        mode = llm.structured_mode
        if mode != self._structured_recorded:
            self._structured_recorded = mode
            self.emit(ev.StructuredOutput(mode=mode, configured=llm.structured, reason=llm.structured_reason))

    async def train(self, iteration: int, text: str, diff: str, *, seed: int | None = None) -> TrainRun:
        """Run one training subprocess on a free slot, streaming its progress into events.

        The surrogate (its own code, other constants) is evaluated in this process instead, with the
        same events (core/services/surrogate_run.py).

        ``seed``: an extra run (confirmation, noise) with that data-order seed instead of the
        session's; its script and log are kept beside the iteration's own, never replacing them.
        """
        eng = self._engine
        if seed is None and not iteration:
            script_rel = self.state.baseline_script
        else:
            script_rel = self.artifact(layout.train_script_name(iteration, seed), text)
        run_seed = self.cfg.search.seed if seed is None else seed
        diff_rel = self.artifact(layout.diff_name(iteration), diff) if diff else ""
        log_rel = layout.artifact_rel(layout.train_log_name(iteration, seed))
        log_path = layout.artifact_path(eng.dir, log_rel)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)  # a re-run after an interruption starts a fresh log
        source_dir = Path(self.state.script_source or self.cfg.script_path()).parent
        run_script, run_cwd = layout.artifact_path(eng.dir, script_rel), source_dir
        # On this machine's slots the surrogate runs in this process (a cluster's or a plugin's executor
        # still gets every trial); its code imports only the standard library: no sibling module to copy.
        in_process = getattr(eng.executor, "warm_workers", False) and is_surrogate(text)
        where = None if in_process else script_folder.inspect(
            Path(self.state.script_source or self.cfg.script_path()), text)
        # edited code: the training wall and the trusted evaluation (the surrogate has no protocol to guard)
        code = self.cfg.search.scope == "code" and not in_process
        if code and where is not None and where.needs_copy:
            raise FatalRunError('search.scope = "code" runs a one-file script (baseline/train.py\'s layout); '
                                "this script's folder has sibling modules")
        if where is not None and where.needs_copy:  # its sibling modules get this run's budget, in a copy
            run_cwd = run_script.parent / ("run" if seed is None else f"run.seed{seed}")
            try:
                run_script = script_folder.materialise(where, text, run_cwd, where.changes(self.cfg.budget.time_s))
            except (OSError, ValueError) as exc:
                raise FatalRunError(f"cannot copy the script's folder for this run: {exc}") from exc
        emitter = _TrainingEmitter(self, iteration)
        # The engine holds the event while the run lasts: abort_training (of it or of all) and a hard stop set it.
        cancel = eng.training_cancels[iteration] = asyncio.Event()
        try:
            attempt = 0
            tried: set[str] = set()  # slots an earlier attempt failed on: a retry goes elsewhere
            while True:  # an OOM before the first step, or a lost node, is re-run as the next attempt
                attempt += 1
                trained = False  # a step of the budget ran: an OOM after it is the script's, not the slot's

                def progress(p: Any) -> None:
                    nonlocal trained
                    trained = trained or bool(p.percent)
                    emitter.progress(p)

                async with self.sampler.running(), eng.executor.slot(avoid=frozenset(tried)) as slot:
                    tried.add(slot.name)
                    env = {**listed(self.cfg.run.pass_env, never=[self.cfg.endpoint.api_key_env]),
                           "BILEVEL_SEED": str(run_seed),
                           # a user's script may import helpers that sit next to the original
                           "PYTHONPATH": os.pathsep.join(filter(None, [str(source_dir), os.environ.get("PYTHONPATH")]))}
                    if eng.data_dir is not None:
                        env["BILEVEL_DATA_DIR"] = str(eng.data_dir)
                    python = self.cfg.script.python or sys.executable
                    walled = None
                    if code:  # a fresh run folder per attempt; the data it sees holds no validation split
                        folder = layout.artifact_path(eng.dir, layout.artifact_rel(layout.code_run_name(iteration, seed)))
                        walled = code_run.prepare(folder, python=python, script=run_script, script_dir=source_dir,
                                                  data_dir=eng.data_dir)
                        env.update(walled.env)
                        run_cwd = walled.folder
                    self.emit(ev.TrainingStarted(iteration=iteration, script=script_rel, diff=diff_rel,
                                                 slot=slot.name, budget_s=self.cfg.budget.time_s,
                                                 seed=run_seed, attempt=attempt))
                    emitter.starting()
                    tag = run_tag(eng.dir, resumes=self.state.resumes, iteration=iteration, attempt=attempt,
                                  seed=seed)

                    def started(pid: int, tag: str) -> None:
                        # the pid is the machine's: beside the log, so the log is the same in two runs
                        record_process(eng.dir, ProcessRecord(tag=tag, iteration=iteration, attempt=attempt,
                                                              pid=pid, pgid=pid, engine_pid=os.getpid()))
                        self.emit(ev.TrainingProcess(iteration=iteration, tag=tag, attempt=attempt, seed=seed))

                    trial = TrialRequest(attempt=attempt, cwd=run_cwd, python=python,
                                         budget_s=self.cfg.budget.time_s, grace_s=self.cfg.budget.deadline_grace_s,
                                         env=env, log_path=log_path, on_progress=progress, on_line=emitter.line,
                                         cancel=cancel, on_start=started, valid_bpb=self.cfg.acceptance.valid_val_bpb,
                                         tag=tag, clock=eng.monotonic, wrap=walled.wrap if walled else (),
                                         own_metric=walled is None)
                    plan = (warm_plan(text) if where is not None and self.cfg.run.worker == "warm"
                            and not where.needs_copy and eng.executor.warm_workers and not code else None)
                    if in_process:  # no process starts: its tag is recorded, no pid (core/services/surrogate_run.py)
                        self.emit(ev.TrainingProcess(iteration=iteration, tag=tag, attempt=attempt, seed=seed))
                        result = await run_surrogate(text, run_seed, trial)
                    elif plan is not None:
                        result = await self.warm.run(run_script, plan, seed=run_seed, slot=slot.name,
                                                     **trial.pinned(slot.env()).training_kwargs())
                    else:
                        result = await eng.executor.run(slot, run_script, trial)
                    if walled is not None:
                        result = await self._evaluate_trusted(iteration, attempt, walled, text, result, slot.env())
                emitter.flush()
                failure = failure_class(result)
                self.emit(ev.TrainingFinished(
                    iteration=iteration, outcome=result.outcome, val_bpb=result.val_bpb,
                    metrics=result.metrics, exit_code=result.exit_code, duration_s=result.duration_s,
                    reason=result.reason, error_tail=result.error_tail[-4000:], log=log_rel, worker=result.worker,
                    failure=failure, node=result.node, attempt=attempt,
                ))
                retry = failure == "infrastructure" or (result.outcome == "oom" and not trained)
                if not retry or attempt > MAX_RETRIES or cancel.is_set() or eng.stopping:
                    break
        finally:
            if eng.training_cancels.get(iteration) is cancel:
                del eng.training_cancels[iteration]
        return TrainRun(result, script_rel)

    async def _evaluate_trusted(self, iteration: int, attempt: int, walled: code_run.CodeRun, text: str,
                                result: TrainResult, slot_env: dict[str, str]) -> TrainResult:
        """Code scope: the run's score from the trusted evaluation of its exported model, or a crash saying why."""
        claimed = result.metrics.get("script_val_bpb")
        if result.outcome != "ok":
            return result
        eng = self._engine
        constants = TrainScript.parse(self.read_artifact(self.state.baseline_script)).values()
        constants["DEVICE_BATCH_SIZE"] = TrainScript.parse(text).values().get(
            "DEVICE_BATCH_SIZE", constants.get("DEVICE_BATCH_SIZE"))  # the shape it was exported at
        started = self.monotonic()
        found = await code_run.evaluate(walled, python=self.cfg.script.python or sys.executable, data_dir=eng.data_dir,
                                        constants=constants, env=slot_env,
                                        timeout_s=self.cfg.budget.deadline_grace_s + code_run.EVAL_GRACE_S)
        walled.model.unlink(missing_ok=True)  # weights are not kept: a session of code runs would fill the disk
        value, reason = found.val_bpb, found.reason
        low, high = self.cfg.acceptance.valid_val_bpb
        if value is not None and not low < value <= high:
            value, reason = None, f"invalid metric: the trusted evaluation's val_bpb {value!r} is not a measurement"
        self.emit(ev.TrustedEvaluation(iteration=iteration, attempt=attempt, val_bpb=value, causal=found.causal,
                                       reason=reason, script_val_bpb=claimed, training_s=result.duration_s,
                                       duration_s=self.monotonic() - started, wall=found.wall))
        if value is None:
            return replace(result, outcome="crash", val_bpb=None, failure="script",
                           reason=f"the trusted evaluation gave no score: {reason}", error_tail=reason)
        return replace(result, val_bpb=value, reason=f"val_bpb {value:.6f} from the trusted evaluation after "
                                                     f"{result.duration_s:.1f} s of training",
                       metrics={**result.metrics, "val_bpb": value})


class _TrainingEmitter:
    """Turns a run's output into events without flooding the log."""

    def __init__(self, ctx: EngineContext, iteration: int) -> None:
        self.ctx, self.iteration = ctx, iteration
        self._last = 0.0
        self._held: Any = None
        self._lines = 0
        self._phase: str | None = None

    def starting(self) -> None:
        """The run began and has printed no step yet: the bar says so instead of sitting at 0 %."""
        self._phase = "starting"
        self.ctx.emit(ev.TrainingProgress(iteration=self.iteration, phase="starting"))

    def progress(self, p: Any) -> None:
        now = time.monotonic()
        phase = progress_phase(p)
        changed, self._phase = phase != self._phase, phase
        if now - self._last < PROGRESS_EVERY_S and not changed:  # a new phase is never held back
            self._held = p
            return
        self._last, self._held = now, None
        self._emit_progress(p)

    def _emit_progress(self, p: Any) -> None:
        self.ctx.emit(ev.TrainingProgress(iteration=self.iteration, step=p.step, percent=p.percent, loss=p.loss,
                                          tok_per_s=p.tok_per_s, mfu=p.mfu, remaining_s=p.remaining_s,
                                          phase=progress_phase(p)))

    def line(self, stream: str, text: str) -> None:
        self._lines += 1
        if self._lines <= MAX_OUTPUT_EVENTS:
            self.ctx.emit(ev.TrainingOutput(iteration=self.iteration, stream=stream, line=text[:1000]))
        elif self._lines == MAX_OUTPUT_EVENTS + 1:
            self.ctx.emit(ev.TrainingOutput(iteration=self.iteration, stream="stderr",
                                            line="… further output only in the training log"))

    def flush(self) -> None:
        if self._held is not None:
            self._emit_progress(self._held)
            self._held = None


def progress_phase(p: Any) -> str | None:
    """What a progress line says the run is doing: nothing of the budget counted yet (the
    untimed warm-up and compile steps), training, or the budget spent (evaluation follows).
    ("starting", before the first line, is :meth:`_TrainingEmitter.starting`'s.)"""
    if p.percent is None:
        return None
    if p.percent >= 100.0 or p.remaining_s == 0:
        return "evaluating"
    return "compiling" if p.percent == 0.0 else "training"


def spec_dict(spec: ParamSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "value": spec.value, "locked": spec.locked, "minimum": spec.minimum,
            "maximum": spec.maximum, "choices": list(spec.choices) if spec.choices else None,
            "log_scale": spec.log_scale, "pow2": spec.pow2}


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


def client_for(cfg: Config) -> LLMClient:
    e = cfg.endpoint
    return LLMClient(e.base_url, e.model, api_key_env=e.api_key_env or None, timeout_s=e.timeout_s,
                     max_retries=e.max_retries, stream=e.stream, json_mode=e.json_mode,
                     temperature=e.temperature, max_tokens=e.max_tokens, structured=e.structured,
                     max_reply_bytes=e.max_reply_bytes)

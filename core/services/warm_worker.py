"""Warm training workers: one long-lived process per slot runs iteration after iteration.

A fresh run pays for the interpreter, torch, the data and the model build every time. A
script that declares ``WARM_SAFE`` (a module-level set of constant names, e.g.
``baseline/train.py``) can instead be started once as ``python script --warm``; it then
reads one JSON request per line on stdin (``{"constants": {...}, "seed": N}``), prints the
same progress lines and ``---`` metrics block a fresh run prints, and ends each iteration
with ``{"warm_worker": "done", "exit_code": N}`` on stdout and stderr.

A worker is reused only for a script whose code is the same (constant values aside) and
whose constants outside ``WARM_SAFE`` are the same: which constants keep tensor shapes is
the script's declaration, never a guess. A slot keeps up to two workers, one per shape, so
alternating shapes start no process; a third ends the one used least recently. Any
iteration that does not end OK (crash, divergence, deadline, cancel) ends its worker; the
next iteration gets a new one. Output is read, timed and classified by the same code as a fresh run
(:mod:`core.services.trainer`), so an iteration is recorded the same either way.
"""
from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.record.events import TrainingOutcome
from core.services import process_control as pc
from core.services.environment import compile_cache_env, training_env
from core.services.script import TrainScript
from core.services.train_output import Progress, _RunWatcher
from core.services.trainer import (
    VALID_BPB,
    TrainResult,
    classify,
    close_pipes,
    open_log,
    pump,
    stop_group,
)

WARM_SAFE_NAME = "WARM_SAFE"
_DONE_KEY = "warm_worker"
_POLL_S = 0.05


@dataclass(frozen=True)
class WarmPlan:
    """What decides whether a warm worker can run a script: its code and its shapes."""

    code_key: str  # hash of the script with every constant's value blanked
    shape: tuple[tuple[str, str], ...]  # the constants outside WARM_SAFE, as text
    constants: dict[str, object]  # every constant of this iteration's script


def warm_plan(text: str) -> WarmPlan | None:
    """The plan for a script that declares WARM_SAFE, or None (it runs fresh, as any script)."""
    try:
        tree = ast.parse(text)
        script = TrainScript.parse(text)
    except (SyntaxError, ValueError):
        return None
    safe = _declared_safe(tree)
    if safe is None:
        return None
    constants = script.values()
    for stmt in tree.body:  # blank the values: two iterations differ only there
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id in constants for t in targets):
                stmt.value = ast.Constant(None)
    code_key = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
    shape = tuple(sorted((k, repr(v)) for k, v in constants.items() if k not in safe))
    return WarmPlan(code_key, shape, constants)


def _declared_safe(tree: ast.Module) -> frozenset[str] | None:
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == WARM_SAFE_NAME):
            names = {n.value for n in ast.walk(stmt.value)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            return frozenset(names)
    return None


@dataclass
class _Iteration:
    """The run a worker is doing now: where its lines go and how it ended."""

    watcher: _RunWatcher
    done_streams: set[str] = field(default_factory=set)
    exit_code: int | None = None
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class _Worker:
    def __init__(self, key: tuple, proc: asyncio.subprocess.Process, tag: str) -> None:
        self.key, self.proc, self.tag = key, proc, tag
        self.current: _Iteration | None = None
        self.early: list[tuple[str, str]] = []  # lines before the first iteration (imports, warnings)
        self.iterations = 0
        assert proc.stdout is not None and proc.stderr is not None
        self.readers = [asyncio.ensure_future(pump(proc.stdout, "stdout", self._sink)),
                        asyncio.ensure_future(pump(proc.stderr, "stderr", self._sink))]

    def _sink(self, stream: str, line: str) -> None:
        if line.startswith('{"' + _DONE_KEY):
            self._control(stream, line)
            return
        it = self.current
        if it is None:
            self.early.append((stream, line))
            return
        if it.error is not None:
            return
        try:
            it.watcher.feed(stream, line)
        except BaseException as exc:  # a callback failed: the run stops and it propagates
            it.error = exc
            it.changed.set()

    def _control(self, stream: str, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        it = self.current
        if it is None or message.get(_DONE_KEY) != "done":
            return  # "ready", or a done with no iteration running (never sent one)
        it.done_streams.add(stream)
        if stream == "stdout":
            it.exit_code = int(message.get("exit_code", 1))
        it.changed.set()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> None:
        if self.alive and self.proc.stdin is not None:
            self.proc.stdin.close()
        await stop_group(self.proc, self.tag)
        await close_pipes(self.proc, self.readers)


class WarmPool:
    """The warm workers of an engine: per slot (keyed by the slot's devices) up to
    ``per_slot`` of them, one per script shape, so a search that alternates two shapes
    reuses both; a third shape ends the one used least recently."""

    def __init__(self, per_slot: int = 2) -> None:
        self.per_slot = max(1, per_slot)
        self._workers: dict[str, list[_Worker]] = {}  # per slot, the most recently used last
        self.started = 0  # workers started over the pool's life (tests and the bench read it)

    async def close(self) -> None:
        workers = [w for ws in self._workers.values() for w in ws]
        self._workers = {}
        for worker in workers:
            await worker.stop()

    async def _worker_for(self, slot: str, key: tuple) -> _Worker | None:
        """The slot's live worker for this key, now the most recently used; dead ones are dropped,
        and when none matches the slot is left room for one more."""
        workers = self._workers.setdefault(slot, [])
        for dead in [w for w in workers if not w.alive]:
            workers.remove(dead)
            await dead.stop()
        match = next((w for w in workers if w.key == key), None)
        if match is not None:
            workers.remove(match)
            workers.append(match)
            return match
        while len(workers) >= self.per_slot:
            await workers.pop(0).stop()
        return None

    def _forget(self, slot: str, worker: _Worker) -> None:
        workers = self._workers.get(slot, [])
        if worker in workers:
            workers.remove(worker)

    async def run(
        self,
        script: Path,
        plan: WarmPlan,
        *,
        seed: int,
        cwd: Path,
        slot: str = "cpu",
        python: str = sys.executable,
        budget_s: float,
        grace_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_line: Callable[[str, str], None] | None = None,
        cancel: asyncio.Event | None = None,
        on_start: Callable[[int, str], None] | None = None,
        valid_bpb: tuple[float, float] = VALID_BPB,
        clock: Callable[[], float] = time.monotonic,
        tag: str | None = None,
    ) -> TrainResult:
        """One iteration on the slot's warm worker (started, or replaced, as needed);
        the same contract as :func:`core.services.trainer.run_training`."""
        start, begun = time.monotonic(), clock()
        if cancel is not None and cancel.is_set():
            return TrainResult("cancelled", None, {}, None, 0.0, "", "cancelled before it started",
                               worker="warm")
        child_env = {k: v for k, v in {**compile_cache_env(), **training_env(env)}.items() if k != "BILEVEL_SEED"}
        key = (plan.code_key, plan.shape, python, str(cwd), tuple(sorted(child_env.items())))
        worker = await self._worker_for(slot, key)
        if worker is None:
            worker = await self._start(key, script, cwd, python, child_env, seed, tag)
            if isinstance(worker, TrainResult):
                return replace(worker, duration_s=clock() - begun)
            self._workers[slot].append(worker)
        log = open_log(log_path)
        try:
            it = _Iteration(_RunWatcher(log, on_progress, on_line))
            worker.current = it
            early, worker.early = worker.early, []  # the worker's start-up output belongs to its first run
            for stream, line in early:
                worker._sink(stream, line)
            if on_start is not None:
                on_start(worker.proc.pid, worker.tag)
            stopped = await self._request(worker, it, plan, seed, start + budget_s + grace_s, cancel)
            duration_s = clock() - begun
            if stopped is not None or it.exit_code is None or it.exit_code != 0 or it.error is not None:
                self._forget(slot, worker)
                await worker.stop()
            worker.current = None
            worker.iterations += 1
            if it.error is not None:
                raise it.error
        except BaseException:
            self._forget(slot, worker)
            pc.signal_group(worker.proc.pid, signal.SIGKILL)
            await worker.stop()
            raise
        finally:
            if log is not None:
                log.close()
        # the worker's own code when it ended the iteration; its exit status when it died in it
        exit_code = it.exit_code if it.exit_code is not None else worker.proc.returncode
        if exit_code is None:
            exit_code = -1
        metrics = it.watcher.metrics()
        outcome, reason = classify(stopped=stopped, exit_code=exit_code, watcher=it.watcher, metrics=metrics,
                                    budget_s=budget_s, grace_s=grace_s, duration_s=duration_s,
                                    valid_bpb=valid_bpb)
        ok = outcome == "ok"
        return TrainResult(outcome=outcome, val_bpb=metrics["val_bpb"] if ok else None, metrics=metrics,
                           exit_code=exit_code, duration_s=duration_s,
                           error_tail="" if ok else it.watcher.error_tail(), reason=reason, worker="warm")

    async def _start(self, key: tuple, script: Path, cwd: Path, python: str, env: dict[str, str],
                     seed: int, tag: str | None = None) -> _Worker | TrainResult:
        tag = tag or pc.new_tag()  # the tag of the run that starts it: the worker keeps it for its life
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-u", str(script), "--warm", cwd=str(cwd),
                env={**env, "BILEVEL_SEED": str(seed), "PYTHONUNBUFFERED": "1", pc.TAG_ENV: tag},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: the deadline kills all of it
                preexec_fn=pc.die_with_parent_preexec(),  # and the kernel kills it if the engine dies
            )
        except OSError as exc:
            return TrainResult("crash", None, {}, None, 0.0, str(exc),
                               f"could not start {python} {script}: {exc}", worker="warm")
        self.started += 1
        return _Worker(key, proc, tag)

    async def _request(self, worker: _Worker, it: _Iteration, plan: WarmPlan, seed: int,
                       deadline: float, cancel: asyncio.Event | None) -> TrainingOutcome | None:
        """Send the iteration and wait for its end; TIMEOUT or CANCELLED if it had to be stopped."""
        request = json.dumps({"constants": plan.constants, "seed": seed}) + "\n"
        assert worker.proc.stdin is not None
        try:
            worker.proc.stdin.write(request.encode())
            await worker.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died already: the exit is read below
        while True:
            if it.error is not None or (it.exit_code is not None and it.done_streams >= {"stdout", "stderr"}):
                return None
            if not worker.alive:
                await close_pipes(worker.proc, worker.readers)  # the traceback's last lines
                return None
            if cancel is not None and cancel.is_set():
                return "cancelled"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            it.changed.clear()
            try:
                await asyncio.wait_for(it.changed.wait(), timeout=min(remaining, _POLL_S * 4))
            except asyncio.TimeoutError:
                pass

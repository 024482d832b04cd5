"""Training runs on a Ray cluster through Ray Core (``pip install 'bilevel-autoresearch[ray]'``).

Each run is one streaming generator task (``num_returns="streaming"``, ``num_gpus=1``, or
``num_cpus=1`` on a cluster of CPU slots, ``max_retries=0``) that runs the same subprocess
runner as a local slot (:func:`core.services.trainer.run_training`) and yields what it sees:
first the script's pid, tag and node, then its lines and progress, last the result and the
log. Ray never retries a run: our own log records each attempt, and a run whose node was
lost comes back with ``failure="infrastructure"`` for the engine to re-run as the next attempt.
Cancel kills the script's whole process group where it runs (Ray's soft cancel does not stop
a task blocked on a subprocess), then ``ray.cancel(force=True)`` ends the task.

``run.ray_address`` joins a cluster; empty starts a local one with the configured slots
(``ray.init(num_cpus=…, num_gpus=…)``). Token authentication is Ray's own (2.60 turns it on
unless ``RAY_AUTH_MODE=disabled``; a local cluster writes its token to ``~/.ray/auth_token``):
the token comes from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or that file,
in the engine's environment; training scripts never see them (the training environment is an
allow-list, and the node's RAY_* variables are not on it). ``ray`` is imported only here, lazily.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import tempfile
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.record.events import SlotInfo, SlotSample, TrainingOutcome
from core.services import process_control as pc
from core.services.environment import allowed
from core.services.executors import (
    ExecutorError,
    Slot,
    SlotPool,
    failure_class,
    find_slots,
)
from core.services.trial_request import TrialRequest
from core.services.trainer import (
    TERM_GRACE_S,
    TrainResult,
    run_training,
)

EXTRA = "pip install 'bilevel-autoresearch[ray]'"
# How long past its own deadline a silent task is given before the run counts as lost.
SILENCE_GRACE_S = 60.0
KILL_WAIT_S = 5.0


def import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ExecutorError(f'run.executor = "ray" needs Ray, which is not installed here ({exc}): {EXTRA}') from exc


def check_token(address: str, environ: dict[str, str] | None = None) -> None:
    """Refuse to join a token-authenticated cluster without a token, before Ray fails less clearly."""
    env = os.environ if environ is None else environ
    if not address or env.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if _has_token(env):
        return
    raise ExecutorError(f"RAY_AUTH_MODE=token but no token for {address}: set RAY_AUTH_TOKEN, or "
                        f"RAY_AUTH_TOKEN_PATH to the token file, or put it in ~/.ray/auth_token "
                        "(`ray get-auth-token` on the head node prints it)")


def _has_token(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(env.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


# ---------------------------------------------------------------- the task (runs on a Ray worker)

def _train_task(script: str, text: str, cwd: str, python: str, budget_s: float, grace_s: float,
                env: dict[str, str], valid_bpb: tuple[float, float], tag: str) -> Any:
    """Run one training script where Ray placed this task; yield ("start"|"line"|"progress"|"result", …)."""
    import queue
    import threading

    import ray

    node = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    env = dict(env)
    if gpu_ids:  # the GPU Ray gave this task, in the order nvidia-smi numbers them
        env.update(CUDA_VISIBLE_DEVICES=",".join(gpu_ids), CUDA_DEVICE_ORDER="PCI_BUS_ID")
    scratch = Path(tempfile.mkdtemp(prefix="bilevel-ray-"))
    script_path = Path(script)
    if not script_path.is_file():  # another machine: the driver's files are not here
        script_path = scratch / script_path.name
        script_path.write_text(text, encoding="utf-8")
    workdir = Path(cwd) if Path(cwd).is_dir() else scratch
    log_path = scratch / "train.log"
    items: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def work() -> None:
        try:
            result = asyncio.run(run_training(
                script_path, cwd=workdir, python=python, budget_s=budget_s, grace_s=grace_s, env=env,
                log_path=log_path, tag=tag, valid_bpb=valid_bpb,
                on_start=lambda pid, tag: items.put(("start", pid, tag, node, ip, ",".join(gpu_ids))),
                on_line=lambda stream, line: items.put(("line", stream, line)),
                on_progress=lambda p: items.put(("progress", p))))
            log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
            items.put(("result", result, log))
        except BaseException as exc:  # noqa: BLE001 - the driver must hear of it, whatever it was
            items.put(("error", f"{type(exc).__name__}: {exc}"))

    # The runner's thread lives as long as the script: the script dies with it (PR_SET_PDEATHSIG).
    threading.Thread(target=work, name="bilevel-train", daemon=True).start()
    while True:
        item = items.get()
        yield item
        if item[0] in ("result", "error"):
            return


def _end_group_task(pgid: int, tag: str) -> int:
    """Kill a run's process group and every process carrying its tag, on the node it ran on."""
    pc.signal_group(pgid, signal.SIGKILL)
    return len(pc.end_tagged(tag))


# ---------------------------------------------------------------- the driver's side

class RayExecutor:
    """Slots on a Ray cluster: one per GPU (or per CPU on a cluster without GPUs)."""

    name = "ray"
    warm_workers = False  # its slots are the cluster's: every trial is a Ray task

    def __init__(self, ray: Any, *, address: str = "", started: bool = False) -> None:
        self._ray = ray
        self.address = address
        self._started = started  # we started this cluster, so close() shuts it down
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        self._unit = "gpu" if gpus else "cpu"
        count = gpus or cpus
        if count < 1:
            raise ExecutorError(f"the Ray cluster at {address or 'this machine'} has no GPU and no CPU to train on")
        self._slots = tuple(Slot(i, "", label=f"ray:{self._unit}{i}") for i in range(count))
        self.pool = SlotPool(slots=self._slots)
        options: dict[str, Any] = {"num_returns": "streaming", "max_retries": 0}
        options.update(num_gpus=1, num_cpus=0) if gpus else options.update(num_cpus=1)
        self._task = ray.remote(**options)(_train_task)
        self._end_group = ray.remote(num_cpus=0, max_retries=0)(_end_group_task)
        self._driver_ip = ray.util.get_node_ip_address()

    @classmethod
    def from_config(cls, run_cfg: Any) -> RayExecutor:
        """Join ``run.ray_address``, or start a local cluster with ``run.gpus``'s slots (or use the one running)."""
        ray = import_ray()
        address = str(getattr(run_cfg, "ray_address", "") or "").strip()
        if ray.is_initialized():  # one cluster per process: the one already joined (tests share one)
            return cls(ray, address=address)
        check_token(address)
        quiet = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **quiet)
                return cls(ray, address=address)
            found = find_slots(getattr(run_cfg, "gpus", "auto"))
            gpus = [slot for slot in found.slots if not slot.is_cpu]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if gpus:  # the cluster sees exactly the GPUs chosen (busy ones left out)
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(s.uuid or s.devices for s in gpus)
            try:
                ray.init(num_cpus=max(os.cpu_count() or 1, 1) if gpus else len(found.slots),
                         num_gpus=len(gpus), **quiet)
            finally:
                if visible is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = visible
        except ExecutorError:
            raise
        except Exception as exc:  # ConnectionError, an auth failure, a half-started cluster …
            what = f"join the Ray cluster at {address}" if address else "start a local Ray cluster"
            hint = "" if not address or _has_token() else (
                " (Ray 2.60 clusters authenticate by token unless started with RAY_AUTH_MODE=disabled: "
                "set RAY_AUTH_TOKEN or put the head node's `ray get-auth-token` in ~/.ray/auth_token)")
            raise ExecutorError(f"cannot {what}: {type(exc).__name__}: {exc}{hint}") from exc
        return cls(ray, started=True)

    @property
    def capacity(self) -> int:
        return self.pool.size

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        return tuple(slot.info() for slot in self._slots)

    @property
    def skipped(self) -> tuple[SlotInfo, ...]:
        return ()

    def slot(self, avoid: frozenset[str] = frozenset()) -> AbstractAsyncContextManager[Slot]:
        return self.pool.slot(avoid)

    def sample(self) -> list[SlotSample]:
        return []  # the nodes' NVML is not ours to read from here

    async def close(self) -> None:
        if self._started and self._ray.is_initialized():
            await asyncio.to_thread(self._ray.shutdown)

    async def run(self, slot: Slot, script: Path, trial: TrialRequest) -> TrainResult:
        """One run as a Ray task; lines and progress come back as it goes. Never raises for a lost node.

        ``trial.clock`` measures the durations recorded here (the engine's); deadlines keep the real clock."""
        cwd, python, budget_s, grace_s, env = trial.cwd, trial.python, trial.budget_s, trial.grace_s, trial.env
        log_path, on_progress, on_line, on_start = trial.log_path, trial.on_progress, trial.on_line, trial.on_start
        cancel, tag, valid_bpb, clock = trial.cancel, trial.tag, trial.valid_bpb, trial.clock
        begun, measured = time.monotonic(), clock()
        if cancel is not None and cancel.is_set():
            return TrainResult("cancelled", None, {}, None, 0.0, "", "cancelled before it started")
        tag = tag or pc.new_tag()
        # The node's own environment is the base (its PATH, its CUDA); ours adds the BILEVEL_* knobs.
        ours = {k: v for k, v in os.environ.items() if k.startswith("BILEVEL_") and allowed(k)}
        gen = self._task.remote(str(script), Path(script).read_text(encoding="utf-8"), str(cwd), python,
                                budget_s, grace_s, {**ours, **(env or {})}, tuple(valid_bpb), tag)
        run = _RemoteRun(tag)
        silence_deadline = begun + budget_s + grace_s + 2 * TERM_GRACE_S + SILENCE_GRACE_S
        waiter = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
        try:
            while True:
                nxt = asyncio.ensure_future(self._next(gen))
                watched = {nxt} | ({waiter} if waiter is not None else set())
                done, _ = await asyncio.wait(watched, timeout=max(silence_deadline - time.monotonic(), 0.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    cancelled = waiter is not None and waiter in done
                    await self._stop(gen, run)
                    if cancelled:
                        took = clock() - measured
                        return run.result("cancelled", f"cancelled after {took:.1f} s", took, log_path, "")
                    return run.result("crash", "the Ray task went silent past its deadline; ended it",
                                      clock() - measured, log_path, "infrastructure")
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return run.result("crash", "the Ray task ended without a result", clock() - measured, log_path,
                                      "infrastructure")
                except self._ray.exceptions.RayError as exc:
                    await self._stop(gen, run)
                    where = f" on node {run.node}" if run.node else ""
                    return run.result("crash", f"lost the run{where}: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}"[:500],
                                      clock() - measured, log_path, "infrastructure")
                kind = item[0]
                if kind == "start":
                    _, pid, _, run.node, run.ip, run.gpus = item
                    run.pid = pid
                    if on_start is not None:
                        on_start(pid, tag)
                elif kind == "line":
                    run.lines.append((item[1], item[2]))
                    if on_line is not None:
                        on_line(item[1], item[2])
                elif kind == "progress":
                    if on_progress is not None:
                        on_progress(item[1])
                elif kind == "result":
                    result, log = item[1], item[2]
                    _write_log(log_path, log)
                    return replace(result, node=run.node, failure=failure_class(result))
                else:  # "error": our runner failed on the node (no script, no disk …)
                    return run.result("crash", f"the Ray task failed: {item[1]}"[:500], clock() - measured,
                                      log_path, "infrastructure")
        except BaseException:
            await self._stop(gen, run)  # a cancelled engine task leaves nothing running anywhere
            raise
        finally:
            if waiter is not None and not waiter.done():
                waiter.cancel()

    async def _next(self, gen: Any) -> Any:
        ref = await gen.__anext__()
        return await ref

    async def _stop(self, gen: Any, run: _RemoteRun) -> None:
        """End the run's process tree where it runs, then the task; return once the tree is gone."""
        if run.pid and run.ip == self._driver_ip:
            pc.signal_group(run.pid, signal.SIGKILL)
            await asyncio.to_thread(pc.end_tagged, run.tag)
        elif run.pid:
            node_affinity = importlib.import_module("ray.util.scheduling_strategies").NodeAffinitySchedulingStrategy
            ref = self._end_group.options(scheduling_strategy=node_affinity(run.node, soft=False)).remote(run.pid, run.tag)
            try:
                await asyncio.wait_for(asyncio.wrap_future(ref.future()), KILL_WAIT_S)
            except Exception:  # noqa: BLE001, S110 - the node is gone or unreachable: its processes went with it
                pass
        try:
            self._ray.cancel(gen, force=True)
        except Exception:  # noqa: BLE001, S110 - already finished, or its worker is gone
            pass
        if run.pid and run.ip == self._driver_ip:
            await pc.wait_group_gone(run.pid, KILL_WAIT_S)
            await asyncio.to_thread(pc.end_tagged, run.tag)  # a child that was mid-fork at the first sweep


class _RemoteRun:
    """What the driver has heard of one run so far: where it runs and what it printed."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.pid = 0
        self.node = self.ip = self.gpus = ""
        self.lines: list[tuple[str, str]] = []

    def result(self, outcome: TrainingOutcome, reason: str, duration_s: float, log_path: Path | None,
               failure: str) -> TrainResult:
        _write_log(log_path, "".join(("[stderr] " if s == "stderr" else "") + line + "\n" for s, line in self.lines))
        tail = "\n".join(line for _, line in self.lines[-20:])
        return TrainResult(outcome, None, {}, None, duration_s, tail if outcome != "cancelled"
                           else "", reason, node=self.node, failure=failure)


def _write_log(log_path: Path | None, text: str) -> None:
    if log_path is None or not text:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(text)

"""One training run as a subprocess: deadline, process group, classification.

``run_training`` starts a training script in its own process group, streams its
stdout and stderr line by line without blocking the event loop, enforces a hard
deadline (budget + grace), kills the whole group, and every process tagged as
this run's, when the run ends for any reason, and classifies the result. A crash,
timeout, divergence or invalid metric never yields a number: ``TrainResult.val_bpb``
is set only when the outcome is ``"ok"``.

Reading the output lives in :mod:`core.services.train_output`; making processes die
with the engine in :mod:`core.services.process_control`.
Process groups and signals are POSIX; the product targets Linux GPU boxes.
"""
from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from core.record.events import TrainingOutcome
from core.services import process_control as pc
from core.services.train_output import (  # noqa: F401 - re-exported: the trainer's reading of output
    ERROR_TAIL_LINES, MAX_LINE_BYTES, Progress, _LineSplitter, _RunWatcher, parse_metrics, parse_progress,
)

from core.services.environment import compile_cache_env, training_env

# How long a group gets between SIGTERM and SIGKILL.
TERM_GRACE_S = 3.0
# How long to wait for the pipes to drain once the group is gone.
DRAIN_TIMEOUT_S = 5.0
_READ_CHUNK = 1 << 16
_POLL_S = 0.05
# val_bpb outside this range is not a measurement (bits per byte of text are positive).
VALID_BPB = (0.0, float("inf"))


@dataclass(frozen=True)
class TrainResult:
    outcome: TrainingOutcome
    val_bpb: float | None  # only set when outcome is OK; a crash is never a number
    metrics: dict[str, float]  # the parsed metrics block, possibly partial
    exit_code: int | None  # negative: killed by that signal; None: never started
    duration_s: float
    error_tail: str  # last lines of stderr (or stdout) for non-OK outcomes, else ""
    reason: str  # one readable sentence
    worker: str = "fresh"  # "fresh": its own process; "warm": an iteration of a warm worker
    node: str = ""  # the Ray node it ran on ("" locally)
    failure: str = ""  # who failed a run that did not finish: "" | "script" | "infrastructure"

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


async def pump(stream: asyncio.StreamReader, name: str, sink: Callable[[str, str], None]) -> None:
    splitter = _LineSplitter()
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            break
        for line in splitter.feed(chunk):
            sink(name, line)
    for line in splitter.close():
        sink(name, line)


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """Wait for the script itself to exit.

    Not ``proc.wait()``: on some Python versions that also waits for the pipes to
    close, which a child left behind holding stdout would delay forever.
    """
    while proc.returncode is None:
        await asyncio.sleep(_POLL_S)
    return proc.returncode


async def stop_group(proc: asyncio.subprocess.Process, tag: str) -> None:
    """SIGTERM the whole group, then SIGKILL what is left; wait for the leader's exit.

    Then kill every process still carrying the run's tag: children that left the group
    (their own ``setsid``) would otherwise live on and hold the output pipes open.
    """
    pgid = proc.pid
    if pc.group_has_live_members(pgid):
        pc.signal_group(pgid, signal.SIGTERM)
        if not await pc.wait_group_gone(pgid, TERM_GRACE_S):
            pc.signal_group(pgid, signal.SIGKILL)
            await pc.wait_group_gone(pgid, TERM_GRACE_S)
    await _exited(proc)
    await asyncio.to_thread(pc.end_tagged, tag, spare=proc.pid)


async def _supervise(
    proc: asyncio.subprocess.Process,
    readers: list[asyncio.Task[None]],
    deadline: float,
    cancel: asyncio.Event | None,
) -> TrainingOutcome | None:
    """Wait for the script to exit; return TIMEOUT or CANCELLED if it had to be stopped.

    A reader that fails (an on_line/on_progress callback raised) stops the run: the
    exception propagates after the caller has killed the group.
    """
    exited = asyncio.ensure_future(_exited(proc))
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    watched: set[asyncio.Future[object]] = {exited, *readers}
    if cancelled is not None:
        watched.add(cancelled)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            done, _ = await asyncio.wait(watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                return None
            if cancelled is not None and cancelled in done:
                return "cancelled"
            for reader in done:
                reader.result()  # re-raises a callback's exception
                watched.discard(reader)  # a stream closed early; the process goes on
    finally:
        for future in (exited, cancelled):
            if future is not None and not future.done():
                future.cancel()


async def close_pipes(proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]) -> None:
    """Let the readers finish the buffered output, then close the transport.

    A pipe still held by a process that escaped the group (its own setsid) would
    never reach EOF; its reader is given up on after DRAIN_TIMEOUT_S.
    """
    _, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
    for reader in pending:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    # asyncio has no public close for a Process; an unclosed transport warns at exit.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _raise_reader_error(readers: list[asyncio.Task[None]]) -> None:
    for reader in readers:
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]


# ---------------------------------------------------------------- classification

def _is_finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _exit_text(exit_code: int) -> str:
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        hint = " (the kernel's out-of-memory killer is a common cause)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exit_code}"


def _last_message(watcher: _RunWatcher) -> str:
    for name in ("stderr", "stdout"):
        for line in reversed(watcher.tails[name]):
            if line.strip():
                return line.strip()[:300]
    return ""


def _with_message(head: str, message: str) -> str:
    return f"{head}: {message}" if message else head


def classify(
    *,
    stopped: TrainingOutcome | None,
    exit_code: int,
    watcher: _RunWatcher,
    metrics: dict[str, float],
    budget_s: float,
    grace_s: float,
    duration_s: float,
    valid_bpb: tuple[float, float] = VALID_BPB,
    own_metric: bool = True,
) -> tuple[TrainingOutcome, str]:
    if stopped == "cancelled":
        return "cancelled", f"cancelled after {duration_s:.1f} s"
    if stopped == "timeout":
        return "timeout", (
            f"killed after {budget_s + grace_s:.1f} s deadline (budget {budget_s:g} s + grace {grace_s:g} s)"
        )
    nan_seen = watcher.divergence_line is not None or not _is_finite(watcher.last_loss)
    if exit_code != 0:
        if watcher.oom_line is not None:
            return "oom", f"out of memory ({_exit_text(exit_code)}): {watcher.oom_line[:300]}"
        if nan_seen or watcher.fast_fail:
            return "diverged", _divergence_reason(watcher, metrics, exit_code)
        return "crash", _with_message(_exit_text(exit_code), _last_message(watcher))
    if not own_metric:
        if nan_seen:
            return "diverged", _divergence_reason(watcher, metrics, exit_code)
        if watcher.block is None:
            return "no_metrics", "exit code 0 but the script printed no '---' summary block"
        return "ok", f"trained for {duration_s:.1f} s (scored by the trusted evaluation)"
    val_bpb = metrics.get("val_bpb")
    if nan_seen or not _is_finite(val_bpb):
        return "diverged", _divergence_reason(watcher, metrics, exit_code)
    if watcher.block is None:
        return "no_metrics", "exit code 0 but the script printed no '---' metrics block"
    if val_bpb is None:
        return "no_metrics", "exit code 0 but the metrics block has no val_bpb"
    low, high = valid_bpb
    if not low < val_bpb <= high:
        return "crash", (f"invalid metric: val_bpb {val_bpb!r} is not a measurement "
                               f"(it must be > {low:g} and ≤ {high:g})")
    return "ok", f"val_bpb {val_bpb:.6f} after {duration_s:.1f} s"


def _divergence_reason(watcher: _RunWatcher, metrics: dict[str, float], exit_code: int) -> str:
    if not _is_finite(metrics.get("val_bpb")):
        detail = f"val_bpb is {metrics['val_bpb']}"
    elif not _is_finite(watcher.last_loss):
        detail = f"training loss became {watcher.last_loss}"
    elif watcher.divergence_line is not None:
        detail = watcher.divergence_line[:300]
    else:
        detail = "the script's fast-fail check (FAIL) fired"
    return f"loss diverged ({_exit_text(exit_code)}): {detail}"


# ---------------------------------------------------------------- the run

def open_log(log_path: Path | None) -> IO[str] | None:
    if log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(log_path, "a", encoding="utf-8", buffering=1)


async def run_training(
    script: Path,
    *,
    cwd: Path,
    python: str = sys.executable,
    budget_s: float,
    grace_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_line: Callable[[str, str], None] | None = None,
    cancel: asyncio.Event | None = None,
    tag: str | None = None,
    on_start: Callable[[int, str], None] | None = None,
    valid_bpb: tuple[float, float] = VALID_BPB,
    clock: Callable[[], float] = time.monotonic,
    wrap: Sequence[str] = (),
    own_metric: bool = True,
) -> TrainResult:
    """Run ``python -u script`` in ``cwd`` and classify how it ended.

    The run is killed (whole process group, SIGTERM then SIGKILL) at
    ``budget_s + grace_s`` seconds or when ``cancel`` is set; when it returns, no
    process of the group remains. ``on_progress`` gets parsed progress lines,
    ``on_line`` every other line as ``(stream, line)``; an exception raised by
    either stops the run and propagates. Every process started carries ``tag`` (one is made
    if none is given) in its environment and is killed when the run ends, wherever it went;
    ``on_start(pid, tag)`` is called once the script runs (its pid is its process group).
    A val_bpb outside ``valid_bpb`` (low exclusive, high inclusive) is a crash: "invalid metric".
    ``clock`` measures the duration recorded (the engine's, which a test may fix); the deadline
    is always kept on the real monotonic clock. ``wrap``: a command the script's command line is
    handed to (the training wall). ``own_metric`` False (code scope): the script's own val_bpb line
    does not count, and a run that exits 0 with its summary is "ok" with no val_bpb: the trusted
    evaluation gives it one.
    """
    start, begun = time.monotonic(), clock()
    if cancel is not None and cancel.is_set():
        return TrainResult("cancelled", None, {}, None, 0.0, "", "cancelled before it started")
    tag = tag or pc.new_tag()
    # an allow-list (no API keys), plus the run tag that lets a resume find what this run started
    child_env = {**compile_cache_env(), **training_env(env), "PYTHONUNBUFFERED": "1", pc.TAG_ENV: tag}
    log = open_log(log_path)
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *wrap, python, "-u", str(script),
                cwd=str(cwd),
                env=child_env,
                stdin=asyncio.subprocess.DEVNULL,  # never read the terminal the TUI owns
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own process group, so the deadline kills all of it
                preexec_fn=pc.die_with_parent_preexec(),  # and the kernel kills it if the engine dies
            )
        except OSError as exc:
            return TrainResult(
                "crash", None, {}, None, clock() - begun, str(exc),
                f"could not start {python} {script}: {exc}",
            )
        watcher = _RunWatcher(log, on_progress, on_line)
        assert proc.stdout is not None and proc.stderr is not None
        if on_start is not None:
            try:
                on_start(proc.pid, tag)
            except BaseException:
                pc.signal_group(proc.pid, signal.SIGKILL)
                await stop_group(proc, tag)
                raise
        readers = [
            asyncio.ensure_future(pump(proc.stdout, "stdout", watcher.feed)),
            asyncio.ensure_future(pump(proc.stderr, "stderr", watcher.feed)),
        ]
        try:
            stopped = await _supervise(proc, readers, start + budget_s + grace_s, cancel)
        except BaseException:
            # A cancelled task or a failing callback: no time for politeness, but no orphans either.
            pc.signal_group(proc.pid, signal.SIGKILL)
            for reader in readers:
                reader.cancel()
            await stop_group(proc, tag)
            await close_pipes(proc, readers)
            raise
        await stop_group(proc, tag)
        duration_s = clock() - begun
        await close_pipes(proc, readers)
        _raise_reader_error(readers)
    finally:
        if log is not None:
            log.close()

    exit_code = proc.returncode if proc.returncode is not None else -1
    metrics = watcher.metrics()
    if not own_metric:
        if "val_bpb" in metrics:  # whatever the script printed: kept for the record, the trusted evaluation scores it
            metrics["script_val_bpb"] = metrics.pop("val_bpb")
        metrics["engine_seconds"] = round(duration_s, 3)  # the engine's clock, not the script's
    outcome, reason = classify(
        stopped=stopped, exit_code=exit_code, watcher=watcher, metrics=metrics,
        budget_s=budget_s, grace_s=grace_s, duration_s=duration_s, valid_bpb=valid_bpb,
        own_metric=own_metric,
    )
    ok = outcome == "ok"
    return TrainResult(
        outcome=outcome,
        val_bpb=metrics.get("val_bpb") if ok else None,
        metrics=metrics,
        exit_code=exit_code,
        duration_s=duration_s,
        error_tail="" if ok else watcher.error_tail(),
        reason=reason,
    )

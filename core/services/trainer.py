"""One training run as a subprocess: deadline, process group, progress and metrics.

``run_training`` starts a training script in its own process group, streams its
stdout and stderr line by line without blocking the event loop, enforces a hard
deadline (budget + grace), kills the whole group when the run ends for any reason,
and classifies the result. A crash, timeout or divergence never yields a number:
``TrainResult.val_bpb`` is set only when the outcome is ``Outcome.OK``.

The script contract (the autoresearch ``train.py`` format): progress lines such as
``step 00123 (45.2%) | loss: 3.456789 | ... | remaining: 164s`` during training,
and at the end a line ``---`` followed by ``key: value`` lines, at least ``val_bpb``.

Process groups and signals are POSIX; the product targets Linux GPU boxes.
"""
from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping

from core.services.environment import training_env

# How long a group gets between SIGTERM and SIGKILL.
TERM_GRACE_S = 3.0
# How long to wait for the pipes to drain once the group is gone.
DRAIN_TIMEOUT_S = 5.0
ERROR_TAIL_LINES = 30
# A "line" longer than this is cut so a script writing megabytes without a newline
# cannot grow our memory without bound.
MAX_LINE_BYTES = 1 << 20
_READ_CHUNK = 1 << 16
_POLL_S = 0.05
# Lines kept after the last '---' on stdout; a real metrics block is a dozen lines.
_MAX_BLOCK_LINES = 1000


class Outcome(str, Enum):
    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    NO_METRICS = "no_metrics"
    DIVERGED = "diverged"
    OOM = "oom"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Progress:
    step: int | None
    percent: float | None
    loss: float | None
    tok_per_s: float | None
    mfu: float | None
    remaining_s: float | None


@dataclass(frozen=True)
class TrainResult:
    outcome: Outcome
    val_bpb: float | None  # only set when outcome is OK; a crash is never a number
    metrics: dict[str, float]  # the parsed metrics block, possibly partial
    exit_code: int | None  # negative: killed by that signal; None: never started
    duration_s: float
    error_tail: str  # last lines of stderr (or stdout) for non-OK outcomes, else ""
    reason: str  # one readable sentence

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


# ---------------------------------------------------------------- parsing

_NUM = r"[-+]?(?:\d[\d,_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FLOATISH = rf"(?:{_NUM}|[-+]?nan|[-+]?inf(?:inity)?)"

_STEP_START_RE = re.compile(r"^\s*step\b\s*[:=#]?\s*\d", re.I)
_STEP_RE = re.compile(r"\bstep\b\s*[:=#]?\s*(\d[\d,]*)(?:\s*/\s*(\d[\d,]*))?", re.I)
_PERCENT_RE = re.compile(
    rf"\(\s*({_NUM})\s*%\s*\)|\b(?:progress|pct|done)\s*[:=]?\s*({_NUM})\s*%", re.I
)
# "val_loss" is a validation metric, not the training loss, hence the look-behind.
_LOSS_RE = re.compile(rf"(?<![\w])(?:train[_ ]?)?loss\s*[:=]?\s*({_FLOATISH})(?![\w])", re.I)
_TOK_RE = re.compile(rf"\btok(?:ens)?\s*/\s*s(?:ec)?\b\s*[:=]?\s*({_NUM})", re.I)
_MFU_RE = re.compile(rf"\bmfu\b\s*[:=]?\s*({_NUM})", re.I)
_REMAINING_RE = re.compile(
    rf"\b(?:remaining|eta)\b\s*[:=]?\s*({_NUM})\s*(s|sec|secs|seconds|m|min|mins|minutes|h)?\b", re.I
)
_UNIT_SECONDS = {"m": 60.0, "min": 60.0, "mins": 60.0, "minutes": 60.0, "h": 3600.0}

_METRIC_KEY_RE = re.compile(r"^[A-Za-z_][\w.\-/]*$")
_SEPARATOR = "---"

_OOM_RE = re.compile(r"out of memory|OutOfMemoryError|MemoryError", re.I)
_DIVERGED_RE = re.compile(
    r"loss\b[^|\n]{0,20}?(?<![\w.])[-+]?(?:nan|inf(?:inity)?)\b|\bdiverged\b", re.I
)
# autoresearch's train.py prints "FAIL" and exits 1 when the loss is NaN or exploding;
# it follows a \r progress line with no newline, so it usually ends that line.
_FAST_FAIL_RE = re.compile(r"(?:^|\s)FAIL$")


def _to_float(text: str) -> float:
    return float(text.replace(",", "").replace("_", ""))


def _search_float(pattern: re.Pattern[str], line: str) -> float | None:
    match = pattern.search(line)
    if match is None:
        return None
    value = next(group for group in match.groups() if group is not None)
    try:
        return _to_float(value)
    except ValueError:
        return None


def _parse_remaining(line: str) -> float | None:
    match = _REMAINING_RE.search(line)
    if match is None:
        return None
    try:
        seconds = _to_float(match.group(1))
    except ValueError:
        return None
    return seconds * _UNIT_SECONDS.get((match.group(2) or "s").lower(), 1.0)


def parse_progress(line: str) -> Progress | None:
    """Read a training progress line; None when the line is not one.

    A line counts as progress when it starts with ``step <n>``, or when it is a
    ``|``-separated line with at least two recognised fields. Fields may come in
    any order and any may be missing.
    """
    step: int | None = None
    percent: float | None = None
    step_match = _STEP_RE.search(line)
    if step_match is not None:
        step = int(step_match.group(1).replace(",", ""))
        total = step_match.group(2)
        if total is not None and int(total.replace(",", "")) > 0:
            percent = 100.0 * step / int(total.replace(",", ""))
    explicit_percent = _search_float(_PERCENT_RE, line)
    if explicit_percent is not None:
        percent = explicit_percent
    progress = Progress(
        step=step,
        percent=percent,
        loss=_search_float(_LOSS_RE, line),
        tok_per_s=_search_float(_TOK_RE, line),
        mfu=_search_float(_MFU_RE, line),
        remaining_s=_parse_remaining(line),
    )
    found = sum(value is not None for value in vars(progress).values())
    if _STEP_START_RE.match(line) or ("|" in line and found >= 2):
        return progress
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Parse the ``key: value`` block after the LAST line that is exactly ``---``.

    Lines that are not ``key: number`` are skipped; no ``---`` line means no metrics.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == _SEPARATOR]
    if not starts:
        return {}
    return _parse_block(lines[starts[-1] + 1 :])


def _parse_block(lines: Iterable[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not _METRIC_KEY_RE.match(key):
            continue
        try:
            metrics[key] = _to_float(value.strip())
        except ValueError:
            continue
    return metrics


# ---------------------------------------------------------------- streaming

_LINE_END_RE = re.compile(rb"\r\n|\r|\n")


class _LineSplitter:
    """Split a byte stream into lines at \\n, \\r\\n or a lone \\r (progress redraws)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._after_cr = False  # a chunk ended in \r: a leading \n in the next belongs to it

    def feed(self, data: bytes) -> list[str]:
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = False
        self._buffer += data
        lines: list[str] = []
        start = 0
        for match in _LINE_END_RE.finditer(self._buffer):
            ending = match.group()
            self._add(lines, self._buffer[start : match.start()], from_redraw=ending == b"\r")
            start = match.end()
            if ending == b"\r" and start == len(self._buffer):
                self._after_cr = True
        del self._buffer[:start]
        while len(self._buffer) > MAX_LINE_BYTES:
            self._add(lines, self._buffer[:MAX_LINE_BYTES], from_redraw=False)
            del self._buffer[:MAX_LINE_BYTES]
        return lines

    def close(self) -> list[str]:
        lines: list[str] = []
        if self._buffer:
            # The last write of a script often has no newline (a final \r progress line).
            self._add(lines, self._buffer, from_redraw=True)
            self._buffer = bytearray()
        return lines

    @staticmethod
    def _add(lines: list[str], raw: bytes | bytearray, *, from_redraw: bool) -> None:
        text = bytes(raw).decode("utf-8", errors="replace").rstrip()
        # A \r redraw leaves empty segments between updates; they are not lines.
        if text or not from_redraw:
            lines.append(text)


class _RunWatcher:
    """Everything learned from the output of one run, gathered as lines arrive."""

    def __init__(
        self,
        log: IO[str] | None,
        on_progress: Callable[[Progress], None] | None,
        on_line: Callable[[str, str], None] | None,
    ) -> None:
        self._log = log
        self._on_progress = on_progress
        self._on_line = on_line
        self.tails: dict[str, deque[str]] = {
            "stdout": deque(maxlen=ERROR_TAIL_LINES),
            "stderr": deque(maxlen=ERROR_TAIL_LINES),
        }
        self.block: list[str] | None = None  # stdout lines after the last '---'
        self.last_loss: float | None = None
        self.divergence_line: str | None = None
        self.fast_fail = False
        self.oom_line: str | None = None

    def feed(self, stream: str, line: str) -> None:
        if self._log is not None:
            self._log.write(("[stderr] " if stream == "stderr" else "") + line + "\n")
        self.tails[stream].append(line)
        if stream == "stdout":
            self._track_block(line)
        self._scan(line)
        progress = parse_progress(line)
        if progress is not None:
            if progress.loss is not None:
                self.last_loss = progress.loss
            if self._on_progress is not None:
                self._on_progress(progress)
        elif self._on_line is not None:
            self._on_line(stream, line)

    def _track_block(self, line: str) -> None:
        if line.strip() == _SEPARATOR:
            self.block = []
        elif self.block is not None and len(self.block) < _MAX_BLOCK_LINES:
            self.block.append(line)

    def _scan(self, line: str) -> None:
        if self.oom_line is None and _OOM_RE.search(line):
            self.oom_line = line.strip()
        if self.divergence_line is None and _DIVERGED_RE.search(line):
            self.divergence_line = line.strip()
        if _FAST_FAIL_RE.search(line):
            self.fast_fail = True

    def metrics(self) -> dict[str, float]:
        return _parse_block(self.block) if self.block is not None else {}

    def error_tail(self) -> str:
        tail = self.tails["stderr"] or self.tails["stdout"]
        return "\n".join(tail)


async def _pump(stream: asyncio.StreamReader, name: str, sink: Callable[[str, str], None]) -> None:
    splitter = _LineSplitter()
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            break
        for line in splitter.feed(chunk):
            sink(name, line)
    for line in splitter.close():
        sink(name, line)


# ---------------------------------------------------------------- process group

def _group_has_live_members(pgid: int) -> bool:
    """True while any non-zombie process is in the group.

    Zombies count as gone: they are dead and waiting for their parent (or init) to
    reap them, which we cannot hurry. Linux reads /proc; elsewhere killpg(0) is the
    best available answer.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may itself contain spaces and ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_has_live_members(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """Wait for the script itself to exit.

    Not ``proc.wait()``: on some Python versions that also waits for the pipes to
    close, which a child left behind holding stdout would delay forever.
    """
    while proc.returncode is None:
        await asyncio.sleep(_POLL_S)
    return proc.returncode


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the whole group, then SIGKILL what is left; wait for the leader's exit."""
    pgid = proc.pid
    if _group_has_live_members(pgid):
        _signal_group(pgid, signal.SIGTERM)
        if not await _wait_group_gone(pgid, TERM_GRACE_S):
            _signal_group(pgid, signal.SIGKILL)
            await _wait_group_gone(pgid, TERM_GRACE_S)
    await _exited(proc)


async def _supervise(
    proc: asyncio.subprocess.Process,
    readers: list[asyncio.Task[None]],
    deadline: float,
    cancel: asyncio.Event | None,
) -> Outcome | None:
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
                return Outcome.TIMEOUT
            done, _ = await asyncio.wait(watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                return None
            if cancelled is not None and cancelled in done:
                return Outcome.CANCELLED
            for reader in done:
                reader.result()  # re-raises a callback's exception
                watched.discard(reader)  # a stream closed early; the process goes on
    finally:
        for future in (exited, cancelled):
            if future is not None and not future.done():
                future.cancel()


async def _close_pipes(proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]) -> None:
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


def _classify(
    *,
    stopped: Outcome | None,
    exit_code: int,
    watcher: _RunWatcher,
    metrics: dict[str, float],
    budget_s: float,
    grace_s: float,
    duration_s: float,
) -> tuple[Outcome, str]:
    if stopped is Outcome.CANCELLED:
        return Outcome.CANCELLED, f"cancelled after {duration_s:.1f} s"
    if stopped is Outcome.TIMEOUT:
        return Outcome.TIMEOUT, (
            f"killed after {budget_s + grace_s:.1f} s deadline (budget {budget_s:g} s + grace {grace_s:g} s)"
        )
    nan_seen = watcher.divergence_line is not None or not _is_finite(watcher.last_loss)
    if exit_code != 0:
        if watcher.oom_line is not None:
            return Outcome.OOM, f"out of memory ({_exit_text(exit_code)}): {watcher.oom_line[:300]}"
        if nan_seen or watcher.fast_fail:
            return Outcome.DIVERGED, _divergence_reason(watcher, metrics, exit_code)
        return Outcome.CRASH, _with_message(_exit_text(exit_code), _last_message(watcher))
    val_bpb = metrics.get("val_bpb")
    if nan_seen or not _is_finite(val_bpb):
        return Outcome.DIVERGED, _divergence_reason(watcher, metrics, exit_code)
    if watcher.block is None:
        return Outcome.NO_METRICS, "exit code 0 but the script printed no '---' metrics block"
    if val_bpb is None:
        return Outcome.NO_METRICS, "exit code 0 but the metrics block has no val_bpb"
    return Outcome.OK, f"val_bpb {val_bpb:.6f} after {duration_s:.1f} s"


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

def _open_log(log_path: Path | None) -> IO[str] | None:
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
) -> TrainResult:
    """Run ``python -u script`` in ``cwd`` and classify how it ended.

    The run is killed (whole process group, SIGTERM then SIGKILL) at
    ``budget_s + grace_s`` seconds or when ``cancel`` is set; when it returns, no
    process of the group remains. ``on_progress`` gets parsed progress lines,
    ``on_line`` every other line as ``(stream, line)``; an exception raised by
    either stops the run and propagates.
    """
    start = time.monotonic()
    if cancel is not None and cancel.is_set():
        return TrainResult(Outcome.CANCELLED, None, {}, None, 0.0, "", "cancelled before it started")
    child_env = {**training_env(env), "PYTHONUNBUFFERED": "1"}  # an allow-list: no API keys
    log = _open_log(log_path)
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-u", str(script),
                cwd=str(cwd),
                env=child_env,
                stdin=asyncio.subprocess.DEVNULL,  # never read the terminal the TUI owns
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own process group, so the deadline kills all of it
            )
        except OSError as exc:
            return TrainResult(
                Outcome.CRASH, None, {}, None, time.monotonic() - start, str(exc),
                f"could not start {python} {script}: {exc}",
            )
        watcher = _RunWatcher(log, on_progress, on_line)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.ensure_future(_pump(proc.stdout, "stdout", watcher.feed)),
            asyncio.ensure_future(_pump(proc.stderr, "stderr", watcher.feed)),
        ]
        try:
            stopped = await _supervise(proc, readers, start + budget_s + grace_s, cancel)
        except BaseException:
            # A cancelled task or a failing callback: no time for politeness, but no orphans either.
            _signal_group(proc.pid, signal.SIGKILL)
            for reader in readers:
                reader.cancel()
            await _stop_group(proc)
            await _close_pipes(proc, readers)
            raise
        await _stop_group(proc)
        duration_s = time.monotonic() - start
        await _close_pipes(proc, readers)
        _raise_reader_error(readers)
    finally:
        if log is not None:
            log.close()

    exit_code = proc.returncode if proc.returncode is not None else -1
    metrics = watcher.metrics()
    outcome, reason = _classify(
        stopped=stopped, exit_code=exit_code, watcher=watcher, metrics=metrics,
        budget_s=budget_s, grace_s=grace_s, duration_s=duration_s,
    )
    ok = outcome is Outcome.OK
    return TrainResult(
        outcome=outcome,
        val_bpb=metrics["val_bpb"] if ok else None,
        metrics=metrics,
        exit_code=exit_code,
        duration_s=duration_s,
        error_tail="" if ok else watcher.error_tail(),
        reason=reason,
    )

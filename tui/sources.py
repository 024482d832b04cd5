"""Where the app's events come from, and where its commands go.

One interface, three sources:

- :class:`LiveSource` — an engine in this process (``bilevel run``/``resume``): the
  session's history, then every event the engine emits; commands go to ``engine.submit``.
- :class:`TailSource` — a session written by another process (``bilevel attach``):
  ``events.jsonl`` followed like ``tail -f``; commands are written to the session's
  command channel (:mod:`core.record.channel`), which the engine watches.
- :class:`ReplaySource` — a saved session (``bilevel replay``), read-only, at 1×/10×/100×
  or instantly, with pause, step and seek; a session still being written is followed.

(Tests and the benchmark push events through ``tests/support/queue_source.py``.)

The app consumes :meth:`Source.batches` in one worker; a :data:`RESET` item means "forget
everything shown, the events that follow start from the beginning" (a backward seek).
No Textual import here. Over ~500 lines because the replay (its timing, seek and the cheap
line index it opens long sessions with) shares the tail reader with attach; it is the
seam to cut once the typed decoder has replaced the byte scanning.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Union

from core.record import channel
from core.record import commands as cmds
from core.record import events as ev
from core.record import layout
from core.record.safe_text import safe_block
from core.record.session import LogChecker, LogProblem, SessionReader

RESET = "reset"
Batch = Union[list[ev.Event], str]
MAX_BATCH = 2000  # events handed over at once; the app yields to the screen between batches
POLL_S = 0.05


class ReadOnlyError(Exception):
    """A command was sent to a source that cannot deliver it (a replay)."""


class EngineGoneError(ReadOnlyError):
    """A command for a session whose engine has ended: nothing would ever read it."""


class Source:
    """The common surface; subclasses fill in :meth:`batches` and :meth:`send`."""

    mode = "source"
    read_only = False
    session_dir: Path | None = None

    def __init__(self) -> None:
        self.diagnostics: deque[str] = deque(maxlen=200)  # engine log lines that are not events
        self.caught_up = asyncio.Event()  # set whenever everything available has been handed over

    async def batches(self) -> AsyncIterator[Batch]:  # pragma: no cover - interface
        raise NotImplementedError
        yield []

    async def send(self, command: cmds.Command) -> None:
        raise ReadOnlyError(f"{self.mode}: read-only, commands cannot be sent")

    def engine_running(self) -> bool:
        """Whether quitting now would leave a running engine behind (or stop it)."""
        return False

    def read_artifact(self, relpath: str) -> str | None:
        """An artifact's text, or None when it is missing, unreadable or outside the session."""
        if not relpath or self.session_dir is None:
            return None
        try:
            return safe_block(layout.read_artifact(self.session_dir, relpath))  # shown on screen
        except (OSError, ValueError):  # ArtifactPathError and undecodable text are ValueErrors
            return None

    def describe(self) -> str:
        return self.mode.upper()

    async def close(self) -> None:
        pass


def parse_lines(data: bytes) -> list[ev.Event]:
    """Events from complete JSONL lines; an unreadable line is skipped (it is the writer's to repair)."""
    out: list[ev.Event] = []
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            out.append(ev.from_json(raw.decode("utf-8")))
        except (ValueError, TypeError):
            continue
    return out


class _Tail:
    """Reads the complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def read(self, limit: int = 8 << 20) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # the writer repaired a torn last line: re-read from there
                    self.offset, self._partial = size, b""
                fh.seek(self.offset)
                data = fh.read(limit)
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut]


# --- live: the engine runs in this process ----------------------------------------------------


class LiveSource(Source):
    mode = "live"

    def __init__(self, engine: Any, engine_task: "asyncio.Task[Any] | None" = None) -> None:
        super().__init__()
        self.engine = engine
        self.engine_task = engine_task
        self.session_dir = Path(engine.dir)
        self._queue: deque[ev.Event] = deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._history: list[ev.Event] = []
        if layout.is_session(self.session_dir):  # a resumed session: what happened before this process
            self._history = list(SessionReader(self.session_dir).events())
        self._last_seq = self._history[-1].seq if self._history else 0
        engine.subscribe(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        if event.seq and event.seq <= self._last_seq:
            return
        self._queue.append(event)
        # Not caught up from now on: until the consumer wakes, a waiter must not see the flag of an
        # earlier idle moment (that raced snapshot tests into painting a screen one batch short).
        self.caught_up.clear()
        self._notify()

    def log(self, message: str) -> None:
        """The engine's diagnostics (not events): shown in the event log, dimmed."""
        self.diagnostics.append(message)
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def batches(self) -> AsyncIterator[Batch]:
        self._loop = asyncio.get_running_loop()
        history, self._history = self._history, []
        for i in range(0, len(history), MAX_BATCH):
            yield history[i:i + MAX_BATCH]
        while True:
            if not self._queue:
                self.caught_up.set()
                self._wake.clear()
                if not self._queue:
                    await self._wake.wait()
            self.caught_up.clear()
            batch = []
            while self._queue and len(batch) < MAX_BATCH:
                batch.append(self._queue.popleft())
            yield batch

    async def send(self, command: cmds.Command) -> None:
        self.engine.submit(command, source="tui")

    def engine_running(self) -> bool:
        return self.engine_task is not None and not self.engine_task.done()

    def engine_error(self) -> BaseException | None:
        """The exception the engine's task ended with (a bug: the engine reports run errors as events)."""
        task = self.engine_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def describe(self) -> str:
        return "LIVE"


# --- attach: follow a session another process writes ---------------------------------------------


class TailSource(Source):
    mode = "attach"

    def __init__(self, session_dir: Path, *, poll_s: float = POLL_S) -> None:
        super().__init__()
        self.session_dir = Path(session_dir)
        self.poll_s = poll_s
        self._tail = _Tail(layout.events_path(self.session_dir))
        self.finished = False

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            data = await asyncio.to_thread(self._tail.read) if self._tail.offset == 0 else self._tail.read()
            if data:
                self.caught_up.clear()
                events = await asyncio.to_thread(parse_lines, data) if len(data) > 1 << 20 else parse_lines(data)
                for event in events:
                    if isinstance(event, ev.RunFinished):
                        self.finished = True
                    elif isinstance(event, (ev.RunResumed, ev.SessionStarted)):
                        self.finished = False
                for i in range(0, len(events), MAX_BATCH):
                    yield events[i:i + MAX_BATCH]
                continue
            self.caught_up.set()
            await asyncio.sleep(self.poll_s)

    async def send(self, command: cmds.Command) -> None:
        if not self.engine_running():  # a command file nobody reads would sit there unanswered
            state = "the run is over" if self.finished else "no engine runs this session any more"
            raise EngineGoneError(f"{command.command} not sent: {state}; bilevel resume {self.session_dir} "
                                  "continues the session")
        await asyncio.to_thread(channel.write_command, self.session_dir, command)

    def engine_pid(self) -> int | None:
        try:
            return int(layout.engine_pid_path(self.session_dir).read_text().strip())
        except (OSError, ValueError):
            return None

    def engine_running(self) -> bool:
        if self.finished:
            return False
        pid = self.engine_pid()
        if pid is None:
            return True  # no pid file (started in a terminal): assume it runs while not finished
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        return "ATTACHED"


# --- replay: a saved session at a chosen speed -------------------------------------------------------

SPEEDS: tuple[float, ...] = (1.0, 10.0, 100.0, float("inf"))
MAX_GAP_S = 5.0  # a long silence in the log (a pause, a night) replays as at most this, times the speed


def speed_label(speed: float) -> str:
    return "instant" if speed == float("inf") else f"{speed:g}×"


class SessionLog:
    """A session's events, decoded once as they are read (the codec does ~1M lines/s).

    Most lines of a long session are training progress and output; for the screen only
    the last progress line before a later event matters, and stdout output not at all,
    so a jump hands over a fraction of them (see :meth:`for_display`).
    """

    def __init__(self) -> None:
        self._events: list[ev.Event] = []
        self._lines = 0  # lines read so far, blank ones included (for line numbers)
        self.unreadable: list[tuple[int, str]] = []  # (line number, why): the reader's to report

    def __len__(self) -> int:
        return len(self._events)

    def extend(self, data: bytes) -> None:
        """Add complete lines (``data`` ends with a newline)."""
        lines = data.split(b"\n")[:-1]
        first, self._lines = self._lines + 1, self._lines + len(lines)
        for n, line in enumerate(lines, first):
            if not line.strip():
                continue
            try:
                event = ev.decode(line)
            except ValueError as exc:
                self.unreadable.append((n, str(exc)))
                event = ev.UnknownEvent(name="unreadable", data={"line": n, "error": str(exc)})
            self._events.append(event)

    def event(self, i: int) -> ev.Event:
        return self._events[i]

    def events(self, start: int, end: int) -> list[ev.Event]:
        return self._events[start:end]

    def for_display(self, start: int, end: int) -> list[ev.Event]:
        """The events of ``[start, end)`` a screen needs to show the state after them.

        Superseded progress lines and stdout lines are skipped (the screen shows only each
        trial's latest progress; stdout lives in the training log), and a run of streamed tokens of
        one call arrives as one :class:`~core.record.events.MergedDeltas` carrying their count.
        """
        out: list[ev.Event] = []
        last_progress: dict[int, ev.TrainingProgress] = {}  # per trial: parallel trials interleave
        run: list[ev.LLMDelta] = []

        def flush_run() -> None:
            if run:
                out.append(merged_delta(run))
                run.clear()

        for event in self._events[start:end]:
            if isinstance(event, ev.TrainingProgress):
                last_progress.pop(event.iteration, None)  # re-inserted: the order they came in stays
                last_progress[event.iteration] = event
                continue
            if isinstance(event, ev.TrainingOutput) and event.stream != "stderr":
                continue
            if last_progress:
                flush_run()
                out.extend(last_progress.values())  # each bar's state when the next event came
                last_progress.clear()
            if isinstance(event, ev.LLMDelta):
                if run and (run[-1].call_id, run[-1].kind) != (event.call_id, event.kind):
                    flush_run()
                run.append(event)
                continue
            flush_run()
            out.append(event)
        flush_run()
        out.extend(last_progress.values())
        return out

    def ts(self, i: int) -> float:
        return self._events[i].ts

    def find(self, kinds: tuple[type[ev.Event], ...], start: int = 0, end: int | None = None) -> list[int]:
        stop = len(self._events) if end is None else end
        events = self._events
        return [i for i in range(start, stop) if isinstance(events[i], kinds)]


def merged_delta(parts: list[ev.LLMDelta]) -> ev.LLMDelta:
    """Consecutive deltas of one call as one event; ``merged`` keeps their count (the token estimate)."""
    first, last = parts[0], parts[-1]
    if len(parts) == 1:
        return first
    return ev.MergedDeltas(seq=last.seq, ts=last.ts, call_id=first.call_id, level=first.level, kind=first.kind,
                           text="".join(p.text for p in parts), merged=len(parts))


class ReplaySource(Source):
    mode = "replay"
    read_only = True

    def __init__(self, session_dir: Path, *, speed: float = float("inf"), follow: bool = True,
                 poll_s: float = POLL_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.session_dir = Path(session_dir)
        self.speed = speed
        self.follow = follow
        self.poll_s = poll_s
        self._clock = clock
        self._tail = _Tail(layout.events_path(self.session_dir))
        self._checker = LogChecker(layout.events_path(self.session_dir))  # the warnings headless replay prints
        self.events = SessionLog()
        self.position = 0  # events handed over so far
        self.paused = False
        self._wake = asyncio.Event()
        self._step_to: int | None = None  # when paused: hand over up to this index, then stop
        self._reset_to: int | None = None  # a seek: RESET, then hand over up to this index

    # controls (called from the app) ---------------------------------------------------------------

    def set_speed(self, speed: float) -> None:
        self.speed = speed
        self._wake.set()

    def faster(self) -> None:
        i = SPEEDS.index(self.speed) if self.speed in SPEEDS else 0
        self.set_speed(SPEEDS[min(i + 1, len(SPEEDS) - 1)])

    def slower(self) -> None:
        i = SPEEDS.index(self.speed) if self.speed in SPEEDS else len(SPEEDS) - 1
        self.set_speed(SPEEDS[max(i - 1, 0)])

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self._step_to = None
        self._wake.set()

    def step(self) -> None:
        """Pause, then advance to the end of the next iteration (or the next event if none)."""
        self.paused = True
        self._load()
        self._step_to = self._index_after_iteration(self.position)
        self._wake.set()

    def seek(self, iteration: int) -> int:
        """Show the session as it stood when ``iteration`` finished; returns the event index."""
        self._load()
        log = self.events
        target = None
        for i in log.find((ev.IterationFinished, ev.IterationInterrupted)):
            if getattr(log.event(i), "iteration", None) == iteration:
                target = i + 1
        if target is None:
            starts = [i for i in log.find((ev.IterationStarted,)) if log.event(i).iteration >= iteration]  # type: ignore[attr-defined]
            target = starts[0] if starts else len(log)
        self.paused = True  # a seek lands paused, so what was asked for stays on screen
        if target >= self.position:
            self._step_to = target
        else:
            self._reset_to = target
        self._wake.set()
        return target

    def iterations(self) -> list[int]:
        self._load()
        log = self.events
        return sorted({log.event(i).iteration for i in log.find((ev.IterationFinished,))})  # type: ignore[attr-defined]

    def describe(self) -> str:
        state = "⏸" if self.paused else "▶"
        return f"REPLAY {state} {speed_label(self.speed)} {self.position}/{len(self.events)}"

    # the stream -------------------------------------------------------------------------------------

    def _load(self) -> int:
        data = self._tail.read(1 << 30)
        if data:
            self.events.extend(data)
            added = self._checker.check_lines(data)
            if added:
                self.diagnostics.extend(f"warning: {p.describe(self._checker.log)}"
                                        for p in self._checker.problems[-added:])
        return len(data)

    @property
    def problems(self) -> list[LogProblem]:
        """The reader's warnings so far (line numbers, as headless replay prints them)."""
        return self._checker.problems

    def problems_summary(self) -> str:
        """What the reader skipped, for the header: '' when the log reads whole."""
        problems = self._checker.problems
        if not problems:
            return ""
        lines = ", ".join(str(p.line) for p in problems[:5]) + (", …" if len(problems) > 5 else "")
        return f"{len(problems)} unreadable line{'s' if len(problems) != 1 else ''} skipped (line {lines})"

    @property
    def empty(self) -> bool:
        """Read, and nothing in it: not a session that is merely loading."""
        return self.caught_up.is_set() and not len(self.events)

    def _index_after_iteration(self, start: int) -> int:
        found = self.events.find((ev.IterationFinished, ev.IterationInterrupted), start)
        if found:
            return found[0] + 1
        return min(len(self.events), start + 1)

    def _hand_over(self, end: int) -> list[ev.Event]:
        """Events up to ``end`` for a jump (instant, step, seek): what the screen needs, not every line."""
        batch = self.events.for_display(self.position, end)
        self.position = end
        return batch

    async def batches(self) -> AsyncIterator[Batch]:
        await asyncio.to_thread(self._load)
        if not len(self.events):
            self.diagnostics.append(f"{self.session_dir}: empty session (no events yet)"
                                    + ("; waiting for an engine to write" if self.follow else ""))
        anchor_wall: float | None = None
        anchor_ts = 0.0
        log = self.events
        jump = MAX_BATCH * 8  # lines per jump batch: most are skipped, so take many at once
        while True:
            if self._reset_to is not None:
                self._step_to, self._reset_to = self._reset_to, None
                self.position = 0
                yield RESET
                continue
            if self.paused:
                anchor_wall = None
                if self._step_to is not None and self.position < min(self._step_to, len(log)):
                    self.caught_up.clear()
                    yield self._hand_over(min(self._step_to, len(log), self.position + jump))
                    continue
                self._step_to = None
                await self._idle(None)
                continue
            if self.position >= len(log):
                anchor_wall = None
                if not (self.follow and await self._more()):
                    await self._idle(self.poll_s if self.follow else None)
                continue
            self.caught_up.clear()
            if self.speed == float("inf"):
                yield self._hand_over(min(len(log), self.position + jump))
                continue
            # timed: hand over every event whose (compressed) time has come
            now = self._clock()
            if anchor_wall is None:
                anchor_wall, anchor_ts = now, log.ts(self.position)
            due_ts = anchor_ts + (now - anchor_wall) * self.speed
            end = self.position
            while end < len(log) and end - self.position < MAX_BATCH and log.ts(end) <= due_ts:
                end += 1
            if end > self.position:
                batch, self.position = log.events(self.position, end), end
                yield batch
                continue
            gap = log.ts(end) - due_ts
            if gap > MAX_GAP_S * self.speed:  # skip a long silence
                anchor_wall, anchor_ts = now, log.ts(end) - MAX_GAP_S * self.speed
                gap = MAX_GAP_S * self.speed
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(gap / self.speed, 0.25))
            except asyncio.TimeoutError:
                pass
            if self._wake.is_set():
                anchor_wall = None  # speed or pause changed: re-anchor

    async def _idle(self, timeout: float | None) -> None:
        """Everything due is handed over: wait for a control, or for ``timeout`` seconds."""
        self.caught_up.set()
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _more(self) -> bool:
        return bool(await asyncio.to_thread(self._load))

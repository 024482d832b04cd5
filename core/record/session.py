"""Sessions on disk: an append-only JSONL event log plus artifacts.

The folder's layout (which file is where) is :mod:`core.record.layout`'s; one engine at a
time holds its lock (:mod:`core.record.session_lock`). Artifacts are written atomically
(temp file + rename) and referenced from events by their path relative to the session folder.

A full disk, a read-only or forbidden folder or a spent quota is a :class:`StorageFault`
naming the path and the cause; an append that fails is rolled back, so the log stays whole.
The log must be a regular file in its folder: a symbolic link is refused, never followed.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import re
import time
from dataclasses import dataclass

from msgspec.structs import replace
from pathlib import Path
from typing import Iterator

from core.record import events as ev
from core.record import layout
from core.record.layout import EVENTS_FILE, write_atomic  # noqa: F401 - re-exported for older importers

# High-rate events are fsync'd in batches; everything else is fsync'd at once.
_BATCHED = (ev.TrainingProgress, ev.TrainingOutput, ev.LLMDelta)
_BATCH_FSYNC_S = 0.25
_SEQ_PREFIX = re.compile(rb'^\{"seq":(\d+),"ts":')
_SEQ_LINES = re.compile(rb'^\{"seq":(\d+),"ts":[^\n]*\}$', re.M)


class SessionError(Exception):
    pass


# The errors that mean the session folder cannot take what we write, not a bug of ours.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "a read-only file system",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EDQUOT: "disk quota exceeded"}


class StorageFault(SessionError):
    """The session folder cannot be written (or read): which path, and why."""

    def __init__(self, path: Path | str, err: int, doing: str = "write") -> None:
        self.path, self.errno = str(path), err
        self.cause = STORAGE_ERRNOS.get(err) or os.strerror(err)
        super().__init__(f"cannot {doing} {self.path}: {self.cause} ({errno.errorcode.get(err, err)})")


def own_folder(path: Path, session: Path, what: str) -> None:
    """Refuse a folder of the session that is a symbolic link or leads outside it (absent is fine)."""
    if os.path.islink(path):
        raise SessionError(f"{path}: the {what} is a symbolic link (to {os.readlink(path)}); refused: "
                           "it must be a folder inside the session folder")
    if path.exists() and Path(path).resolve().parent != Path(session).resolve():
        raise SessionError(f"{path}: the {what} leads outside the session folder; refused")


def storage_fault(exc: BaseException, path: Path | str | None = None, doing: str = "write") -> StorageFault | None:
    """``exc`` as a StorageFault when it is one (a full disk, a read-only folder, ...), else None."""
    if isinstance(exc, StorageFault):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    return StorageFault(exc.filename or path or "the session folder", exc.errno, doing)


def regular_file(path: Path, what: str) -> None:
    """Refuse a session file that is a symbolic link or not a regular file (absent is fine).

    A link could make the engine append a run to another session's log, or read a file of
    someone else's as a command; O_NOFOLLOW on every open backs this check.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_fault(exc, path, "read") or SessionError(f"{path}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise SessionError(f"{path}: the {what} is a symbolic link (to {os.readlink(path)}); refused: "
                           "it must be a regular file inside the session folder")
    if not stat.S_ISREG(st.st_mode):
        raise SessionError(f"{path}: the {what} is not a regular file; refused")


def new_session_dir(root: Path, name: str, now: float | None = None) -> Path:
    """A fresh ``<root>/<YYYYmmdd-HHMMSS>-<name>`` folder (suffixed if it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{stamp}-{slug}"
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


class SessionWriter:
    """Appends events to a session's log; stamps sequence numbers and times."""

    def __init__(self, directory: Path, *, clock=time.time, batch_fsync: bool = False) -> None:
        """``batch_fsync``: every event is fsync'd as progress lines are, at most every _BATCH_FSYNC_S
        (and the last one at close), and artifacts without an fsync of their own. For the surrogate,
        whose runs cost less than an fsync: each event still reaches the file (and survives kill -9)
        when it is appended; only a crash of the machine could lose the last quarter second."""
        self.dir = Path(directory)
        self._batch_all = batch_fsync
        log = layout.events_path(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            regular_file(log, "event log")
            own_folder(layout.commands_dir(self.dir), self.dir, "command folder")
            self._seq = _repair_tail(log)
            self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_fault(exc, log) or _refused_link(exc, log) from exc
        self._log = log
        self._clock = clock
        self._last_fsync = 0.0
        self._dirty = False

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, event: ev.Event) -> ev.Event:
        """Stamp, write and flush one event; returns the stamped event.

        StorageFault when the line cannot be written whole: whatever part of it reached the
        file is cut off again and the sequence number is not used, so the log stays intact.
        """
        seq = self._seq + 1
        # the log keeps microseconds: the live event carries what a replay will read
        stamped = replace(event, seq=seq, ts=round(self._clock(), 6))
        try:
            line = (ev.to_json(stamped) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (an LLM reply): JSON escapes it, losing nothing
            line = (json.dumps(ev.to_dict(stamped), ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        now = time.monotonic()
        batched = self._batch_all or isinstance(stamped, _BATCHED)
        durable = not batched or now - self._last_fsync >= _BATCH_FSYNC_S or isinstance(stamped, ev.RunFinished)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):  # unbuffered: survives kill -9 of this process once written
                written += os.write(self._fd, line[written:])
            if durable:
                os.fsync(self._fd)
        except OSError as exc:
            self._cut(start)
            raise storage_fault(exc, self._log) or exc
        self._seq = seq
        if durable:
            self._last_fsync, self._dirty = now, False
        else:
            self._dirty = True
        return stamped

    def _cut(self, size: int) -> None:
        """Back to ``size`` bytes after a failed append (a torn line would hide the next one)."""
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            pass  # nothing could be written either (a read-only remount); a torn tail is repaired on open

    def artifact(self, relpath: str, data: str | bytes) -> str:
        """Write an artifact atomically; returns its path relative to the session."""
        rel = layout.artifact_rel(relpath)
        if isinstance(data, str):  # text that is not valid Unicode (a lone surrogate) is kept escaped
            data = data.encode("utf-8", errors="backslashreplace")
        path = layout.artifact_path(self.dir, rel)
        try:
            write_atomic(path, data, durable=not self._batch_all)
        except OSError as exc:
            raise storage_fault(exc, path) or exc
        return rel

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self._dirty:
                os.fsync(fd)
        except OSError:
            pass  # the batched events are flushed already; a fault was (or will be) reported by append
        finally:
            os.close(fd)


def _refused_link(exc: OSError, path: Path) -> Exception:
    """O_NOFOLLOW's ELOOP (a link put in place after the check) as the refusal it is."""
    if exc.errno == errno.ELOOP:
        return SessionError(f"{path}: a symbolic link; refused: it must be a regular file inside the session folder")
    return exc


def read_log(log: Path) -> bytes:
    """The log's bytes, never through a symbolic link; StorageFault when it cannot be read."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise storage_fault(exc, log, "read") or _refused_link(exc, log) from exc
    with open(fd, "rb") as fh:
        return fh.read()


def _repair_tail(log: Path) -> int:
    """Drop a torn last line (a crash mid-write) and return the last sequence number.

    Only the last line may be torn; blank lines are skipped. Any other unreadable line
    raises :class:`SessionError`: appending after a hole would bury it.
    """
    if not log.exists():
        return 0
    data = read_log(log)
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline
    checker = LogChecker(log)
    for raw in lines:
        checker.check(raw)
    if checker.problems:
        raise SessionError(checker.problems[0].describe(log))
    if tail.strip() and _parses(tail):
        checker.check(tail)
        if checker.problems:
            raise SessionError(checker.problems[0].describe(log))
        with open(log, "ab") as fh:  # a whole event that lost only its newline
            fh.write(b"\n")
        return checker.last_seq
    if tail:
        with open(log, "r+b") as fh:
            fh.truncate(len(data) - len(tail))
    return checker.last_seq


def _parses(raw: bytes) -> bool:
    try:
        ev.from_json(raw.decode("utf-8"))
    except (ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class LogProblem:
    """One thing wrong with an event log, at a 1-based line number."""

    line: int
    message: str

    def describe(self, log: Path | str) -> str:
        return f"{log}:{self.line}: {self.message}"


class LogChecker:
    """Checks a log's lines in order: each parses, sequence numbers run 1, 2, 3, … without gaps.

    Feed every line (blank ones included, so line numbers stay right); problems collect in
    :attr:`problems`. The app's replay feeds it the lines it reads, so it warns as headless does.
    """

    def __init__(self, log: Path | str = EVENTS_FILE) -> None:
        self.log = log
        self.line = 0
        self.last_seq = 0
        self.problems: list[LogProblem] = []

    def check(self, raw: bytes) -> ev.Event | None:
        """The event on this line, or None (blank, unreadable or a duplicate; the last two are problems)."""
        self.line += 1
        if not raw.strip():
            return None
        try:
            event = ev.from_json(raw.decode("utf-8"))
        except (ValueError, TypeError) as exc:
            self.problems.append(LogProblem(self.line, f"unreadable event: {exc}"))
            return None
        return event if self._sequence(event.seq) else None

    def check_lines(self, data: bytes) -> int:
        """Check complete lines without building events (the app's fast path); returns problems added.

        A line that starts as the writer writes it (``{"seq":N,"ts":``) and ends in ``}`` has
        only its sequence number checked; any other line is parsed in full.
        """
        before = len(self.problems)
        if not data:
            return 0
        seqs = _SEQ_LINES.findall(data)
        if seqs and len(seqs) == data.count(b"\n") + (not data.endswith(b"\n")):
            first, last = int(seqs[0]), int(seqs[-1])
            if first == self.last_seq + 1 and last - first + 1 == len(seqs) \
                    and list(map(int, seqs)) == list(range(first, last + 1)):
                self.line += len(seqs)  # every line writer-shaped and in order: nothing to say
                self.last_seq = last
                return 0
        for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
            match = _SEQ_PREFIX.match(raw)
            if match is not None and raw.rstrip().endswith(b"}"):
                self.line += 1
                self._sequence(int(match.group(1)))
            else:
                self.check(raw)
        return len(self.problems) - before

    def _sequence(self, seq: int) -> bool:
        """Record a gap or a duplicate; False for a duplicate (to be skipped)."""
        if seq <= self.last_seq:
            self.problems.append(LogProblem(
                self.line, f"duplicate sequence number {seq} (the log already reached {self.last_seq}): "
                           "two engines wrote this session, or a line was copied"))
            return False
        if seq != self.last_seq + 1:
            self.problems.append(LogProblem(
                self.line, f"sequence gap: expected {self.last_seq + 1}, found {seq} "
                           f"({seq - self.last_seq - 1} event(s) missing)"))
        self.last_seq = seq
        return True


class SessionReader:
    """Reads a session's events: blank lines skipped, a torn last line tolerated.

    By default any other problem (an unreadable line, a sequence gap, a duplicate) raises
    :class:`SessionError` with its line number. ``events(tolerant=True)`` instead skips what
    it cannot use and lists each problem in :attr:`problems` (``warnings()`` as text), for
    viewers that show what is there and say what is not: replay, report, the app.
    """

    def __init__(self, directory: Path) -> None:
        path = Path(directory)
        if path.name == EVENTS_FILE and path.is_file():  # the log itself was named
            path = path.parent
        self.dir = path
        self.log = layout.events_path(self.dir)
        regular_file(self.log, "event log")
        if not self.log.is_file():
            raise SessionError(f"{self.dir}: not a session (no {EVENTS_FILE})")
        self.problems: list[LogProblem] = []
        self.torn_tail = False  # the last line was cut short by a crash mid-write

    def events(self, *, tolerant: bool = False) -> Iterator[ev.Event]:
        data = read_log(self.log)
        lines = data.split(b"\n")
        tail = lines.pop()
        checker = LogChecker(self.log)
        self.problems = checker.problems
        self.torn_tail = False
        for n, raw in enumerate(lines + ([tail] if tail.strip() else [])):
            is_tail = n == len(lines)
            if is_tail and not _parses(raw):
                self.torn_tail = True  # the writer died mid-line: everything before it stands
                return
            before = len(checker.problems)
            event = checker.check(raw)
            if len(checker.problems) > before:
                if not tolerant:
                    raise SessionError(checker.problems[-1].describe(self.log))
            if event is not None:
                yield event

    def check(self) -> list[LogProblem]:
        """Read the whole log; the problems found (empty when it is intact)."""
        for _ in self.events(tolerant=True):
            pass
        return self.problems

    def warnings(self) -> list[str]:
        """The problems as lines to show a user, each with the log's path and line number."""
        return [p.describe(self.log) for p in self.problems]

    def read_artifact(self, relpath: str) -> str:
        return layout.read_artifact(self.dir, relpath)


def find_session(arg: str, sessions_dir: Path | None = None) -> Path:
    """Resolve a session argument: a folder path, or a name (prefix) under sessions_dir."""
    path = Path(arg)
    if path.name == EVENTS_FILE and path.is_file():  # the log itself
        return path.parent
    if layout.is_session(path):
        return path
    root = sessions_dir or Path("sessions")
    if root.is_dir():
        matches = sorted(p for p in root.iterdir() if p.name.startswith(arg) and layout.is_session(p))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:5])
            raise SessionError(f"{arg!r} matches several sessions: {names}")
    raise SessionError(f"no session at {arg!r} (looked for {layout.events_path(path)} and under {root}/)")

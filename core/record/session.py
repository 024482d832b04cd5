"""Sessions on disk: an append-only JSONL event log plus artifacts.

Layout of a session folder::

    events.jsonl      one event per line, flushed per event, fsync'd per event or small batch
    artifacts/        train.py versions, diffs, LLM requests/replies, training logs
    commands/         (for attached viewers) command files the engine picks up

Artifacts are written atomically (temp file + rename) and referenced from events by
their path relative to the session folder.
"""
from __future__ import annotations

import json
import os
import re
import time
from msgspec.structs import replace
from pathlib import Path
from typing import Iterator

from core.record import events as ev

EVENTS_FILE = "events.jsonl"
ARTIFACTS_DIR = "artifacts"
# High-rate events are fsync'd in batches; everything else is fsync'd at once.
_BATCHED = (ev.TrainingProgress, ev.TrainingOutput, ev.LLMDelta)
_BATCH_FSYNC_S = 0.25


class SessionError(Exception):
    pass


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


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SessionWriter:
    """Appends events to a session's log; stamps sequence numbers and times."""

    def __init__(self, directory: Path, *, clock=time.time) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        log = self.dir / EVENTS_FILE
        self._seq = _repair_tail(log)
        self._fh = open(log, "a", encoding="utf-8")
        self._last_fsync = 0.0
        self._dirty = False

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, event: ev.Event) -> ev.Event:
        """Stamp, write and flush one event; returns the stamped event."""
        self._seq += 1
        stamped = replace(event, seq=self._seq, ts=self._clock())
        self._fh.write(ev.to_json(stamped) + "\n")
        self._fh.flush()  # survives kill -9 of this process once flushed
        now = time.monotonic()
        if not isinstance(stamped, _BATCHED) or now - self._last_fsync >= _BATCH_FSYNC_S:
            os.fsync(self._fh.fileno())
            self._last_fsync, self._dirty = now, False
        else:
            self._dirty = True
        return stamped

    def artifact(self, relpath: str, data: str | bytes) -> str:
        """Write an artifact atomically; returns its path relative to the session."""
        rel = f"{ARTIFACTS_DIR}/{relpath}"
        write_atomic(self.dir / rel, data)
        return rel

    def artifact_path(self, relpath: str) -> Path:
        """A path for an artifact written incrementally (e.g. a training log)."""
        path = self.dir / ARTIFACTS_DIR / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        if self._fh.closed:
            return
        if self._dirty:
            os.fsync(self._fh.fileno())
        self._fh.close()


def _repair_tail(log: Path) -> int:
    """Drop a truncated last line (a crash mid-write) and return the last sequence number."""
    if not log.exists():
        return 0
    last_seq = 0
    good_bytes = 0
    with open(log, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                last_seq = int(json.loads(raw).get("seq", last_seq))
            except (ValueError, AttributeError):
                break
            good_bytes += len(raw)
    if good_bytes != log.stat().st_size:
        with open(log, "r+b") as fh:
            fh.truncate(good_bytes)
    return last_seq


class SessionReader:
    """Reads a session's events; tolerates a truncated last line."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.log = self.dir / EVENTS_FILE
        if not self.log.is_file():
            raise SessionError(f"{self.dir}: not a session (no {EVENTS_FILE})")

    def events(self) -> Iterator[ev.Event]:
        with open(self.log, "rb") as fh:
            lines = fh.readlines()
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                yield ev.from_json(raw.decode("utf-8"))
            except (ValueError, TypeError) as exc:
                if n == len(lines) and not raw.endswith(b"\n"):
                    return  # the writer died mid-line: everything before it stands
                raise SessionError(f"{self.log}:{n}: unreadable event: {exc}") from exc

    def read_artifact(self, relpath: str) -> str:
        return (self.dir / relpath).read_text(encoding="utf-8")


def find_session(arg: str, sessions_dir: Path | None = None) -> Path:
    """Resolve a session argument: a folder path, or a name (prefix) under sessions_dir."""
    path = Path(arg)
    if (path / EVENTS_FILE).is_file():
        return path
    root = sessions_dir or Path("sessions")
    if root.is_dir():
        matches = sorted(p for p in root.iterdir() if p.name.startswith(arg) and (p / EVENTS_FILE).is_file())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:5])
            raise SessionError(f"{arg!r} matches several sessions: {names}")
    raise SessionError(f"no session at {arg!r} (looked for {path / EVENTS_FILE} and under {root}/)")

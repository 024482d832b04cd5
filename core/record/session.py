"""Sessions on disk: an append-only JSONL event log plus artifacts.

The folder's layout (which file is where) is :mod:`core.record.layout`'s. Artifacts are
written atomically (temp file + rename) and referenced from events by their path relative
to the session folder.
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
from core.record import layout
from core.record.layout import EVENTS_FILE, write_atomic  # noqa: F401 - re-exported for older importers

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


class SessionWriter:
    """Appends events to a session's log; stamps sequence numbers and times."""

    def __init__(self, directory: Path, *, clock=time.time) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        log = layout.events_path(self.dir)
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
        # the log keeps microseconds: the live event carries what a replay will read
        stamped = replace(event, seq=self._seq, ts=round(self._clock(), 6))
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
        rel = layout.artifact_rel(relpath)
        write_atomic(layout.artifact_path(self.dir, rel), data)
        return rel

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
        self.log = layout.events_path(self.dir)
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
        return layout.read_artifact(self.dir, relpath)


def find_session(arg: str, sessions_dir: Path | None = None) -> Path:
    """Resolve a session argument: a folder path, or a name (prefix) under sessions_dir."""
    path = Path(arg)
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

"""One engine per session: an exclusive ``flock`` on a lock file in the session folder.

The engine takes the lock before it reads or repairs the log and holds it for its whole
life; a second engine (``resume`` while one runs, a second ``run --into``) is refused
with the holder's PID. The kernel drops the lock when the holder's file descriptor
closes, so a killed engine never leaves a stale lock behind. The lock file must be a regular
file in the session folder (opened with O_NOFOLLOW); a folder that cannot hold it is a
:class:`~core.record.session.StorageFault`.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from core.record import layout
from core.record.session import SessionError, own_folder, regular_file, storage_fault

LOCK_FILE = "engine.lock"


class SessionLocked(SessionError):
    """Another live engine holds the session."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process (its pid is not written yet)"
        super().__init__(f"{directory}: another engine is running this session ({who}); "
                         "watch it with `bilevel attach`, or stop it before resuming")


class SessionLock:
    """The held lock; :meth:`release` (or process exit) frees it."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.dir = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> "SessionLock":
        directory = Path(directory)
        path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            regular_file(path, "session lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SessionError(f"{path}: the session lock is a symbolic link; refused") from exc
            raise storage_fault(exc, path) or exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(directory)
            os.close(fd)
            raise SessionLocked(directory, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise storage_fault(exc, path) or exc
        return cls(directory, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def check_session_files(directory: Path) -> None:
    """SessionError unless the log, the lock and the command folder are the session's own (no links)."""
    directory = Path(directory)
    regular_file(layout.events_path(directory), "event log")
    regular_file(directory / LOCK_FILE, "session lock")
    own_folder(layout.commands_dir(directory), directory, "command folder")


def holder_pid(directory: Path) -> int | None:
    """The pid written by the engine that holds (or last held) the lock."""
    try:
        return int((Path(directory) / LOCK_FILE).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None

"""The command channel of a session: how a viewer that does not own the engine sends commands.

An attached viewer (``bilevel attach``) writes each command as one JSON file,
``<session>/commands/<time_ns>-<pid>-<nonce>.json`` holding ``{"command": ..., "args": {...}}``
(a :mod:`core.record.commands` command on the wire), atomically (temp file + rename), so
the engine never reads half a command. The engine runs :func:`watch_commands`, which
submits every file in name order (submission order) with ``source="channel"`` and deletes
it; the acknowledgement is the usual ``CommandReceived`` event in ``events.jsonl``, which
every viewer sees. A file that is not a command is kept (renamed ``*.invalid``) and
submitted as :class:`~core.record.commands.Unreadable`, so the engine refuses it with the
reason in an event. Several viewers may write at once: the file names never collide.
The folder must be the session's own and each command a regular file: a symbolic link is
refused (a folder: SessionError; a file: kept as ``*.invalid`` and refused), never followed.
No UI imports here.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Callable

from core.record import commands as cmds

from core.record import layout
from core.record.layout import COMMANDS_DIR  # noqa: F401 - re-exported
from core.record.session import own_folder

_SUFFIX = ".json"
_BAD_SUFFIX = ".invalid"  # a command file that could not be read is kept under this name, never retried

Submit = Callable[..., None]  # submit(command_or_unreadable, source=...)


def commands_dir(session_dir: Path) -> Path:
    return layout.commands_dir(session_dir)


def _own_commands_dir(session_dir: Path) -> Path:
    """The command folder, made if absent; SessionError if it is a link or lies elsewhere."""
    folder = commands_dir(session_dir)
    own_folder(folder, session_dir, "command folder")
    folder.mkdir(parents=True, exist_ok=True)
    own_folder(folder, session_dir, "command folder")  # a link put in place meanwhile
    return folder


def _read_regular(path: Path) -> bytes:
    """A command file's bytes, never through a symbolic link (ValueError for one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("a symbolic link, not a command file; refused") from None
        raise
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("not a regular file; refused")
        return fh.read()


def write_command(session_dir: Path, command: cmds.Command) -> Path:
    """Queue one command for the engine of ``session_dir``; returns the file written."""
    name, args = cmds.to_wire(command)
    folder = _own_commands_dir(session_dir)
    stem = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"
    final = folder / f"{stem}{_SUFFIX}"
    # the temp file is dot-named: the watcher ignores it until the rename
    layout.write_atomic(final, json.dumps({"command": name, "args": args}, ensure_ascii=False))
    return final


def pending_commands(session_dir: Path) -> list[Path]:
    """Command files not yet taken by the engine, oldest first."""
    folder = commands_dir(session_dir)
    try:
        names = sorted(p for p in folder.iterdir() if p.suffix == _SUFFIX and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    return names


def read_command(path: Path) -> cmds.Command:
    """The command in a file; ValueError (a CommandError for a bad name or argument) if it is none."""
    try:
        data = json.loads(_read_regular(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str) or not data["command"]:
        raise ValueError("expected an object with a non-empty 'command' string")
    unknown = sorted(set(data) - {"command", "args"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected 'command' and 'args')")
    return cmds.from_wire(data["command"], data.get("args", {}))


def take_pending(session_dir: Path, submit: Submit, log: Callable[[str], None] | None = None) -> int:
    """Submit and remove every pending command file; returns how many were submitted."""
    count = 0
    for path in pending_commands(session_dir):
        try:
            command: cmds.Command | cmds.Unreadable = read_command(path)
        except FileNotFoundError:
            continue  # another watcher of the same session took it
        except (OSError, ValueError) as exc:
            kept = path.with_suffix(_BAD_SUFFIX)
            try:
                os.replace(path, kept)
            except FileNotFoundError:
                continue
            except OSError:
                kept = path
            if log:
                log(f"command file {path.name} refused (kept as {kept.name}): {exc}")
            submit(_unreadable(kept, exc), source="channel")
            count += 1
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        submit(command, source="channel")
        count += 1
    return count


def _unreadable(path: Path, exc: Exception) -> cmds.Unreadable:
    """What the engine refuses for a bad file: its name and arguments where they could be read."""
    name, args = "", {}
    try:
        data = json.loads(_read_regular(path).decode("utf-8"))
        if isinstance(data, dict):
            name = data["command"] if isinstance(data.get("command"), str) else ""
            args = data["args"] if isinstance(data.get("args"), dict) else {}
    except (OSError, ValueError):
        pass
    return cmds.Unreadable(name=name, args=args, error=f"command file {path.name}: {exc}")


async def watch_commands(session_dir: Path, submit: Submit, *, log: Callable[[str], None] | None = None,
                         force_polling: bool | None = None) -> None:
    """Submit each command file written into ``<session>/commands/`` until cancelled.

    Files already waiting when the watch starts are submitted first (a command written
    while the engine was starting is not lost).
    """
    from watchfiles import Change, awatch

    folder = _own_commands_dir(session_dir)
    take_pending(session_dir, submit, log)

    def is_command(change: Change, path: str) -> bool:
        name = os.path.basename(path)
        return change != Change.deleted and name.endswith(_SUFFIX) and not name.startswith(".")

    while True:
        try:
            async for _changes in awatch(folder, watch_filter=is_command, debounce=30, step=20,
                                         force_polling=force_polling, poll_delay_ms=100):
                take_pending(session_dir, submit, log)
        except asyncio.CancelledError:
            raise
        except (OSError, RuntimeError) as exc:  # e.g. inotify limits: fall back to polling
            if force_polling:
                raise
            if log:
                log(f"command watch failed ({exc}); polling instead")
            force_polling = True
            continue
        return

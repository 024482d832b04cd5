"""A tripwire inside the mechanism worker: audit hooks that notice forbidden operations.

The wall is the operating system's (:mod:`mechanisms.sandbox.isolation`); this layer only makes
an attempt visible, so a mechanism that tries a forbidden operation and swallows the
error is still rejected or deactivated, with what it tried as the reason. It marks the
current thread while mechanism code runs (the worker has no other threads: seccomp
refuses to create them).
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

@dataclass(eq=False)
class GuardScope:
    """One marked stretch of a thread; ``blocked`` lists what was refused, even if swallowed."""

    write_root: Optional[str]
    blocked: list[str] = field(default_factory=list)


_marks = threading.local()
_install_lock = threading.Lock()
_installed = False

_BLOCKED_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.startfile", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown",
    "os.chflags", "os.lchflags", "os.link", "os.symlink", "os.setxattr", "os.removexattr",
    "sys.addaudithook", "sys.settrace", "sys.setprofile", "builtins.input", "builtins.breakpoint",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit", "resource.prlimit",
    "signal.pthread_kill", "pickle.find_class", "webbrowser.open", "sqlite3.connect",
})
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "shutil.", "subprocess.", "http.client.", "urllib.", "ftplib.",
                     "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.", "sqlite3.", "_winapi.",
                     "winreg.")
# Path-changing events allowed inside the write root: event -> (indices of paths, index of dir_fd args)
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()),
}
_WRITE_MODE_CHARS = frozenset("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _inside(path: Any, root: Optional[str]) -> bool:
    if root is None or isinstance(path, int):
        return False
    try:
        resolved = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def _opens_for_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return bool(_WRITE_MODE_CHARS & set(mode))
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _judge(event: str, args: tuple[Any, ...], root: Optional[str]) -> Optional[str]:
    """Why an audit event is refused in mechanism code, or None."""
    if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
        return f"{event} is not allowed in mechanism code"
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if _opens_for_write(mode, flags) and not _inside(path, root):
            where = f"outside {root}" if root else "(no writable folder)"
            return f"opening {path!r} for writing {where} is not allowed"
        return None
    spec = _PATH_EVENTS.get(event)
    if spec is not None:
        paths, dir_fds = spec
        if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds) or \
                not all(i < len(args) and _inside(args[i], root) for i in paths):
            shown = ", ".join(repr(args[i]) for i in paths if i < len(args))
            return f"{event}({shown}) outside the writable folder is not allowed"
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    stack = getattr(_marks, "stack", None)
    if not stack or getattr(_marks, "busy", False):
        return
    scope = stack[-1]
    _marks.busy = True  # path resolution below must not re-enter the hook
    try:
        reason = _judge(event, args, scope.write_root)
    finally:
        _marks.busy = False
    if reason:
        scope.blocked.append(reason)
        raise PermissionError(f"mechanism sandbox: {reason}")


def _ensure_audit_hook() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)  # process-wide and permanent; a no-op for unmarked threads
            _installed = True


@contextmanager
def runtime_guard(write_root: Optional[Path]) -> Iterator[GuardScope]:
    """Mark the current thread as running mechanism code until the block ends.

    While marked, the thread may not start processes, use sockets or ctypes, change the
    process (environment, working folder, audit hooks) or write files outside
    ``write_root`` (None: nowhere); such operations raise PermissionError and are listed
    in the yielded scope's ``blocked``. Other threads are unaffected.
    """
    _ensure_audit_hook()
    root = os.path.realpath(write_root) if write_root is not None else None
    scope = GuardScope(root)
    stack: list[GuardScope] = _marks.__dict__.setdefault("stack", [])
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.remove(scope)

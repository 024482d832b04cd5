"""Processes a run starts die with it: parent-death signal, subreaper, process groups, run tags.

Every training process is started in its own process group, with ``PR_SET_PDEATHSIG`` so
the kernel kills it when the engine dies (even by SIGKILL), and with an environment tag
(``BILEVEL_RUN_TAG``) that its descendants inherit. The engine makes itself a child
subreaper, so a grandchild that leaves the group with ``setsid`` is re-parented to the
engine instead of init, and can be reaped. :func:`end_tagged` finds every process that
carries a tag (in any group or session) and kills it: the engine calls it when a run
ends, and resume calls it for the recorded tag of an interrupted run before it starts
anything.

The process table is read through psutil (environments, states, parents; groups by getpgid); prctl is
Linux only, and elsewhere the parent-death signal and the subreaper are skipped.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
import uuid
from typing import Callable, Iterable

import psutil

TAG_ENV = "BILEVEL_RUN_TAG"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 0.05

try:  # loaded before any fork, so a child's preexec only calls into it
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _LIBC, _PRCTL = None, None


def new_tag() -> str:
    return uuid.uuid4().hex


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False where unsupported."""
    if _PRCTL is None:
        return False
    return _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the process that started it dies."""
    if _PRCTL is None:
        return None
    parent = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _is_live(process: psutil.Process) -> bool:
    """Running or sleeping; a zombie is dead and waits for its parent (or init) to reap it, which we cannot hurry."""
    try:
        return process.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:  # gone
        return False


def group_has_live_members(pgid: int) -> bool:
    """True while any non-zombie process is in the group."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _is_live(process):
                return True
        except OSError:  # gone since the listing
            continue
    return False


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_has_live_members(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def tagged_pids(tags: str | Iterable[str]) -> list[int]:
    """Live processes (of any group or session) whose environment carries ``TAG_ENV=<one of tags>``."""
    wanted = {tags} if isinstance(tags, str) else {t for t in tags if t}
    if not wanted:
        return []
    me = os.getpid()
    # environ is None where psutil may not read it (another user's process, or gone since the listing)
    return [p.pid for p in psutil.process_iter(["environ"])
            if p.pid != me and (p.info["environ"] or {}).get(TAG_ENV) in wanted and _is_live(p)]


def end_tagged(tags: str | Iterable[str], *, spare: int | None = None, rounds: int = 20) -> list[int]:
    """SIGKILL every live process carrying one of ``tags`` (except ``spare``); returns the pids killed.

    Repeats until none is left, since a dying parent may fork once more; a killed process
    that was re-parented to this one (the subreaper) is reaped here, the others by their
    parent or init.
    """
    killed: list[int] = []
    for _ in range(rounds):
        pids = [p for p in tagged_pids(tags) if p != spare]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    _reap(p for p in killed if p != spare)
    return killed


def _reap(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            if psutil.Process(pid).ppid() != os.getpid():
                continue  # not ours to reap
        except psutil.Error:
            continue
        for _ in range(50):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.01)

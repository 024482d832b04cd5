"""The worker's private view of the file system: only what it may read, and a scratch with a budget.

Landlock refuses to open a file outside the rules but not to ``stat`` it: existence, size
and times of any path would stay visible. So before Landlock the worker enters a user and
mount namespace of its own (``unshare(CLONE_NEWUSER | CLONE_NEWNS)``, unprivileged on most
Linux kernels), builds a new root on a small tmpfs holding read-only bind mounts of the
allowed paths only, mounts its scratch folder as a tmpfs with a byte and file-count budget,
and ``pivot_root``s into it. Paths outside the rules then do not exist for the mechanism,
and a full scratch is the worker's own memory-backed file system, never the disk the
sessions live on. The mounts vanish with the worker.

Where the kernel or the container refuses (no user namespaces: Docker's default seccomp
profile, Ubuntu's AppArmor restriction, ``user.max_user_namespaces = 0``), the worker says
so in the level it reports and :func:`view_available` names what is missing.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Iterable

_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_MNT_DETACH = 0x2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
HIDDEN = ("site-packages", "dist-packages")  # inside the standard library's folder: third-party code


class ViewError(OSError):
    """The private view could not be built; the message says which step the kernel refused."""


@dataclass(frozen=True)
class Budget:
    """What the mechanism may keep in its scratch (and temp) folder at once."""

    scratch_bytes: int = 64 * 1024 * 1024
    scratch_files: int = 256


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    return libc


def _ok(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise ViewError(err, f"{what}: {os.strerror(err)}")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731 - ctypes wants bytes or NULL
    _ok(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _bind_read_only(libc: ctypes.CDLL, root: str, path: str) -> None:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o444))
    _mount(libc, path, target, None, _MS_BIND | _MS_REC)
    # a bind mount takes read-only only on a remount; nosuid/nodev are kept from the source where locked
    _mount(libc, None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_REC)


def own_namespaces(flags: int, names: str) -> None:
    """Enter a new user namespace (our uid and gid mapped to themselves) and the ``flags`` namespaces
    (``names`` says which, for the message); ViewError when the kernel refuses. A new PID namespace
    takes effect for the children forked after this call."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    _ok(libc.unshare(_CLONE_NEWUSER | flags), f"unshare(CLONE_NEWUSER | {names})")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def enter(read_only: Iterable[str], scratch: str, budget: Budget, arch: str) -> None:
    """Replace this process's view of the file system; ViewError when the kernel refuses a step.

    Must run while the process has one thread. ``scratch`` (an empty folder the engine made)
    becomes the new root's mount point and, inside the view, a tmpfs of ``budget``'s size."""
    if arch not in _SYS_PIVOT_ROOT:
        raise ViewError(0, f"pivot_root is not written for {arch}")
    libc = _libc()
    own_namespaces(_CLONE_NEWNS, "CLONE_NEWNS")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing of ours propagates to the engine's view
    root = scratch  # the skeleton root sits over the (empty) scratch folder, in this namespace only
    _mount(libc, "bilevel-root", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    paths = sorted(dict.fromkeys(os.path.normpath(p) for p in read_only if os.path.exists(p)))
    for path in paths:
        _bind_read_only(libc, root, path)
        for hidden in HIDDEN:  # the standard library's folder also holds the interpreter's own packages
            inner = os.path.join(path, hidden)
            if os.path.isdir(root + inner) and not any(p == inner or p.startswith(inner + os.sep) for p in paths):
                _mount(libc, "bilevel-hidden", root + inner, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
                       "size=4k,nr_inodes=1,mode=0555")
    os.makedirs(root + scratch, exist_ok=True)
    _mount(libc, "bilevel-scratch", root + scratch, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
           f"size={budget.scratch_bytes},nr_inodes={budget.scratch_files + 1},mode=0700")
    os.chdir(root)
    _ok(libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT[arch]), b".", b"."), "pivot_root")
    _ok(libc.umount2(b".", _MNT_DETACH), "detaching the old root")  # the old root sat on top of the new one
    os.chdir("/")
    _mount(libc, None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chdir(scratch)


def overrun(scratch: str, budget: Budget, private: bool) -> str | None:
    """Why the scratch folder is over its budget (a full tmpfs counts: a write was or will be refused), or None."""
    if private:
        st = os.statvfs(scratch)
        used, files = (st.f_blocks - st.f_bfree) * st.f_frsize, max(0, st.f_files - st.f_ffree - 1)
        full = st.f_bfree == 0 or st.f_ffree == 0
    else:  # on the shared disk: walk it, stopping once the count alone is over
        used = files = 0
        stack = [scratch]
        while stack and files <= budget.scratch_files:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    files += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        used += e.stat(follow_symlinks=False).st_size
        full = used > budget.scratch_bytes or files > budget.scratch_files
    if not full:
        return None
    return (f"filled its scratch folder: {used} bytes in {files} file(s) against a budget of "
            f"{budget.scratch_bytes} bytes and {budget.scratch_files} files")

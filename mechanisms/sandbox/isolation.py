"""The operating system's wall around the mechanism worker: rlimits, Landlock and seccomp.

Why these and not bubblewrap: they are kernel features a process applies to itself from
Python (ctypes), so nothing has to be installed, they work unprivileged and as root, and
the worker starts as fast as a plain Python process. This is the pattern of OpenAI's
Codex CLI on Linux. The worker applies, in this order, before it reads generated code:

- resource limits: CPU time, address space, file size, open files, no core dumps, no
  new processes;
- ``PR_SET_NO_NEW_PRIVS`` and a Landlock ruleset: read-only access beneath the folders
  Python needs to import the module (its standard library, the ``mechanisms`` package and
  allow-listed packages), read-write beneath the worker's scratch folder, nothing else —
  no TCP bind or connect (ABI 4) and no signals or abstract sockets outside the worker
  (ABI 6);
- a seccomp filter that refuses sockets of every family (EPERM) and kills the process on
  any attempt to create a process or thread (fork, vfork, clone, clone3), run a program
  (execve, execveat), connect or bind anything, signal another process, trace one, or reach kernel interfaces a search
  mechanism never needs (mount, namespaces, bpf, keyrings, io_uring, ...). The filter
  checks the architecture first (x86_64 and aarch64; any other syscall ABI is killed).

Levels (``level2.isolation``): ``strict`` needs all of the above; ``process`` is the
explicit weaker level — a separate process with a clean environment and the resource
limits, without Landlock and seccomp. Where ``strict`` is configured and the platform
lacks a part, generated code is refused with a message naming what is missing.
"""
from __future__ import annotations

import ctypes
import os
import platform
import resource
import struct
import sys
from dataclasses import dataclass
from typing import Iterable, Optional

from mechanisms.sandbox.private_root import HIDDEN, Budget, ViewError
from mechanisms.sandbox.private_root import enter as enter_view

LEVELS = ("strict", "process")

# --- Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on both arches
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS = {name: 1 << i for i, name in enumerate((
    "EXECUTE", "WRITE_FILE", "READ_FILE", "READ_DIR", "REMOVE_DIR", "REMOVE_FILE", "MAKE_CHAR", "MAKE_DIR",
    "MAKE_REG", "MAKE_SOCK", "MAKE_FIFO", "MAKE_BLOCK", "MAKE_SYM", "REFER", "TRUNCATE", "IOCTL_DEV"))}
_READ = _FS["READ_FILE"] | _FS["READ_DIR"]
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_MIN_LANDLOCK_ABI = 1

# --- seccomp
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
# Refused with EPERM rather than killed: the C library opens sockets on its own (NSS asking
# nscd when code looks a user up), and a failed lookup is harmless.
_REFUSED = ("socket", "socketpair")
_X32_BIT = 0x40000000
_DENIED = {
    "x86_64": {
        "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "clone3": 435, "execveat": 322,
        "socket": 41, "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288,
        "ptrace": 101, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297, "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "unshare": 272, "setns": 308, "mknod": 133, "mknodat": 259, "keyctl": 250,
        "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "personality": 135,
        "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169,
        "swapon": 167, "swapoff": 168, "iopl": 172, "ioperm": 173, "name_to_handle_at": 303,
        "open_by_handle_at": 304, "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114,
    },
    "aarch64": {
        "clone": 220, "execve": 221, "clone3": 435, "execveat": 281,
        "socket": 198, "socketpair": 199, "bind": 200, "listen": 201, "accept": 202, "connect": 203,
        "accept4": 242, "ptrace": 117, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240, "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "unshare": 97, "setns": 268, "mknodat": 33, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "personality": 92, "kexec_load": 104,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224,
        "swapoff": 225, "name_to_handle_at": 264, "open_by_handle_at": 265, "setuid": 146, "setgid": 144,
        "setreuid": 145, "setregid": 143,
    },
}


class IsolationError(RuntimeError):
    """The wall could not be built; the message says which part is missing."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 600
    address_space_mb: int = 2048
    file_size_mb: int = 16
    open_files: int = 64
    scratch_mb: int = 64  # all files in the scratch (and temp) folder together
    scratch_files: int = 256


@dataclass(frozen=True)
class Availability:
    """What this machine offers: the strongest level and what ``strict`` would lack."""

    level: str  # strict | process
    landlock_abi: int
    missing: tuple[str, ...]

    def describe(self) -> str:
        if self.level == "strict":
            return f"strict: Landlock ABI {self.landlock_abi} + seccomp + resource limits ({platform.machine()})"
        return "process only (resource limits, clean environment); missing: " + "; ".join(self.missing)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled."""
    if sys.platform != "linux":
        return 0
    try:
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(0, int(abi))


def _seccomp_available() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False


def availability() -> Availability:
    """Probe the platform without changing this process."""
    missing = []
    if sys.platform != "linux":
        missing.append(f"Landlock and seccomp need Linux (this is {sys.platform})")
        return Availability("process", 0, tuple(missing))
    abi = landlock_abi()
    if abi < _MIN_LANDLOCK_ABI:
        missing.append("Landlock (kernel 5.13 or later with landlock in the lsm= list)")
    if platform.machine() not in _DENIED:
        missing.append(f"a seccomp filter for {platform.machine()} (only x86_64 and aarch64 are written)")
    if not _seccomp_available():
        missing.append("seccomp (kernel built without CONFIG_SECCOMP_FILTER)")
    return Availability("process" if missing else "strict", abi, tuple(missing))


def refusal(configured: str, found: Optional[Availability] = None) -> Optional[str]:
    """Why generated code may not run at the configured level here, or None."""
    if configured not in LEVELS:
        return f"level2.isolation = {configured!r} is not a level; choose one of: {', '.join(LEVELS)}"
    found = found or availability()
    if configured == "strict" and found.level != "strict":
        return ("generated mechanisms are refused: the strict isolation they need is not available here "
                f"(missing: {'; '.join(found.missing)}). Set level2.isolation = \"process\" to run them behind "
                "the weaker wall (a separate process with resource limits, but no file-system or system-call "
                "restrictions)")
    return None


# --- applied inside the worker -----------------------------------------------------------------

def apply_rlimits(limits: Limits) -> None:
    mb = 1024 * 1024
    for which, value in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_AS, limits.address_space_mb * mb),
                         (resource.RLIMIT_FSIZE, limits.file_size_mb * mb), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
        resource.setrlimit(which, (value, value))


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise IsolationError(f"{what} failed: {os.strerror(err)}")
    return result


def landlock_rules(read_only: Iterable[str]) -> tuple[list[str], list[str]]:
    """(folders readable beneath, folders only listable) for ``read_only``: a folder holding third-party
    packages (the standard library's site-packages) is split into its other children, since a rule
    always covers everything beneath it, and stays listable so the import system can scan it."""
    readable: list[str] = []
    listable: list[str] = []
    for path in read_only:
        if not any(os.path.isdir(os.path.join(path, h)) for h in HIDDEN):
            readable.append(path)
            continue
        listable.append(path)
        with os.scandir(path) as entries:
            readable += [e.path for e in entries if e.name not in HIDDEN]
    return readable, listable


def apply_landlock(read_only: Iterable[str], writable: Iterable[str], listable: Iterable[str] = (),
                   execute: bool = False) -> int:
    """Restrict this process's file-system (and, where the ABI has them, network and signal) access.

    ``execute``: programs beneath ``read_only`` may be run (the training wall: the interpreter, compilers)."""
    abi = landlock_abi()
    if abi < _MIN_LANDLOCK_ABI:
        raise IsolationError("Landlock is not available")
    handled = 0
    for i, name in enumerate(_FS):
        if name == "REFER" and abi < 2 or name == "TRUNCATE" and abi < 3 or name == "IOCTL_DEV" and abi < 5:
            continue
        handled |= _FS[name]
    if abi >= 6:
        attr = struct.pack("=QQQ", handled, 0b11, 0b11)  # net: bind+connect TCP; scoped: abstract unix + signal
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, 0b11)
    else:
        attr = struct.pack("=Q", handled)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)),
                "landlock_create_ruleset")
    try:
        write = handled & ~_FS["EXECUTE"]
        read = _READ | (_FS["EXECUTE"] if execute else 0)
        for paths, access in ((read_only, read), (listable, _FS["READ_DIR"]), (writable, write)):
            for path in dict.fromkeys(paths):
                try:
                    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a folder that does not exist needs no rule
                try:
                    is_dir = os.path.isdir(path)
                    allowed = access if is_dir else access & (_FS["READ_FILE"] | _FS["WRITE_FILE"] | _FS["TRUNCATE"]
                                                              | _FS["EXECUTE"] | _FS["IOCTL_DEV"])
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed & handled, pfd), 12)
                    _check(libc.syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(fd), ctypes.c_int(_RULE_PATH_BENEATH),
                                        rule, ctypes.c_uint32(0)), f"landlock_add_rule({path})")
                finally:
                    os.close(pfd)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(libc.syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(fd)
    return abi


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


# What training needs that a mechanism does not: threads and processes (torch's pools, a compiler run by
# torch.compile), signals among them, socketpair. The training wall's namespaces keep these in its tree.
TRAINING_ALLOWED = frozenset({
    "clone", "fork", "vfork", "clone3", "execve", "execveat", "socketpair", "kill", "tkill", "tgkill",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
})


def seccomp_program(arch: str, allowed: frozenset[str] = frozenset()) -> list[tuple[int, int, int, int]]:
    """The BPF program: check the architecture, then refuse sockets (EPERM) and kill on the rest
    (``allowed``: calls of the list let through, for the training wall)."""
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    denied = {n: nr for n, nr in _DENIED[arch].items() if n not in allowed}
    refused = sorted({denied[n] for n in _REFUSED if n in denied})
    killed = sorted(set(denied.values()) - set(refused))
    prog = [(ld_w_abs, 0, 0, 4),  # seccomp_data.arch
            (jeq_k, 1, 0, _AUDIT_ARCH[arch]),
            (ret_k, 0, 0, _RET_KILL_PROCESS),
            (ld_w_abs, 0, 0, 0)]  # seccomp_data.nr
    if arch == "x86_64":  # the x32 ABI reaches the same calls under other numbers
        prog += [(jge_k, 0, 1, _X32_BIT), (ret_k, 0, 0, _RET_KILL_PROCESS)]
    checks = [(nr, True) for nr in killed] + [(nr, False) for nr in refused]
    n = len(checks)
    for i, (nr, kill) in enumerate(checks):
        # after the remaining comparisons come: allow, refuse (EPERM), kill
        prog.append((jeq_k, (n - 1 - i) + (2 if kill else 1), 0, nr))
    prog += [(ret_k, 0, 0, _RET_ALLOW), (ret_k, 0, 0, _RET_ERRNO | 1), (ret_k, 0, 0, _RET_KILL_PROCESS)]
    return prog


def apply_seccomp(allowed: frozenset[str] = frozenset()) -> None:
    arch = platform.machine()
    if arch not in _DENIED:
        raise IsolationError(f"no seccomp filter is written for {arch}")
    prog = seccomp_program(arch, allowed)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


def lock_down(level: str, limits: Limits, read_only: Iterable[str], scratch: str) -> tuple[str, bool]:
    """Apply the wall for ``level`` to this process: (what is in force, whether the private view is).

    The private view (:mod:`mechanisms.sandbox.private_root`) comes first, at every level; where
    the kernel refuses it the level says so in capitals, with why and what that leaves open."""
    read_only = list(read_only)
    budget = Budget(limits.scratch_mb * 1024 * 1024, limits.scratch_files)
    try:
        enter_view(read_only, scratch, budget, platform.machine())
        view = f"private root, scratch tmpfs {limits.scratch_mb} MB / {limits.scratch_files} files"
        private = True
    except (ViewError, OSError) as exc:
        view = (f"NO PRIVATE ROOT ({exc}): paths outside the rules can be stat'ed, and the scratch is on the "
                f"shared disk, bounded by {limits.file_size_mb} MB per file and a check after each call")
        private = False
    apply_rlimits(limits)
    if level == "process":
        return f"process ({view})", private
    readable, listable = landlock_rules(read_only)
    abi = apply_landlock(readable, [scratch], listable)
    apply_seccomp()
    return f"strict (Landlock ABI {abi}, seccomp, {view})", private

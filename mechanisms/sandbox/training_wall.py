"""The training wall: the run of an edited training script (``search.scope = "code"``) behind the OS.

The mechanism worker's wall (:mod:`mechanisms.sandbox.isolation`) shaped for training. The engine starts
``python -c BOOT PACKAGE_ROOT SPEC -- PROGRAM ARGS...`` in place of ``python train.py``; this module:

- enters a user namespace with new network and PID namespaces (:func:`private_root.own_namespaces`):
  no interface but a loopback that is down, so no network; every process the script starts lives in
  the PID namespace, whose first process is the script, so none outlives it (setsid and double forks
  included: the kernel kills the namespace with its first process);
- forks the script's process, which dies with this one (``PR_SET_PDEATHSIG``), and applies in it,
  before it runs anything of the script: Landlock — read and execute beneath the interpreter, its
  packages, the system's libraries, ``/proc``, ``/sys`` and the paths the spec lists as readable (the
  script's folder, the training data's files, never the validation split), writes only beneath the
  spec's writable paths (the run folder, the compile cache) and to the device files listed; no TCP
  bind or connect (ABI 4), no signals out of the wall (ABI 6) — and the seccomp filter of the mechanism
  worker less what training needs (threads, processes, compilers: :data:`isolation.TRAINING_ALLOWED`);
  sockets stay refused;
- waits for it and exits with its status (a signal's number + 128); a SIGTERM to this process kills it.

Standard library only (the sandbox's rule); nothing of the engine is imported. Where a step is refused
the wall exits with :data:`REFUSED` and one line on stderr saying which, and the script never runs.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import site
import sys
import sysconfig

from mechanisms.sandbox.isolation import TRAINING_ALLOWED, IsolationError, apply_landlock, apply_seccomp
from mechanisms.sandbox.private_root import ViewError, own_namespaces

BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from mechanisms.sandbox.training_wall import main; "
        "raise SystemExit(main(sys.argv[2:]))")
REFUSED = 97  # the exit status when the wall could not be built (the script did not run)
PREFIX = "training wall:"  # the first word of the wall's own lines on stderr
_CLONE_NEWNET, _CLONE_NEWPID = 0x40000000, 0x20000000
_PR_SET_PDEATHSIG = 1
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev", "/opt")
DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def interpreter_paths() -> list[str]:
    """What this interpreter needs to read: its prefixes, its standard library and its packages."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib"))
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if p and os.path.exists(p))


def gpu_device_files() -> list[str]:
    """The NVIDIA device files (read, write and ioctl: CUDA needs them)."""
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    return sorted(os.path.join("/dev", n) for n in names if n.startswith("nvidia"))


def _die(message: str) -> int:
    print(f"{PREFIX} refused: {message}", file=sys.stderr, flush=True)
    return REFUSED


def main(argv: list[str]) -> int:
    """``SPEC -- PROGRAM ARGS...``: SPEC is JSON ``{"read": [...], "write": [...]}``."""
    if len(argv) < 3 or argv[1] != "--":
        return _die("usage: SPEC -- PROGRAM ARGS...")
    spec = json.loads(argv[0])
    program = argv[2:]
    try:
        own_namespaces(_CLONE_NEWNET | _CLONE_NEWPID, "CLONE_NEWNET | CLONE_NEWPID")
    except (ViewError, OSError) as exc:
        return _die(f"no user, network and PID namespaces ({exc})")
    read = [*interpreter_paths(), *SYSTEM_READ, *spec.get("read", [])]
    write = [*spec.get("write", []), *DEVICE_FILES, *gpu_device_files()]
    abi_out, abi_in = os.pipe()  # the child says what is in force, or why not, before it runs the script
    pid = os.fork()
    if pid == 0:  # the first process of the new PID namespace
        os.close(abi_out)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            abi = apply_landlock([p for p in read if os.path.exists(p)], write, execute=True)
            apply_seccomp(TRAINING_ALLOWED)
        except (IsolationError, OSError) as exc:
            os.write(abi_in, f"refused: {exc}".encode())
            os._exit(REFUSED)
        os.write(abi_in, f"Landlock ABI {abi}".encode())
        os.close(abi_in)
        try:
            os.execv(program[0], program)
        except OSError as exc:
            print(f"{PREFIX} could not start {program[0]}: {exc}", file=sys.stderr, flush=True)
            os._exit(127)
    os.close(abi_in)

    def end(signum: int, frame: object) -> None:  # the script is PID 1 of its namespace: it ignores SIGTERM
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, end)
    with os.fdopen(abi_out, "rb") as said:
        state = said.read().decode(errors="replace")
    if state.startswith("refused"):
        os.waitpid(pid, 0)
        return _die(state[len("refused: "):])
    print(f"{PREFIX} user, network and PID namespaces, {state}, seccomp; reads: interpreter, system libraries, "
          f"{len(spec.get('read', []))} listed path(s); writes: {', '.join(spec.get('write', []))}",
          file=sys.stderr, flush=True)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)

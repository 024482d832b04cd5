"""The engine's side of the mechanism worker: start it, load a module, call hooks, kill it.

Everything is asynchronous over pipes, so the engine's event loop keeps running while a
hook computes, hangs or spins inside C code. Every request has a deadline; past it the
worker is killed with SIGKILL and :class:`WorkerFailed` says why. Replies are decoded
from JSON into fresh builtins (the engine never touches an object made by generated
code) and are bounded in size. A worker that dies, exits or breaks the protocol raises
:class:`WorkerFailed` with what happened.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional

from mechanisms.sandbox.isolation import Limits

MAX_LINE = 1 << 20  # bytes of one reply
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from mechanisms.sandbox.worker import main; "
         "raise SystemExit(main())")
_BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE")


class WorkerFailed(Exception):
    """The worker did not answer as it must; the message is the reason (it is then dead)."""


def _signal_reason(rc: int) -> str:
    if rc >= 0:
        return f"the worker exited with code {rc}"
    sig = -rc
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    why = {
        "SIGSYS": "the kernel's seccomp filter killed it for a forbidden system call "
                  "(a new process or thread, a program, a socket, a signal to another process, ...)",
        "SIGXCPU": "it used up its CPU-time limit",
        "SIGXFSZ": "it exceeded its file-size limit",
        "SIGSEGV": "it crashed (segmentation fault: e.g. a recursion too deep for the C stack)",
        "SIGKILL": "it was killed",
    }.get(name, "it was killed by a signal")
    return f"the worker died ({name}): {why}"


def worker_env(names: Iterable[str] = ()) -> dict[str, str]:
    """A clean environment: a few harmless variables plus those the config lists, nothing else."""
    env = {"PATH": os.defpath, "LANG": "C.UTF-8"}
    for name in (*_BASE_ENV, *names):
        if name in os.environ and name != "PATH":
            env[name] = os.environ[name]
    return env


def read_only_paths(allow_imports: Iterable[str]) -> tuple[list[str], list[str]]:
    """(folders the worker may read, extra sys.path entries) for the stdlib, us and allow-listed packages."""
    paths = {sysconfig.get_paths()["stdlib"], os.path.join(PACKAGE_ROOT, "mechanisms")}
    extra: list[str] = []
    for dotted in allow_imports:
        top = dotted.split(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin:
            continue
        if spec.submodule_search_locations:
            paths.update(spec.submodule_search_locations)
            site = os.path.dirname(os.path.dirname(spec.origin))
        else:
            paths.add(spec.origin)
            site = os.path.dirname(spec.origin)
        # the shared libraries a wheel ships beside its package (auditwheel's "<name>.libs"), not its neighbours
        paths.update(os.path.join(site, n) for n in _listing(site) if n.lower() == f"{top.lower()}.libs")
        extra.append(site)
    return sorted(paths), extra


def _listing(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


class Worker:
    """One isolated worker process holding (at most) one generated mechanism."""

    def __init__(self, proc: asyncio.subprocess.Process, scratch: str) -> None:
        self.proc = proc
        self.scratch = scratch
        self.level = ""
        self.start_s = 0.0
        self._next_id = 0
        self.dead_reason = ""

    @classmethod
    async def start(cls, *, level: str = "strict", limits: Limits = Limits(), allow_imports: Iterable[str] = (),
                    env_names: Iterable[str] = (), timeout_s: float = 10.0) -> "Worker":
        started = time.monotonic()
        allow = tuple(allow_imports)
        scratch = tempfile.mkdtemp(prefix="bilevel-mechanism-")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-B", "-c", _BOOT, PACKAGE_ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            cwd=scratch, env=worker_env(env_names), start_new_session=True, limit=MAX_LINE)
        worker = cls(proc, scratch)
        try:
            read_only, sys_path = read_only_paths(allow)
            await worker._send({"level": level, "limits": asdict(limits), "scratch": scratch,
                                "read_only": read_only, "sys_path": sys_path, "preimport": list(allow),
                                "parent": os.getpid()})
            reply = await worker._receive(timeout_s, "starting")
        except BaseException:  # cancelled or failed: no worker is left behind
            await asyncio.shield(worker.kill())
            raise
        if not reply.get("ready"):
            await worker.kill()
            raise WorkerFailed(str(reply.get("error") or "the worker did not start"))
        worker.level = str(reply.get("level", ""))
        worker.start_s = time.monotonic() - started
        return worker

    async def load(self, source: str, module_name: str, timeout_s: float) -> dict[str, Any]:
        """Run the module's top level and constructor; returns class_name, name, hooks (or ok False, error)."""
        await self._send({"op": "load", "source": source, "module_name": module_name})
        reply = await self._receive(timeout_s, "importing the module")
        if reply.get("ok") is not True:
            return {"ok": False, "error": str(reply.get("error", "import failed"))[:4000],
                    "missing": reply.get("missing") if type(reply.get("missing")) is str else None}
        hooks = reply.get("hooks")
        return {"ok": True, "class_name": str(reply.get("class_name", "")), "name": str(reply.get("name", "")),
                "hooks": [h for h in hooks if type(h) is str] if type(hooks) is list else []}

    async def call(self, hook: str, args: list[Any], timeout_s: float) -> Any:
        """The hook's return value in wire form (plain data), or WorkerFailed / HookError."""
        self._next_id += 1
        call_id = self._next_id
        await self._send({"op": "call", "id": call_id, "hook": hook, "args": args})
        reply = await self._receive(timeout_s, f"{hook}")
        if reply.get("id") != call_id:
            await self.kill()
            raise WorkerFailed(self._died(f"the worker answered out of turn during {hook}; it was killed"))
        if reply.get("ok") is not True:
            if reply.get("fatal") is True:  # the worker broke a limit it cannot undo: it must not run again
                await self.kill()
                raise WorkerFailed(self._died(str(reply.get("error", f"{hook} failed"))[:4000] +
                                              "; the worker was killed"))
            raise HookError(str(reply.get("error", f"{hook} failed"))[:4000])
        return reply.get("value")

    async def _send(self, data: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(data, allow_nan=False, default=str) + "\n").encode("utf-8"))
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError, RuntimeError) as exc:
            raise WorkerFailed(await self._exit_reason(f"the worker stopped reading ({exc})")) from None

    async def _receive(self, timeout_s: float, what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except asyncio.TimeoutError:
            await self.kill()
            raise WorkerFailed(self._died(f"{what} did not finish within {timeout_s:g} s; the worker was killed")) \
                from None
        except (ValueError, asyncio.LimitOverrunError):
            await self.kill()
            raise WorkerFailed(self._died(f"the worker's reply to {what} exceeded {MAX_LINE} bytes; "
                                          "it was killed")) from None
        if not line.endswith(b"\n"):
            raise WorkerFailed(await self._exit_reason(f"during {what}"))
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            await self.kill()
            raise WorkerFailed(self._died(f"the worker's reply to {what} was not JSON; it was killed")) from None
        if type(reply) is not dict:
            await self.kill()
            raise WorkerFailed(self._died(f"the worker's reply to {what} was not an object; it was killed"))
        return reply

    def _died(self, reason: str) -> str:
        self.dead_reason = self.dead_reason or reason
        return reason

    async def _exit_reason(self, when: str) -> str:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), 5.0)
        except asyncio.TimeoutError:
            await self.kill()
            rc = self.proc.returncode if self.proc.returncode is not None else -signal.SIGKILL
        return self._died(f"{_signal_reason(rc)} {when}")

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            await self.proc.wait()
        self._cleanup()

    async def close(self) -> None:
        """Ask the worker to exit; kill it if it does not within a second."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 1.0)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError, RuntimeError):
                pass
        await self.kill()

    def _cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


class HookError(Exception):
    """The hook raised or tried a forbidden operation; the worker is still alive."""


async def open_mechanism(source: str, module_name: str, *, level: str, allow_imports: Iterable[str] = (),
                         env_names: Iterable[str] = (), import_timeout_s: float = 20.0,
                         limits: Optional[Limits] = None) -> tuple[Worker, dict[str, Any]]:
    """Start a worker and load a module into it; WorkerFailed when either fails (the worker is then gone)."""
    worker = await Worker.start(level=level, limits=limits or Limits(), allow_imports=allow_imports,
                                env_names=env_names, timeout_s=max(10.0, import_timeout_s))
    try:
        info = await worker.load(source, module_name, import_timeout_s)
    except BaseException:
        await worker.kill()
        raise
    if not info["ok"]:
        await worker.close()
    return worker, info

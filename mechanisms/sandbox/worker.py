"""The mechanism worker: the process in which generated code is imported and its hooks run.

Started by :mod:`mechanisms.sandbox.worker_client` as ``python -I -S -B`` with a clean
environment. It moves the protocol off descriptors 0 and 1 (which, with 2, then lead to
/dev/null, so the module's prints and writes to the standard streams go nowhere), imports
what it needs, applies the wall (:func:`mechanisms.sandbox.isolation.lock_down`) and only then
reads the generated source. From there it answers one JSON line per request:

- ``{"op": "load", "source": ..., "module_name": ...}`` → ``{"ok": true, "class_name",
  "name", "hooks"}``: runs the module's top level and the class's constructor;
- ``{"op": "call", "id": n, "hook": h, "args": [...]}`` → ``{"id": n, "ok": true,
  "value": wire}`` (see :mod:`mechanisms.contract`) or ``{"id": n, "ok": false,
  "error": text}``.

Whatever the module writes onto the protocol descriptor can only be read as the reply
to the request in flight, which the engine checks against the contract like any return
value; a line out of turn kills the worker.
"""
from __future__ import annotations

import builtins
import json
import linecache
import os
import re
import sys
import traceback
import types
from typing import Any, Optional

_TRACEBACK_LINES = 8


class _Protocol:
    def __init__(self) -> None:
        self.inp = os.fdopen(os.dup(0), "rb")
        self.out = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    def read(self) -> Optional[dict[str, Any]]:
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.inp.readline()
            if not chunk:
                return None
            line += chunk
        return json.loads(line.decode("utf-8"))

    def send(self, **data: Any) -> None:
        try:
            line = json.dumps(data, allow_nan=False, ensure_ascii=True)
        except (TypeError, ValueError, RecursionError) as exc:
            line = json.dumps({k: v for k, v in data.items() if k in ("id",)} |
                              {"ok": False, "error": f"the hook's value cannot be sent as plain data: {exc}"[:500]})
        raw = (line + "\n").encode("ascii")
        while raw:
            raw = raw[os.write(self.out, raw):]


def _traceback_tail(exc: BaseException, filename: str) -> str:
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == filename])
    lines = "".join(te.format()).rstrip().splitlines()
    return "\n".join(lines[-_TRACEBACK_LINES:])


class Worker:
    def __init__(self, proto: _Protocol, scratch: str, budget: Any = None, private: bool = False) -> None:
        self.proto = proto
        self.scratch = scratch
        self.budget = budget  # a private_root.Budget, checked after every load and call
        self.private = private
        self.instance: Any = None
        self.filename = "<mechanism>"

    def _guarded(self, fn: Any, *args: Any) -> tuple[Any, Optional[str]]:
        """(value, None), or (None, why) when it raised or tried a forbidden operation."""
        from mechanisms.sandbox.tripwire import runtime_guard

        with runtime_guard(self.scratch) as scope:
            try:
                value = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
                if scope.blocked:
                    return None, f"attempted a forbidden operation: {scope.blocked[0]}"
                return None, f"raised {type(exc).__name__}:\n{_traceback_tail(exc, self.filename)}"
        if scope.blocked:  # refused, even though the mechanism caught the error
            return None, f"attempted a forbidden operation: {scope.blocked[0]}"
        return value, None

    def overrun(self) -> Optional[str]:
        if self.budget is None:
            return None
        from mechanisms.sandbox.private_root import overrun

        return overrun(self.scratch, self.budget, self.private)

    def load(self, msg: dict[str, Any]) -> None:
        from mechanisms.base import Mechanism

        source, name = str(msg["source"]), str(msg["module_name"])
        self.filename = f"<mechanism {name}>"
        linecache.cache[self.filename] = (len(source), None, source.splitlines(True), self.filename)
        module = types.ModuleType(name)
        module.__dict__["__builtins__"] = builtins
        sys.modules[name] = module  # dataclasses and typing look classes' modules up here

        def run_module() -> type:
            exec(compile(source, self.filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
            classes = [o for o in vars(module).values() if isinstance(o, type) and issubclass(o, Mechanism)
                       and o is not Mechanism and o.__module__ == name]
            if len(classes) != 1:
                found = ", ".join(str(c.__name__) for c in classes) or "none"
                raise LookupError(f"the module must define exactly one Mechanism subclass; found {found}")
            return classes[0]

        cls, why = self._guarded(run_module)
        if why is not None:
            found = re.search(r"ModuleNotFoundError: No module named '([^']+)'", why)
            missing = found.group(1) if found else None
            self.proto.send(ok=False, error=f"importing the module {why}", missing=missing)
            return
        from mechanisms.contract import is_valid_name

        names = (type.__dict__["__name__"].__get__(cls), cls.__dict__.get("name", ""))
        if not all(type(n) is str for n in names) or not is_valid_name(names[0]) \
                or not (names[1] == "" or is_valid_name(names[1])):
            self.proto.send(ok=False, error="the class name and its `name` must be 1-40 letters, digits, _ or -, "
                                            "starting with a letter or _")
            return
        if any("__del__" in vars(k) for k in cls.__mro__ if k is not object):
            self.proto.send(ok=False, error=f"{names[0]} defines a finaliser (__del__); a mechanism must not")
            return
        hooks = cls.overridden_hooks()
        if not hooks:
            self.proto.send(ok=False, error=f"{cls.__name__} overrides none of the hooks, so it would do nothing")
            return
        instance, why = self._guarded(cls)
        if why is not None:
            self.proto.send(ok=False, error=f"__init__ {why}")
            return
        self.instance = instance
        over = self.overrun()
        if over is not None:
            self.proto.send(ok=False, error=f"importing the module {over}")
            return
        self.proto.send(ok=True, class_name=names[0], name=names[1] or names[0], hooks=hooks)

    def call(self, msg: dict[str, Any]) -> None:
        from mechanisms.base import HOOKS
        from mechanisms.contract import state_from_wire, to_wire

        call_id, hook, args = msg.get("id"), msg.get("hook"), list(msg.get("args") or [])
        if self.instance is None or hook not in HOOKS or not args:
            self.proto.send(id=call_id, ok=False, error=f"bad request for hook {hook!r}")
            return
        args[0] = state_from_wire(args[0])
        value, why = self._guarded(getattr(self.instance, hook), *args)
        over = self.overrun()
        if over is not None:  # fatal even where the hook caught its failed write: the engine kills this worker
            self.proto.send(id=call_id, ok=False, fatal=True, error=f"{hook} {over}")
            return
        if why is not None:
            self.proto.send(id=call_id, ok=False, error=f"{hook} {why}")
            return
        wire, why = self._guarded(to_wire, hook, value)
        if why is not None:
            self.proto.send(id=call_id, ok=False, error=f"{hook} returned a value that {why}")
            return
        self.proto.send(id=call_id, ok=True, value=wire)


def _die_with_the_engine(parent: int) -> None:
    """SIGKILL this worker when the engine exits, even while a hook spins."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the engine died before the line above
        os._exit(1)


def main() -> int:
    proto = _Protocol()
    setup = proto.read() or {}
    if sys.platform == "linux" and setup.get("parent"):
        _die_with_the_engine(int(setup["parent"]))
    scratch = str(setup.get("scratch") or "")
    os.chdir(scratch)
    os.environ["TMPDIR"] = scratch  # tempfile's folder is the scratch, under the same budget
    sys.dont_write_bytecode = True
    for entry in setup.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    try:
        import importlib

        # What the worker and the module need, imported before the wall (trusted code).
        # zlib, _bz2 and _lzma link shared libraries outside the read rules: loaded here, gzip, zipfile,
        # bz2 and lzma (pure Python in the standard library) work behind the wall.
        for mod in ("mechanisms.base", "mechanisms.contract", "mechanisms.sandbox.tripwire",
                    "mechanisms.sandbox.private_root", "json", "dataclasses", "typing", "collections", "math", "re",
                    "zlib", "_bz2", "_lzma", *setup.get("preimport", [])):
            try:
                importlib.import_module(mod)
            except ImportError:
                pass  # a missing package is named when the module imports it
        from mechanisms.sandbox.isolation import Limits, lock_down
        from mechanisms.sandbox.private_root import Budget

        limits = Limits(**setup.get("limits", {}))
        in_force, private = lock_down(str(setup.get("level")), limits, setup.get("read_only", []), scratch)
        budget = Budget(limits.scratch_mb * 1024 * 1024, limits.scratch_files)
    except Exception as exc:  # noqa: BLE001 - reported, and the worker exits
        proto.send(ready=False, error=f"the worker could not isolate itself: {type(exc).__name__}: {exc}")
        return 1
    proto.send(ready=True, level=in_force, pid=os.getpid())
    worker = Worker(proto, scratch, budget, private)
    while True:
        msg = proto.read()
        if msg is None or msg.get("op") == "exit":
            return 0
        try:
            if msg.get("op") == "load":
                worker.load(msg)
            elif msg.get("op") == "call":
                worker.call(msg)
            else:
                proto.send(id=msg.get("id"), ok=False, error="unknown request")
        except BaseException as exc:  # noqa: BLE001 - the worker's own failure, reported then fatal
            proto.send(id=msg.get("id"), ok=False, error=f"the worker failed: {type(exc).__name__}: {exc}"[:2000])
            return 1


if __name__ == "__main__":
    raise SystemExit(main())

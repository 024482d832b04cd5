"""The child process behind :func:`mechanisms.sandbox.validate`: import, then dry-run every hook.

Reads one JSON payload on stdin (module path and name, recorded trace, schema, hook time
limit, writable folder, nonce), imports the module, instantiates its mechanism class and
replays the trace through every hook under the runtime guard, each call limited by
SIGALRM. It reports on a private copy of stdout, one ``<mark><nonce> <json>`` line per
event; the mechanism's own prints go to stderr, so they cannot corrupt the report.

Replay: ``on_attach`` sees the leading baseline record(s); then, for each later record,
the hooks see the trace before it, as the inner loop would: ``shape_prompt``;
``review_proposal`` with the recorded proposal (trained iterations); ``decide`` (kept or
discarded iterations with a score); ``observe``. A synthetic baseline and iteration are
added when the trace lacks them, so every hook is called at least once.
"""
from __future__ import annotations

import copy
import json
import os
import reprlib
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from mechanisms.base import Mechanism, Modify, SearchState, Veto
from mechanisms.sandbox import (PROTOCOL_MARK, GuardScope, MechanismLoadError, find_mechanism_class,
                                import_dependencies, import_module_file, runtime_guard)

TRAINED = ("keep", "discard", "crash", "cancelled")
PROMPT = ("You are tuning the hyperparameters of train.py. Propose one change as JSON with "
          "'changes' and 'hypothesis'. (A dry-run prompt used to check a search mechanism.)")
_TRACEBACK_LINES = 8


class HookTimeout(BaseException):
    """Raised by SIGALRM inside a hook; a BaseException so `except Exception` does not swallow it."""


class HookFailed(Exception):
    pass


class Channel:
    """The report channel: a private copy of stdout; fd 1 and sys.stdout now lead to stderr."""

    def __init__(self, nonce: str) -> None:
        self.fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self.prefix = f"{PROTOCOL_MARK}{nonce} "

    def send(self, event: str, **data: Any) -> None:
        line = (self.prefix + json.dumps({"event": event, **data}, default=str) + "\n").encode("utf-8")
        while line:
            line = line[os.write(self.fd, line):]


def _show(value: Any) -> str:
    """What a hook returned, without running the mechanism's own __repr__."""
    if type(value).__module__ == "builtins":
        return f"{type(value).__name__} {reprlib.repr(value)}"
    return f"an instance of {type(value).__qualname__}"


_OWN_FILES = (__file__, getattr(sys.modules.get("mechanisms.sandbox"), "__file__", ""))


def _traceback_tail(exc: BaseException) -> str:
    """The last lines of the traceback, without this runner's and the import machinery's frames."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename not in _OWN_FILES and not f.filename.startswith("<frozen importlib")])
    lines = "".join(te.format()).rstrip().splitlines()
    return "\n".join(lines[-_TRACEBACK_LINES:])


# --- return checks: None when the value is allowed, else the reason ------------------------------

def _check_shape_prompt(value: Any, schema: dict[str, dict]) -> Optional[str]:
    if value is None or isinstance(value, str):
        return None
    return f"shape_prompt returned {_show(value)}; it must return a str or None"


def _check_review(value: Any, schema: dict[str, dict]) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, Veto):
        return None if isinstance(value.reason, str) else \
            f"review_proposal returned Veto({_show(value.reason)}); the reason must be a str"
    if isinstance(value, Modify):
        if not isinstance(value.changes, dict):
            return f"review_proposal returned Modify({_show(value.changes)}); the changes must be a dict"
        unknown = sorted(str(k) for k in value.changes if schema and k not in schema)
        if unknown:
            return (f"review_proposal returned Modify with unknown parameter(s) {', '.join(unknown)}; "
                    f"known: {', '.join(schema)}")
        return None
    return f"review_proposal returned {_show(value)}; it must return None, Veto(reason) or Modify(changes)"


def _check_decide(value: Any, schema: dict[str, dict]) -> Optional[str]:
    if value is None or (isinstance(value, str) and value in ("keep", "discard")):
        return None
    return f"decide returned {_show(value)}; it must return 'keep', 'discard' or None"


# --- the trace as the hooks see it -------------------------------------------------------------

def _state(records: list[dict], schema: dict[str, dict], upto: int, iteration: int) -> SearchState:
    """A fresh snapshot of the trace's first ``upto`` records, folded like the engine's state."""
    prefix = copy.deepcopy(records[:upto])
    baseline = best = None
    best_values: dict[str, Any] = {}
    for r in prefix:
        if r.get("decision") == "baseline" and r.get("val_bpb") is not None:
            baseline = best = r["val_bpb"]
            best_values = dict(r.get("values") or {})
        elif r.get("decision") == "keep" and r.get("val_bpb") is not None:
            best = r["val_bpb"]
            best_values = dict(r.get("values") or {})
    return SearchState(iteration=iteration, records=prefix, schema=copy.deepcopy(schema), best_values=best_values,
                       best_val_bpb=best, baseline_val_bpb=baseline)


def _result(record: dict) -> dict[str, Any]:
    decision = record.get("decision")
    if decision in ("keep", "discard") and record.get("val_bpb") is not None:
        return {"outcome": "ok", "val_bpb": record["val_bpb"], "metrics": {}}
    outcome = "cancelled" if decision == "cancelled" else "crash"
    return {"outcome": outcome, "val_bpb": None, "metrics": {}}


def _with_synthetic(records: list[dict], schema: dict[str, dict]) -> tuple[list[dict], int]:
    """The trace plus a synthetic baseline and a scored iteration where it lacks them."""
    values = {name: spec.get("value") for name, spec in schema.items()}
    out, added = list(records), 0
    if not any(r.get("decision") == "baseline" for r in out):
        out.insert(0, {"iteration": 0, "decision": "baseline", "changes": {}, "hypothesis": "", "val_bpb": 1.0,
                       "best_before": None, "values": values})
        added += 1
    if not any(r.get("decision") in ("keep", "discard") and r.get("val_bpb") is not None for r in out):
        best = _state(out, schema, len(out), 0).best_val_bpb or 1.0
        active = [n for n, s in schema.items() if not s.get("locked")]
        changes = {active[0]: values[active[0]]} if active else {}
        out.append({"iteration": max((int(r.get("iteration", 0)) for r in out), default=0) + 1,
                    "decision": "discard", "changes": changes, "hypothesis": "synthetic dry-run proposal",
                    "val_bpb": best + 0.01, "best_before": best, "values": values})
        added += 1
    return out, added


class Replay:
    def __init__(self, cls: type[Mechanism], records: list[dict], schema: dict[str, dict], hook_timeout_s: float,
                 channel: Channel, scope: GuardScope) -> None:
        self.cls = cls
        self.records, self.synthetic = _with_synthetic(records, schema)
        self.schema = schema
        self.timeout_s = hook_timeout_s
        self.channel = channel
        self.scope = scope
        self.calls: Counter = Counter()
        self.slowest = (0.0, "")

    def call(self, hook: str, fn: Callable[..., Any], *args: Any,
             check: Optional[Callable[[Any, dict[str, dict]], Optional[str]]] = None) -> Any:
        self.calls[hook] += 1
        n = sum(self.calls.values())
        self.channel.send("hook", hook=hook, call=n)
        blocked_before = len(self.scope.blocked)
        started = time.monotonic()
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
                value = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except HookTimeout:
            raise HookFailed(self._timeout(hook, n)) from None
        except BaseException as exc:  # noqa: BLE001 - any failure is the mechanism's, and is reported
            if len(self.scope.blocked) > blocked_before:
                raise HookFailed(self._blocked(hook, blocked_before)) from None
            raise HookFailed(f"{hook} raised {type(exc).__name__} (call {n}):\n{_traceback_tail(exc)}") from None
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_s:  # it swallowed the alarm and returned anyway
            raise HookFailed(self._timeout(hook, n))
        if len(self.scope.blocked) > blocked_before:  # refused, even if the mechanism caught the error
            raise HookFailed(self._blocked(hook, blocked_before))
        self.slowest = max(self.slowest, (elapsed, hook))
        reason = check(value, self.schema) if check else None
        if reason:
            raise HookFailed(f"{reason} (call {n})")
        return value

    def _timeout(self, hook: str, n: int) -> str:
        return f"{hook} did not return within {self.timeout_s:g} s (call {n}); hooks must be fast and must not loop"

    def _blocked(self, hook: str, since: int) -> str:
        return f"{hook} attempted a forbidden operation: {self.scope.blocked[since]}"

    def run(self) -> str:
        """Replays the trace; returns a summary, or raises HookFailed."""
        instance = self.call("__init__", self.cls)
        first = 0
        while first < len(self.records) and self.records[first].get("decision") == "baseline":
            first += 1
        self.call("on_attach", instance.on_attach, self.state(first))
        for upto in range(first, len(self.records)):
            self.iteration(instance, upto, self.records[upto])
        return self.summary(len(self.records) - first)

    def state(self, upto: int) -> SearchState:
        iteration = int(self.records[upto].get("iteration", upto)) if upto < len(self.records) else upto
        return _state(self.records, self.schema, upto, iteration)

    def iteration(self, instance: Mechanism, upto: int, record: dict) -> None:
        self.call("shape_prompt", instance.shape_prompt, self.state(upto), PROMPT, check=_check_shape_prompt)
        decision = record.get("decision")
        if decision not in TRAINED:
            return  # no valid proposal: the loop never reviewed, trained or observed anything
        proposal = {"changes": dict(record.get("changes") or {}), "hypothesis": str(record.get("hypothesis") or "")}
        self.call("review_proposal", instance.review_proposal, self.state(upto), proposal, check=_check_review)
        result = _result(record)
        best = self.state(upto).best_val_bpb
        if decision in ("keep", "discard") and result["val_bpb"] is not None and best is not None:
            self.call("decide", instance.decide, self.state(upto), dict(result), best, check=_check_decide)
        self.call("observe", instance.observe, self.state(upto), dict(result))

    def summary(self, iterations: int) -> str:
        counts = ", ".join(f"{hook} ×{n}" for hook, n in self.calls.items())
        synthetic = f" ({self.synthetic} synthetic record(s) added)" if self.synthetic else ""
        slowest = f"; slowest call: {self.slowest[1]} {self.slowest[0]:.3f} s" if self.slowest[1] else ""
        return (f"{sum(self.calls.values())} hook calls over {iterations} replayed iteration(s){synthetic}: "
                f"{counts}{slowest}")


def _on_alarm(signum: int, frame: Any) -> None:
    raise HookTimeout()


def _forbidden_at_import(channel: Channel, blocked: list[str]) -> None:
    channel.send("import_failed", detail=f"the module's top level attempted a forbidden operation: {blocked[0]}")


def _import(channel: Channel, payload: dict[str, Any], write_root: Path) -> Optional[type[Mechanism]]:
    path = Path(payload["path"])
    scope = GuardScope(None)
    try:
        import_dependencies(path.read_text(encoding="utf-8"))  # trusted code: outside the guard
        with runtime_guard(write_root) as scope:
            module = import_module_file(path, payload["module_name"])
            cls = find_mechanism_class(module)
    except MechanismLoadError as exc:
        channel.send("import_failed", detail=str(exc))
        return None
    except ModuleNotFoundError as exc:
        name = exc.name or str(exc)
        channel.send("import_failed", missing=name, detail=(
            f"missing package '{name}': it is not installed in the engine's Python environment; use the "
            "standard library instead, or install it and add it to level2.allow_imports"))
        return None
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        if scope.blocked:
            _forbidden_at_import(channel, scope.blocked)
        else:
            channel.send("import_failed", detail=f"importing the module raised {type(exc).__name__}:\n"
                                                 f"{_traceback_tail(exc)}")
        return None
    if scope.blocked:  # refused, even though the module caught the error
        _forbidden_at_import(channel, scope.blocked)
        return None
    return cls


def main() -> int:
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    channel = Channel(payload["nonce"])
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGALRM, _on_alarm)
    write_root = Path(payload["write_root"])
    cls = _import(channel, payload, write_root)
    if cls is None:
        return 0
    channel.send("imported", class_name=cls.__name__, hooks=cls.overridden_hooks(), name=cls.display_name())
    with runtime_guard(write_root) as scope:
        replay = Replay(cls, payload["records"], payload["schema"], float(payload["hook_timeout_s"]), channel, scope)
        try:
            detail, ok = replay.run(), True
        except HookFailed as exc:
            detail, ok = str(exc), False
    channel.send("done", ok=ok, detail=detail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

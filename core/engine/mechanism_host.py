"""Runs the active search mechanisms' hooks for the inner loop, and proves it.

Every hook call is counted per mechanism (the counts ride on each IterationFinished
event) and every effect — prompt text added, proposal vetoed or modified, decision
overridden — is an event. A hook that raises, overruns its time limit or returns
something that is not allowed deactivates its mechanism with an event; the loop goes on.
Nothing falls back silently.
"""
from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mechanisms.base import Mechanism, Modify, Veto

from core.record import events as ev
from core.levels.trace import snapshot

if TYPE_CHECKING:
    from core.levels.inner import Proposal
    from core.record.state import RunState
    from core.services.trainer import TrainResult

DECISIONS = ("keep", "discard")


class HookFailed(Exception):
    pass


@dataclass
class Active:
    mechanism: Mechanism
    name: str
    origin: str
    calls: Counter = field(default_factory=Counter)  # lifetime
    pending: Counter = field(default_factory=Counter)  # since the last IterationFinished


def _run_with_limit(fn: Callable[[], Any], timeout_s: float) -> "asyncio.Future[Any]":
    """Run a hook in a thread; past the limit, raise TimeoutError inside that thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(setter: Callable[[], Any]) -> None:
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or setter())
        except RuntimeError:
            pass  # the loop closed while a runaway hook was still unwinding

    def target() -> None:
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - any failure deactivates the mechanism
            error = exc  # `exc` is unbound when the except block ends; the callback runs later
            settle(lambda: fut.set_exception(error))
        else:
            settle(lambda: fut.set_result(value))

    thread = threading.Thread(target=target, daemon=True, name="mechanism-hook")
    thread.start()

    def on_timeout() -> None:
        if fut.done():
            return
        fut.set_exception(TimeoutError(f"hook exceeded its {timeout_s:g} s limit"))
        # A runaway pure-Python loop is stopped by an exception raised inside its thread.
        if thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))

    timer = loop.call_later(timeout_s, on_timeout)
    fut.add_done_callback(lambda _: timer.cancel())
    return fut


class MechanismHost:
    def __init__(self, emit: Callable[[ev.Event], Any], schema_dicts: Callable[[], dict[str, Any]],
                 hook_timeout_s: float, write_root: Path | None = None) -> None:
        self._emit = emit
        self._write_root = write_root  # the session folder: the only place hooks may write
        self._schema = schema_dicts
        self.timeout_s = hook_timeout_s
        self.active: list[Active] = []

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.active]

    async def attach(self, mechanism: Mechanism, state: "RunState", *, origin: str, artifact: str = "",
                     description: str = "") -> bool:
        name = type(mechanism).display_name()
        if name in self.names:
            await self.detach(name, "replaced by a new version")
        entry = Active(mechanism, name, origin)
        self.active.append(entry)
        self._emit(ev.MechanismActivated(name=name, origin=origin, hooks=type(mechanism).overridden_hooks(),
                                         artifact=artifact, description=description))
        try:
            await self._call(entry, "on_attach", snapshot(state, self._schema()))
        except HookFailed:
            return False
        return True

    async def detach(self, name: str, reason: str, hook: str = "") -> None:
        for entry in list(self.active):
            if entry.name == name:
                self.active.remove(entry)
                self._emit(ev.MechanismDeactivated(name=name, reason=reason, hook=hook, calls=dict(entry.calls)))

    def take_counts(self) -> dict[str, dict[str, int]]:
        """Hook calls since the last call, per active mechanism (recorded per iteration)."""
        counts = {a.name: dict(a.pending) for a in self.active if a.pending}
        for a in self.active:
            a.pending.clear()
        return counts

    async def _call(self, entry: Active, hook: str, *args: Any) -> Any:
        entry.calls[hook] += 1
        entry.pending[hook] += 1
        from mechanisms.sandbox import runtime_guard  # audit hooks only once a mechanism runs

        fn = getattr(entry.mechanism, hook)

        def guarded() -> Any:
            with runtime_guard(self._write_root):
                return fn(*args)

        try:
            return await _run_with_limit(guarded, self.timeout_s)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self.detach(entry.name, f"{hook} failed: {reason}", hook)
            raise HookFailed(reason) from None

    # --- the hooks, as the inner loop calls them -------------------------------------------

    async def shape_prompt(self, state: "RunState", prompt: str) -> str:
        notes = []
        for entry in list(self.active):
            try:
                text = await self._call(entry, "shape_prompt", snapshot(state, self._schema()), prompt)
            except HookFailed:
                continue
            if text is None:
                continue
            if not isinstance(text, str):
                await self.detach(entry.name, f"shape_prompt returned {type(text).__name__}, expected str or None",
                                  "shape_prompt")
                continue
            if text.strip():
                notes.append(f"[{entry.name}] {text.strip()}")
                self._emit(ev.MechanismEffect(iteration=state.running or 0, name=entry.name, hook="shape_prompt",
                                              effect="prompt", detail=text.strip()[:500]))
        return ("\n## Notes from the active search mechanisms\n" + "\n".join(notes) + "\n") if notes else ""

    async def review(self, state: "RunState", proposal: "Proposal",
                     validate: Callable[[dict[str, Any]], dict[str, Any]]) -> str | None:
        """Let each mechanism accept, modify or veto; returns a veto reason, or None."""
        for entry in list(self.active):
            try:
                verdict = await self._call(entry, "review_proposal", snapshot(state, self._schema()),
                                           {"changes": dict(proposal.changes), "hypothesis": proposal.hypothesis})
            except HookFailed:
                continue
            n = state.running or 0
            if verdict is None:
                continue
            if isinstance(verdict, Veto):
                reason = f"vetoed by {entry.name}: {verdict.reason}"
                self._emit(ev.MechanismEffect(iteration=n, name=entry.name, hook="review_proposal",
                                              effect="vetoed", detail=verdict.reason[:500]))
                return reason
            if isinstance(verdict, Modify) and isinstance(verdict.changes, dict):
                try:
                    changes = validate(verdict.changes)
                except ValueError as exc:
                    await self.detach(entry.name, f"review_proposal returned an invalid modification: {exc}",
                                      "review_proposal")
                    continue
                proposal.changes = changes
                self._emit(ev.MechanismEffect(iteration=n, name=entry.name, hook="review_proposal",
                                              effect="modified", detail=f"{changes} {verdict.note}"[:500]))
                continue
            await self.detach(entry.name, f"review_proposal returned {verdict!r:.80}, expected None, Veto or Modify",
                              "review_proposal")
        return None

    async def decide(self, state: "RunState", result: "TrainResult", decision: str) -> tuple[str, str | None]:
        """Returns the (possibly overridden) decision and the overriding mechanism's name."""
        if decision not in DECISIONS:
            return decision, None  # crashes stay crashes: a mechanism cannot keep a run with no score
        overrider = None
        for entry in list(self.active):
            try:
                verdict = await self._call(entry, "decide", snapshot(state, self._schema()),
                                           _result_dict(result), state.best_val_bpb)
            except HookFailed:
                continue
            if verdict is None:
                continue
            if verdict not in DECISIONS:
                await self.detach(entry.name, f"decide returned {verdict!r:.80}, expected 'keep', 'discard' or None",
                                  "decide")
                continue
            if verdict != decision:
                self._emit(ev.MechanismEffect(iteration=state.running or 0, name=entry.name, hook="decide",
                                              effect="overrode", detail=f"{decision} -> {verdict}"))
                decision, overrider = verdict, entry.name
        return decision, overrider

    async def observe(self, state: "RunState", result: "TrainResult | None") -> None:
        for entry in list(self.active):
            try:
                await self._call(entry, "observe", snapshot(state, self._schema()), _result_dict(result))
            except HookFailed:
                continue


def _result_dict(result: "TrainResult | None") -> dict[str, Any]:
    if result is None:
        return {"outcome": "none", "val_bpb": None, "metrics": {}}
    return {"outcome": result.outcome.value, "val_bpb": result.val_bpb, "metrics": dict(result.metrics)}

"""Waiting out a down endpoint: an LLM call that meets an outage pauses, probes, and goes on.

An outage is never a result. A transport failure the client retried in vain (`is_outage`), or
``endpoint.unusable_replies`` unusable replies in a row, makes the call emit EndpointDown and
re-send itself as the probe, with capped exponential backoff (tenacity, as the client's own
retries, through the client's injectable sleep), until a usable answer comes back: EndpointUp,
and the caller never knew. A stop or the run's end releases the wait: EndpointWaitEnded, then
`WaitAbandoned` (a CancelledError), so the iteration is interrupted and re-run on resume.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential

from core.record import events as ev
from core.services.llm import ChatResult, LLMError, Sleep, is_outage

PROBE_FIRST_S = 1.0  # the first probe's delay; it doubles up to endpoint.probe_max_s

Check = Callable[[ChatResult], "str | None"]  # why a reply is unusable, or None


class WaitAbandoned(asyncio.CancelledError):
    """The run stopped (or ended) while a call waited for its endpoint: the call is cancelled, not failed."""


class Unusable(Exception):
    """A probe's reply came back but could not be used (the caller's check said why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EndpointGate:
    """Holds calls while their endpoint is down; counts unusable replies in a row across calls."""

    def __init__(self, emit: Callable[[ev.Event], object], monotonic: Callable[[], float]) -> None:
        self._emit = emit
        self._monotonic = monotonic
        self.released = asyncio.Event()  # set by a stop or the run's end: every wait gives up
        self.unusable_in_row = 0

    def release(self) -> None:
        self.released.set()

    def note_reply(self, problem: str | None, limit: int) -> bool:
        """Count one checked reply; True when it makes ``limit`` unusable ones in a row (the call should wait)."""
        self.unusable_in_row = self.unusable_in_row + 1 if problem else 0
        return bool(problem) and self.unusable_in_row >= limit

    async def hold(self, attempt: Callable[[], Awaitable[ChatResult]], *, call_id: str, level: str,
                   error: LLMError | Unusable, check: Check | None, sleep: Sleep, probe_max_s: float,
                   on_probe_failed: Callable[[], None] | None = None) -> ChatResult:
        """Wait out the outage ``error`` began: probe with ``attempt`` until it answers usably, a stop, or the end.

        Raises WaitAbandoned on a stop, or the LLMError of a probe that is no outage (a revoked key).
        """
        cause = "unusable" if isinstance(error, Unusable) else "unreachable"
        started = self._monotonic()
        self._emit(ev.EndpointDown(call_id=call_id, level=level, cause=cause, kind=_kind(error),
                                   reason=_text(error)))
        probes = 0
        policy = wait_exponential(multiplier=PROBE_FIRST_S, min=PROBE_FIRST_S, max=probe_max_s)

        async def probe() -> ChatResult:
            nonlocal probes
            probes += 1
            result = await attempt()
            problem = check(result) if check is not None else None
            self.note_reply(problem, 1)
            if problem:
                raise Unusable(problem)
            return result

        def wait(state: RetryCallState) -> float:
            return policy(state)

        def before_sleep(state: RetryCallState) -> None:
            failed = state.outcome.exception() if state.outcome is not None else None
            if on_probe_failed is not None:
                on_probe_failed()
            self._emit(ev.EndpointProbe(call_id=call_id, level=level, probe=probes, kind=_kind(failed),
                                        error=_text(failed), delay_s=state.next_action.sleep if state.next_action else 0.0))

        async def stoppable_sleep(seconds: float) -> None:
            await self._sleep_unless_released(sleep, seconds)

        try:
            # the first probe waits too: the call has just spent its own retries
            self._emit(ev.EndpointProbe(call_id=call_id, level=level, probe=0, kind=_kind(error), error=_text(error),
                                        delay_s=PROBE_FIRST_S))
            await stoppable_sleep(PROBE_FIRST_S)
            retrying = AsyncRetrying(stop=stop_never, wait=wait, sleep=stoppable_sleep, before_sleep=before_sleep,
                                     retry=retry_if_exception(_waits_out), reraise=True)
            result = await retrying(probe)
        except BaseException as exc:
            why = ("the run stopped while the endpoint was down" if isinstance(exc, asyncio.CancelledError)
                   else f"a probe failed for good: {exc}")
            self._emit(ev.EndpointWaitEnded(call_id=call_id, level=level, reason=why))
            raise
        self._emit(ev.EndpointUp(call_id=call_id, level=level, probes=probes, down_s=self._monotonic() - started))
        return result

    async def _sleep_unless_released(self, sleep: Sleep, seconds: float) -> None:
        if self.released.is_set():
            raise WaitAbandoned("the run stopped while the endpoint was down")
        sleeper = asyncio.ensure_future(sleep(seconds))
        release = asyncio.ensure_future(self.released.wait())
        try:
            done, _ = await asyncio.wait({sleeper, release}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, release):
                task.cancel()
        if release in done:
            raise WaitAbandoned("the run stopped while the endpoint was down")


def _waits_out(exc: BaseException) -> bool:
    return isinstance(exc, Unusable) or (isinstance(exc, LLMError) and is_outage(exc))


def _kind(error: BaseException | None) -> str:
    if isinstance(error, Unusable):
        return "unusable"
    return error.kind if isinstance(error, LLMError) else ""


def _text(error: BaseException | None) -> str:
    return str(error)[:1000] if error is not None else ""

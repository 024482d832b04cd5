"""What the scheduler may use of the engine: the run port.

The engine (core/engine/engine.py) implements :class:`RunPort`; the scheduler is handed the
engine as one and imports only this module, so the two never import each other and the
scheduler touches nothing private. Events, state, config, artifacts and the monotonic clock
come through the run context the levels see too (:class:`core.levels.context.RunContext`);
the rest is what only the engine can do: end the run, run the outer levels, activate
validated mechanisms, expire approvals, and say whether a pause was lifted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from core.levels.context import RunContext
    from core.levels.inner import InnerLoop
    from core.services.executors import Executor


class RunPort(Protocol):
    """The engine as the scheduler sees it."""

    @property
    def context(self) -> "RunContext": ...

    @property
    def inner(self) -> "InnerLoop": ...

    @property
    def executor(self) -> "Executor": ...

    @property
    def stopping(self) -> bool: ...

    @property
    def stop_reason(self) -> str: ...

    @property
    def log(self) -> Callable[[str], None]: ...

    @property
    def pause_lifted(self) -> bool:
        """A resume (or a stop) arrived since the last pause was asked for."""
        ...

    @property
    def approvals_pending(self) -> bool:
        """A validated mechanism waits for the user's approval."""
        ...

    def request_stop(self, reason: str, *, hard: bool = False) -> None: ...

    def check_limits(self, *, more: bool) -> None:
        """The spend caps and the stuck-loop rule (core/engine/limits.py): warn, pause, or lift their pause."""
        ...

    def expire_approvals(self, reason: str) -> None:
        """Every pending approval is recorded as expired, with ``reason``."""
        ...

    async def activate_ready(self) -> None:
        """Attach the mechanisms validated (and approved) since the last boundary."""
        ...

    async def outer_levels(self, cycle: int, n: int) -> None:
        """Level 1.5's cycle ``cycle`` and, when due, Level 2 (started, concurrent), after ``n`` iterations."""
        ...

    async def before_search(self) -> bool:
        """After the baseline, before the first proposal: the declared σ, a fixed seed, the calibration.

        Cheap once done; False when a stop cut the calibration short."""
        ...

    async def audit_at_end(self) -> bool:
        """The keep-chain audit after the last iteration (when due); False when a stop cut it short."""
        ...

    async def finish(self, status: str, reason: str) -> None:
        """End the run: the RunFinished event, after what is pending has been settled."""
        ...

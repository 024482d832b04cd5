"""What the levels may use of a run: the run context, and the plain results it hands back.

Level 1, 1.5 and 2 receive a :class:`RunContext`, never the engine: this Protocol is the
whole of what they can see (emit events, read the state and config, write and read
artifacts, train, ask the LLM, the mechanisms' hooks). The engine layer implements it
(``core.engine.context``); a unit test drives the levels with a small fake of it.
Results travel back as return values (:class:`TrainRun`, :class:`Verdict`), never as
attributes of a long-lived object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from core.record import events as ev

if TYPE_CHECKING:
    from core.record.config import Config
    from core.record.state import RunState
    from core.services.endpoint_context import ServerContext
    from core.services.llm import ChatResult
    from core.services.script import ParamSpec
    from core.services.trainer import TrainResult


# Each level's reply limit when endpoint.max_tokens is unset: room for its answer (and some
# reasoning), so a runaway reply ends at finish_reason "length" instead of at the timeout.
DEFAULT_MAX_TOKENS: dict[str, int] = {"inner": 2048, "strategy": 2048, "research": 8192}


class FatalRunError(Exception):
    """The run cannot go on (bad credentials, unknown model, no quota, broken baseline)."""


@dataclass(frozen=True)
class TrainRun:
    """One training run as the caller needs it: the trainer's result and the script it ran."""

    result: "TrainResult"
    script: str  # artifact (relative to the session) of the script evaluated


@dataclass(frozen=True)
class Verdict:
    decision: str  # keep | discard | crash | cancelled | interrupted
    rule: str  # which rule decided, with its numbers (for people)
    reason: str
    val_bpb: float | None = None  # the estimate the decision used: the mean once confirmed
    details: dict[str, Any] = field(default_factory=dict)  # the same numbers, structured


@dataclass
class Ready:
    """A validated mechanism waiting for the next iteration boundary."""

    research_id: str
    name: str
    origin: str  # generated | builtin
    path: Path | None = None  # module file, for generated ones
    source_rel: str = ""
    description: str = ""
    diff_rel: str = ""
    report_rel: str = ""


class AcceptanceRule(Protocol):
    """The run's keep/discard rule (``core.engine.acceptance.AcceptancePolicy``)."""

    @property
    def confirm(self) -> bool: ...

    def judge(self, best: float, val_bpb: float) -> Verdict: ...

    def judge_confirmed(self, best: float, first: Verdict,
                        runs: Sequence[tuple[int, float | None]]) -> Verdict: ...


class MechanismHooks(Protocol):
    """The active mechanisms, as the inner loop calls them; every call is counted by the host."""

    @property
    def names(self) -> list[str]: ...

    def take_counts(self) -> dict[str, dict[str, int]]: ...

    # ``iteration``: the trial the call is for (with trials in parallel, not always the last started)
    async def shape_prompt(self, state: "RunState", prompt: str, *, iteration: int) -> str: ...

    async def review(self, state: "RunState", proposal: Any,
                     validate: Callable[[dict[str, Any]], dict[str, Any]], *, iteration: int) -> str | None: ...

    async def decide(self, state: "RunState", result: "TrainResult", decision: str, *,
                     iteration: int) -> tuple[str, str | None]: ...

    async def observe(self, state: "RunState", result: "TrainResult | None", *, iteration: int) -> None: ...


class RunContext(Protocol):
    """Everything a level may use of the run it belongs to."""

    @property
    def cfg(self) -> "Config": ...

    @property
    def state(self) -> "RunState": ...

    @property
    def schema(self) -> dict[str, "ParamSpec"]: ...

    @property
    def session_dir(self) -> Path: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def mechanisms(self) -> MechanismHooks: ...

    def emit(self, event: ev.Event) -> ev.Event: ...

    def monotonic(self) -> float:
        """Seconds on the engine's monotonic clock: every duration a level records is measured with it."""
        ...

    def artifact(self, relpath: str, data: str | bytes) -> str: ...

    def read_artifact(self, relpath: str) -> str: ...

    def interrupted(self, iteration: int) -> None: ...

    def current_schema(self, values: dict[str, Any]) -> dict[str, "ParamSpec"]: ...

    def schema_dicts(self) -> dict[str, Any]: ...

    def acceptance_policy(self) -> AcceptanceRule: ...

    async def train(self, iteration: int, text: str, diff: str, *, seed: int | None = None) -> TrainRun: ...

    async def call_llm(self, level: str, purpose: str, messages: list[dict[str, str]], *,
                       iteration: int | None = None, json: bool = False, stream_events: bool = False,
                       call_id: str | None = None, schema: dict | None = None,
                       max_tokens: int | None = None, stream: bool | None = None,
                       check: Callable[["ChatResult"], str | None] | None = None,
                       wait_out: bool = True) -> "ChatResult": ...

    async def endpoint_context(self) -> "ServerContext | None":
        """The model's context as the endpoint's server states it (llama.cpp /props, vLLM's model list), or None."""
        ...

    def generated_sources(self) -> dict[str, str]: ...

    def mechanisms_in_play(self) -> set[str]: ...

    def queue_activation(self, ready: Ready) -> None: ...

    async def await_approval(self, research_id: str, name: str) -> bool: ...

    async def prescreen(self, ready: Ready) -> ev.MechanismPrescreened:
        """Try ``ready`` on the surrogate bench with and without it (core/engine/prescreen.py); recorded."""
        ...

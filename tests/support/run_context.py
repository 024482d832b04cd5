"""A run context with nothing but :class:`core.levels.context.RunContext`, for driving the levels alone.

Artifacts live in a dict, events go to a list and the state, training evaluates the
stand-in script's formula (tests/fixtures/scripts/quadratic_train.py) in-process, and
LLM replies come from a queue. It has no attribute the Protocol does not name, so a level
that reached for anything else of the engine fails here with AttributeError.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from core.levels.context import FatalRunError, Ready, TrainRun, Verdict
from core.record import events as ev
from core.record.config import Config
from core.record.state import RunState
from core.services.llm import ChatResult, Usage
from core.services.schema import infer_schema
from core.services.script import ParamSpec, TrainScript
from core.services.trainer import TrainResult


class MinDelta:
    """The plain acceptance rule: keep when val_bpb beats the best by more than ``min_delta``."""

    confirm = False

    def __init__(self, min_delta: float) -> None:
        self.min_delta = min_delta

    def judge(self, best: float, val_bpb: float) -> Verdict:
        keep = val_bpb < best - self.min_delta
        return Verdict("keep" if keep else "discard", f"min_delta {self.min_delta:g}",
                       f"{val_bpb:.6f} vs best {best:.6f}", val_bpb)

    def judge_confirmed(self, best: float, first: Verdict, runs: Any) -> Verdict:
        raise AssertionError("this rule never asks for a confirmation run")


class CountingHooks:
    """No mechanisms active; counts the hook calls the levels make."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def names(self) -> list[str]:
        return []

    def take_counts(self) -> dict[str, dict[str, int]]:
        return {}

    async def shape_prompt(self, state: RunState, prompt: str, *, iteration: int) -> str:
        self.calls.append("shape_prompt")
        return ""

    async def review(self, state: RunState, proposal: Any, validate: Callable[..., Any], *,
                     iteration: int) -> str | None:
        self.calls.append("review")
        return None

    async def decide(self, state: RunState, result: TrainResult, decision: str, *,
                     iteration: int) -> tuple[str, str | None]:
        self.calls.append("decide")
        return decision, None

    async def observe(self, state: RunState, result: TrainResult | None, *, iteration: int) -> None:
        self.calls.append("observe")


def quadratic_val_bpb(text: str, seed: int) -> TrainResult:
    """What the stand-in script prints for these values, as a TrainResult (LR above 1 crashes)."""
    v = TrainScript.parse(text).values()
    if v["LR"] > 1:
        return TrainResult("crash", None, {}, 1, 0.1, "Traceback ...\nRuntimeError: loss exploded (fake crash)",
                           "exit code 1")
    val = 1.0 + 0.05 * math.log(v["LR"] / 0.02) ** 2 + 0.2 * (v["WARMDOWN_RATIO"] - 0.3) ** 2
    val += 0.001 * (v["PATTERN"] != "SSSL") + 0.0001 * seed
    return TrainResult("ok", val, {"val_bpb": val}, 0, 0.1, "", "ok")


class FakeRunContext:
    """Implements RunContext and nothing more (see the module docstring)."""

    __slots__ = ("_cfg", "_state", "_schema", "_dir", "_hooks", "_artifacts", "_replies", "events", "prompts",
                 "queued", "_policy")

    def __init__(self, cfg: Config, script_text: str, *, state: RunState | None = None,
                 artifacts: dict[str, str] | None = None, replies: list[str] | None = None,
                 session_dir: Path = Path("/nonexistent-session")) -> None:
        self._cfg = cfg
        self._dir = session_dir
        self._hooks = CountingHooks()
        self._artifacts: dict[str, str] = dict(artifacts or {})
        self._replies = list(replies or [])
        self.events: list[ev.Event] = []
        self.prompts: list[list[dict[str, str]]] = []
        self.queued: list[Ready] = []
        self._policy = MinDelta(cfg.search.min_delta)
        script = TrainScript.parse(script_text)
        self._schema = infer_schema(script, locked={"DEPTH", "TIME_BUDGET"})
        if state is None:
            state = RunState()
            self._state = state
            self.emit(ev.SessionStarted(session="fake", name=cfg.name, group=cfg.search.group,
                                        levels=list(cfg.search.active_levels), config=cfg.to_dict(),
                                        script=self.artifact("baseline/train.py", script_text),
                                        schema=self.schema_dicts(), guidance=cfg.search.guidance))
        self._state = state

    # --- RunContext -------------------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self._cfg

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def schema(self) -> dict[str, ParamSpec]:
        return self._schema

    @property
    def session_dir(self) -> Path:
        return self._dir

    @property
    def stopping(self) -> bool:
        return False

    @property
    def mechanisms(self) -> CountingHooks:
        return self._hooks

    def emit(self, event: ev.Event) -> ev.Event:
        self.events.append(event)
        self._state.apply(event)
        return event

    def monotonic(self) -> float:
        return time.monotonic()

    def artifact(self, relpath: str, data: str | bytes) -> str:
        rel = f"artifacts/{relpath}"
        self._artifacts[rel] = data if isinstance(data, str) else data.decode("utf-8")
        return rel

    def read_artifact(self, relpath: str) -> str:
        return self._artifacts[relpath]

    def interrupted(self, iteration: int) -> None:
        self.emit(ev.IterationInterrupted(iteration=iteration, reason="interrupted"))

    def current_schema(self, values: dict[str, Any]) -> dict[str, ParamSpec]:
        frozen = self.state.frozen_directions
        return {n: replace(s, value=values.get(n, s.value), frozen_directions=tuple(sorted(frozen.get(n, ()))))
                for n, s in self._schema.items()}

    def schema_dicts(self) -> dict[str, Any]:
        return {n: {"kind": s.kind, "value": s.value, "locked": s.locked, "minimum": s.minimum,
                    "maximum": s.maximum, "choices": list(s.choices) if s.choices else None,
                    "log_scale": s.log_scale, "pow2": s.pow2} for n, s in self._schema.items()}

    def acceptance_policy(self) -> MinDelta:
        return self._policy

    async def train(self, iteration: int, text: str, diff: str, *, seed: int | None = None) -> TrainRun:
        folder = "baseline" if iteration == 0 else f"iterations/{iteration:04d}"
        script = self.artifact(f"{folder}/train.py", text)
        result = quadratic_val_bpb(text, self._cfg.search.seed if seed is None else seed)
        self.emit(ev.TrainingFinished(iteration=iteration, outcome=result.outcome, val_bpb=result.val_bpb,
                                      error_tail=result.error_tail))
        return TrainRun(result, script)

    async def call_llm(self, level: str, purpose: str, messages: list[dict[str, str]], *,
                       iteration: int | None = None, json: bool = False, stream_events: bool = False,
                       call_id: str | None = None, schema: dict | None = None,
                       max_tokens: int | None = None, stream: bool | None = None,
                       check: Any = None, wait_out: bool = True) -> ChatResult:
        if purpose == "endpoint_check":  # the check before a baseline: answered like a healthy endpoint
            return ChatResult('{"ok": true}', "", Usage(), "fake", "stop", 1, 0.0)
        self.prompts.append([dict(m) for m in messages])
        if not self._replies:
            raise FatalRunError("the test ran out of scripted LLM replies")
        return ChatResult(self._replies.pop(0), "", Usage(), "fake", "stop", 1, 0.0)

    async def endpoint_context(self) -> Any:
        return None  # a server that states nothing (like a hosted API)

    def generated_sources(self) -> dict[str, str]:
        return {}

    def mechanisms_in_play(self) -> set[str]:
        return {r.name for r in self.queued}

    def queue_activation(self, ready: Ready) -> None:
        self.queued.append(ready)

    async def await_approval(self, research_id: str, name: str) -> bool:
        return True

    async def prescreen(self, ready: Ready) -> ev.MechanismPrescreened:
        event = ev.MechanismPrescreened(research_id=ready.research_id, name=ready.name, verdict="skipped",
                                        reason="this fake run context has no surrogate bench")
        self.emit(event)
        return event

    # --- for the test, not the levels -----------------------------------------------------------

    @property
    def artifacts(self) -> dict[str, str]:
        return dict(self._artifacts)

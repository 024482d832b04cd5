"""The search-mechanism plug-in surface.

A mechanism is a class deriving from :class:`Mechanism`. The inner loop calls its hooks
at fixed points; a hook that is not overridden is a no-op. Hooks receive plain data
(:class:`SearchState`, dicts) so a mechanism needs nothing from the engine and can be
dry-run in a separate process against a recorded trace.

| hook | called | may return |
|---|---|---|
| ``on_attach(state)`` | once, on activation | nothing |
| ``shape_prompt(state, prompt)`` | before each proposal | text to add to the prompt, or None |
| ``review_proposal(state, proposal)`` | after a proposal is made | None (accept), ``Veto(reason)``, or ``Modify(changes)`` |
| ``decide(state, result, best)`` | after training | "discard" (stricter than the rule), "keep", or None (no opinion) |
| ``observe(state, result)`` | after each iteration | nothing |

A proposal is ``{"changes": {NAME: value}, "hypothesis": str}``; a code proposal
(``search.scope = "code"``) also has ``"edits"``, its ``{"find", "replace"}`` blocks, which a
``Modify`` leaves as they are (it replaces the constants).

``decide`` may turn the acceptance rule's keep into a discard; a "keep" of a result the rule
discarded is refused by the engine (and recorded), so a mechanism can never make the best worse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

HOOKS = ("on_attach", "shape_prompt", "review_proposal", "decide", "observe")


@dataclass(frozen=True)
class Veto:
    """Reject a proposal; the reason is sent back to the proposer, which is asked again."""

    reason: str


@dataclass(frozen=True)
class Modify:
    """Replace a proposal's changes (they are validated again like any proposal)."""

    changes: dict
    note: str = ""


@dataclass
class SearchState:
    """A read-only snapshot of the search that hooks receive.

    ``records`` holds one dict per finished iteration, oldest first, with keys
    iteration, decision (baseline/keep/discard/crash/rejected/cancelled), changes,
    hypothesis, val_bpb, best_before, values (the full configuration evaluated).
    ``schema`` maps each parameter to a dict with kind, value, locked, minimum,
    maximum, choices, log_scale, pow2. ``frozen_directions`` maps a parameter to the
    directions Level 1.5 froze ("up", "down", "→VALUE" for a choice). ``moves`` says what
    the proposer can do from the best configuration: parameter -> {open direction: the
    value one plain step that way}; a parameter or direction absent from it cannot be
    proposed (locked, frozen, at its bound). None: not known (an old trace). ``max_changes``:
    the most changes a proposal (a Modify's included) may make.
    """

    iteration: int = 0
    records: list[dict] = field(default_factory=list)
    schema: dict[str, dict] = field(default_factory=dict)
    best_values: dict[str, Any] = field(default_factory=dict)
    best_val_bpb: Optional[float] = None
    baseline_val_bpb: Optional[float] = None
    frozen: list[str] = field(default_factory=list)
    guidance: str = ""
    frozen_directions: dict[str, list[str]] = field(default_factory=dict)
    moves: Optional[dict[str, dict[str, Any]]] = None
    max_changes: Optional[int] = None  # the most changes one proposal may make (None: not known)

    def active_params(self) -> list[str]:
        return [n for n, s in self.schema.items() if not s.get("locked") and n not in self.frozen]

    def movable_params(self) -> list[str]:
        """The active parameters the proposer can move in some direction now, in schema order."""
        active = self.active_params()
        return active if self.moves is None else [n for n in active if n in self.moves]

    def with_change(self, changes: dict, name: str, value: Any) -> dict:
        """``changes`` plus ``name = value``, within ``max_changes`` (the last changes make room when full)."""
        out = dict(changes)
        if self.max_changes is not None and len(out) >= self.max_changes:
            out = dict(list(out.items())[:max(0, self.max_changes - 1)])
        out[name] = value
        return out

    def move(self, name: str, turn: int = 0) -> Optional[tuple[str, Any]]:
        """(direction, value) of one open step of ``name``; ``turn`` rotates through its directions."""
        steps = (self.moves or {}).get(name) or {}
        if not steps:
            return None
        direction = sorted(steps)[turn % len(steps)]
        return direction, steps[direction]


def modifiable(changes: Any, schema: dict[str, dict]) -> bool:
    """Whether a Modify may carry these changes on: known parameters with plain scalar values (the contract's
    terms; a tuple such as Adam's betas cannot travel in a Modify, so such a proposal is left as it is)."""
    return isinstance(changes, dict) and all(
        isinstance(k, str) and k in schema and (v is None or type(v) in (str, int, float, bool))
        for k, v in changes.items())


class Mechanism:
    """Base class of every search mechanism; override only the hooks you need."""

    #: Shown in the UI and events; defaults to the class name.
    name: str = ""

    def on_attach(self, state: SearchState) -> None:
        return None

    def shape_prompt(self, state: SearchState, prompt: str) -> Optional[str]:
        return None

    def review_proposal(self, state: SearchState, proposal: dict) -> "Veto | Modify | None":
        return None

    def decide(self, state: SearchState, result: dict, best: Optional[float]) -> Optional[str]:
        return None

    def observe(self, state: SearchState, result: dict) -> None:
        return None

    @classmethod
    def overridden_hooks(cls) -> list[str]:
        return [h for h in HOOKS if getattr(cls, h) is not getattr(Mechanism, h)]

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

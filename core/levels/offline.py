"""Offline mode's Level 1: a seeded random-perturbation proposer (no LLM).

It perturbs one to three active parameters within their schema: multiplicatively for
log-scale rates, by a factor of two for power-of-two sizes, by choice for patterns. A
direction Level 1.5 froze is never proposed: a number drawn that way is mirrored to the
open side, a frozen choice is not drawn.
Seeded per (run seed, iteration, attempt) so a resumed run proposes the same thing.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping, Sequence

from core.record.change import CodeEdit, Params
from core.levels.code_library import LIBRARY
from core.services.schema import narrowed
from core.services.script import ParamSpec


def _clip(x: float, spec: ParamSpec) -> float:
    if spec.minimum is not None:
        x = max(spec.minimum, x)
    if spec.maximum is not None:
        x = min(spec.maximum, x)
    return x


def perturb(spec: ParamSpec, value: Any, rng: random.Random) -> Any:
    """A nearby value of the same kind, or None when this parameter cannot be perturbed."""
    frozen = spec.frozen_directions
    spec = narrowed(spec)  # the frozen side's bound is the current value; frozen choices are gone

    def away(sign: float) -> float:  # a step drawn into a frozen direction is mirrored to the open side
        return -sign if ("up" in frozen and sign > 0) or ("down" in frozen and sign < 0) else sign

    if spec.choices:
        others = [c for c in spec.choices if c != value]
        return rng.choice(others) if others else None
    if spec.kind == "bool":
        return not value
    if spec.kind == "float":
        if spec.log_scale and value > 0:
            new = _clip(value * math.exp(away(rng.gauss(0.0, 0.5))), spec)
        else:
            span = (spec.maximum - spec.minimum) if spec.minimum is not None and spec.maximum is not None else abs(value) or 1.0
            new = _clip(value + away(rng.gauss(0.0, 0.15 * span)), spec)
        new = float(f"{new:.4g}")
        return new if new != value else None
    if spec.kind == "int":
        if spec.pow2:
            new = value * 2 if away(1 if rng.random() < 0.5 else -1) > 0 else value // 2
        else:
            step = max(1, round(abs(value) * 0.25))
            new = value + int(away(rng.choice((-step, step))))
        new = int(_clip(new, spec))
        return new if new != value else None
    if spec.kind == "tuple" and value and all(isinstance(v, float) for v in value):
        # e.g. Adam betas: nudge each element toward or away from 1.
        return tuple(float(f"{min(0.9999, max(0.0, 1 - (1 - v) * math.exp(rng.gauss(0, 0.3)))):.4g}") for v in value)
    return None


class OfflineProposer:
    """Perturbs 1-3 active parameters; labelled ``offline`` in every event.

    With ``scope = "code"`` every other iteration (the odd ones) draws instead a known code edit not
    tried yet from :mod:`core.levels.code_library`, its source in the hypothesis."""

    source = "offline"

    def __init__(self, seed: int, scope: str = "constants") -> None:
        self.seed = seed
        self.scope = scope

    def propose(self, schema: Mapping[str, ParamSpec], values: Mapping[str, Any], frozen: set[str],
                iteration: int, attempt: int, history: Sequence[Any] = ()) -> tuple[Params | CodeEdit, str]:
        rng = random.Random(f"{self.seed}:{iteration}:{attempt}")
        if self.scope == "code" and iteration % 2 == 1:
            tried = [r.changes.edits for r in history if isinstance(getattr(r, "changes", None), CodeEdit)]
            untried = [k for k in LIBRARY if k.edit.edits not in tried]
            if untried:
                pick = rng.choice(untried)
                return pick.edit, f"Offline code edit from the library: {pick.name} ({pick.source})."
        active = [n for n, s in schema.items() if not s.locked and n not in frozen]
        rng.shuffle(active)
        want = rng.randint(1, 3)
        changes: Params = {}
        for name in active:
            if len(changes) == want:
                break
            new = perturb(schema[name], values[name], rng)
            if new is not None and new != values[name]:
                changes[name] = new
        desc = ", ".join(f"{k} {values[k]!r}→{v!r}" for k, v in changes.items())
        return changes, f"Offline random perturbation (seed {self.seed}): {desc or 'nothing perturbable'}."

"""Tabu search: veto proposals that land on a recently trained region.

The tabu list holds the last ``tenure`` trained configurations (iterations that were
kept, discarded or crashed). A proposal repeats an entry when the entry changed at least
one of the parameters the proposal changes (so it really explored there) and, in every
parameter either of them changed, the configuration the proposal would train is within
tolerance of the entry's, each parameter measured in its own scale:

- log-scale numbers: ``|ln(a/b)| <= ln(1.15)``
- power-of-two ints: equal
- other ints: ``|a - b| <= max(1, 5% of |b|)``
- other floats: ``|a - b| <= 5%`` of the range (maximum - minimum), or of ``|b|`` if unbounded
- strings, bools, parameters with choices: equal
- tuples: element by element, each element by its own type

Comparing the entry's other changes too means that a discarded two-parameter change does
not forbid trying one of its halves alone. A repeat is vetoed with a reason that names
the iteration it repeats, which the proposer reads before it is asked again, and, when
there is one, a move the proposer can make (``SearchState.moves``: not frozen, with room)
that repeats no entry.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from mechanisms.base import Mechanism, SearchState, Veto

TRAINED = ("keep", "discard", "crash")
LOG_TOLERANCE = math.log(1.15)
RELATIVE_TOLERANCE = 0.05
_OUTCOME = {"keep": "kept", "discard": "discarded", "crash": "crashed"}


def trained_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of iterations that actually trained a configuration, oldest first."""
    return [r for r in records if isinstance(r, Mapping) and r.get("decision") in TRAINED]


def within_tolerance(a: Any, b: Any, spec: Optional[Mapping[str, Any]] = None) -> bool:
    """Whether value ``a`` is close to value ``b`` in the scale of the parameter ``spec`` describes.

    ``spec`` is the parameter's schema dict; without one the kind is inferred from ``b``.
    """
    spec = spec or {}
    if _same(a, b):
        return True
    kind = spec.get("kind") or _kind_of(b)
    if kind in ("str", "bool") or spec.get("choices"):
        return False
    if kind == "tuple" or isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return _sequences_close(a, b)
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return False
    if kind == "int":
        return (not spec.get("pow2")) and abs(x - y) <= max(1.0, RELATIVE_TOLERANCE * abs(y))
    if spec.get("log_scale") and x > 0 and y > 0:
        return abs(math.log(x / y)) <= LOG_TOLERANCE
    lo, hi = _number(spec.get("minimum")), _number(spec.get("maximum"))
    span = hi - lo if lo is not None and hi is not None and hi > lo else abs(y)
    return abs(x - y) <= RELATIVE_TOLERANCE * span


def repeats(changes: Mapping[str, Any], config: Mapping[str, Any], entry: Mapping[str, Any],
            schema: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a candidate lands within tolerance of the trained ``entry``.

    ``changes`` is what the candidate changes; ``config`` the full configuration it would
    train (the best values updated with ``changes``).
    """
    entry_changes = entry.get("changes") or {}
    if not changes or not set(changes) & set(entry_changes):
        return False
    entry_values = {**entry_changes, **(entry.get("values") or {})}
    for name in set(changes) | set(entry_changes):
        if name in changes:
            mine = changes[name]
        elif name in config:
            mine = config[name]
        else:
            continue  # the candidate's value is unknown: it cannot be told apart
        if name not in entry_values or not within_tolerance(mine, entry_values[name], schema.get(name)):
            return False
    return True


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_changes(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "(no change)"


def describe_entry(entry: Mapping[str, Any]) -> str:
    """``#4 MATRIX_LR=0.0498 (discarded, val_bpb 1.2345)``."""
    decision = entry.get("decision")
    val_bpb = entry.get("val_bpb")
    score = f"val_bpb {val_bpb:.4f}" if isinstance(val_bpb, (int, float)) else "no score"
    return (f"#{entry.get('iteration')} {format_changes(entry.get('changes') or {})} "
            f"({_OUTCOME.get(decision, decision)}, {score})")


class Tabu(Mechanism):
    """Vetoes a proposal that repeats one of the last ``tenure`` trained configurations."""

    name = "tabu"

    def __init__(self, tenure: int = 8) -> None:
        if tenure < 1:
            raise ValueError(f"tenure must be at least 1, got {tenure}")
        self.tenure = tenure
        self.entries: list[Mapping[str, Any]] = []  # the tabu list, oldest first

    def on_attach(self, state: SearchState) -> None:
        self._sync(state)

    def observe(self, state: SearchState, result: dict) -> None:
        self._sync(state)

    def shape_prompt(self, state: SearchState, prompt: str) -> Optional[str]:
        self._sync(state)
        if not self.entries:
            return None
        regions = "; ".join(describe_entry(e) for e in reversed(self.entries))
        return ("Tabu: do not propose values within ~5% (15% for log-scale rates; exact for "
                f"sizes and choices) of these recently trained regions: {regions}")

    def review_proposal(self, state: SearchState, proposal: dict) -> Optional[Veto]:
        self._sync(state)
        changes = proposal.get("changes") or {}
        if not isinstance(changes, Mapping):
            return None
        config = {**state.best_values, **changes}
        for entry in reversed(self.entries):  # name the most recent repeat
            if repeats(changes, config, entry, state.schema):
                body = describe_entry(entry).split(" ", 1)[1]
                alternative = self.alternative(state)
                hint = f", e.g. {alternative}" if alternative else ""
                return Veto(f"{format_changes(changes)} repeats iteration #{entry.get('iteration')} "
                            f"({body}); try a different region{hint}")
        return None

    def alternative(self, state: SearchState) -> str:
        """A one-step move the proposer can make that repeats no tabu entry ("" when none is known)."""
        for name in state.movable_params():
            for direction, value in sorted(((state.moves or {}).get(name) or {}).items()):
                change = {name: value}
                config = {**state.best_values, **change}
                if not any(repeats(change, config, e, state.schema) for e in self.entries):
                    way = "" if direction.startswith("→") else f" {direction}"  # a choice's direction is its value
                    return f"{name}{way} to {format_value(value)}"
        return ""

    def _sync(self, state: SearchState) -> None:
        # The records are the source of truth, so a mechanism attached mid-run sees the history.
        self.entries = trained_records(state.records)[-self.tenure:]


# --- value helpers -------------------------------------------------------------------------


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (list, tuple)):
        return "tuple"
    return "str"


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False  # True == 1 in Python, not here
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic values compare unequal
        return False


def _sequences_close(a: Any, b: Any) -> bool:
    if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b):
        return False
    return all(within_tolerance(x, y) for x, y in zip(a, b))

"""Orthogonal exploration: push the search onto dimensions it has not touched lately.

The active parameters (not locked, not frozen) form a cyclic schedule ordered by when a
trained iteration (kept, discarded or crashed) last changed them: never-changed first,
in schema order, then least recently changed. Varying the head of that schedule, a
couple of dimensions at a time, sweeps every dimension in turn, the way the rows of an
orthogonal array cover every factor, instead of circling one favourite parameter.

Only dimensions the proposer can move count (``SearchState.moves``: not frozen, a
direction open, room within the bounds). Before each proposal the next ``dims``
dimensions are named in the prompt. A proposal whose changed parameters were all changed
within the last ``window`` trained iterations is modified, not vetoed (and only when some
movable parameter is not that recent): one plain step of the least recently explored
dimension, in one of its open directions, joins the proposal's changes, so the sweep
happens whatever the proposer reads.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from mechanisms.base import Mechanism, Modify, SearchState, modifiable

TRAINED = ("keep", "discard", "crash")


class Orthogonal(Mechanism):
    """Names the least recently explored dimensions and vetoes stale-only proposals."""

    name = "orthogonal"

    def __init__(self, window: int = 4, dims: int = 2) -> None:
        if window < 1 or dims < 1:
            raise ValueError(f"window and dims must be at least 1, got {window} and {dims}")
        self.window = window
        self.dims = dims
        self.last_changed: dict[str, int] = {}  # parameter -> last trained iteration changing it
        self.recent: set[str] = set()  # parameters changed in the last `window` trained iterations

    # --- hooks ---------------------------------------------------------------------------

    def on_attach(self, state: SearchState) -> None:
        self._sync(state)

    def observe(self, state: SearchState, result: dict) -> None:
        self._sync(state)

    def shape_prompt(self, state: SearchState, prompt: str) -> Optional[str]:
        nxt = self.next_dimensions(state)
        if not nxt:
            return None
        recent = [n for n in state.movable_params() if n in self.recent]
        text = (f"Vary {' and '.join(nxt)} together this iteration, the least recently explored "
                f"dimensions ({'; '.join(self._age(n) for n in nxt)}).")
        if recent:
            text += f" Changed in the last {self.window} trained iterations: {', '.join(recent)}."
        return text

    def review_proposal(self, state: SearchState, proposal: dict) -> Optional[Modify]:
        self._sync(state)
        changes = proposal.get("changes") or {}
        if not isinstance(changes, Mapping) or not changes:
            return None
        if any(name not in self.recent for name in changes):
            return None
        if not modifiable(changes, state.schema):
            return None
        stale = [n for n in self.schedule(state) if n not in self.recent and n not in changes]
        for name in stale:
            step = state.move(name, state.iteration)
            if step is not None:
                direction, value = step
                return Modify(state.with_change(changes, name, value),
                              note=f"orthogonal: {', '.join(changes)} {'was' if len(changes) == 1 else 'were all'} "
                                   f"changed in the last {self.window} trained iterations; adding {name} "
                                   f"({direction}), {self._age(name)}")
        return None

    # --- the schedule --------------------------------------------------------------------

    def schedule(self, state: SearchState) -> list[str]:
        """Movable parameters, least recently changed first (never changed first of all)."""
        self._sync(state)
        active = state.movable_params()
        order = {name: i for i, name in enumerate(active)}
        return sorted(active, key=lambda n: (self.last_changed.get(n, -1), order[n]))

    def next_dimensions(self, state: SearchState) -> list[str]:
        return self.schedule(state)[:self.dims]

    def _age(self, name: str) -> str:
        last = self.last_changed.get(name)
        return f"{name}: never changed" if last is None else f"{name}: last changed in #{last}"

    def _sync(self, state: SearchState) -> None:
        # Rebuilt from the records each time: cheap, and right after a mid-run attach.
        trained = [r for r in state.records if isinstance(r, Mapping) and r.get("decision") in TRAINED]
        self.last_changed = {}
        for record in trained:
            for name in record.get("changes") or {}:
                self.last_changed[name] = _iteration(record)
        self.recent = {name for r in trained[-self.window:] for name in (r.get("changes") or {})}


def _iteration(record: Mapping[str, Any]) -> int:
    value = record.get("iteration")
    return value if isinstance(value, int) else 0

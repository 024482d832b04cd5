"""Multi-armed bandit: choose which parameter to explore next by UCB1.

Arms are the active parameters (not locked, not frozen) that can move. Every trained iteration
(kept, discarded or crashed) pulls each arm it changed, with reward
``max(0, best_before - val_bpb) / baseline_val_bpb`` (a crash, or a missing score,
earns 0). Arms never pulled are chosen first, in schema order; after that the arm with
the highest score

    mean_reward / largest_reward + c * sqrt(ln(t) / pulls)

where ``t`` is the number of trained iterations and ``c = sqrt(2)`` gives classic UCB1.
Rewards are divided by the largest single reward seen so far because UCB1 assumes
rewards in [0, 1] and relative improvements are of order 1e-3: without it the
exploration term would swamp every difference and the bandit would only ever cycle.

Arms are only parameters the proposer can move (``SearchState.moves``: not frozen, a
direction open, room within the bounds). Before each proposal the chosen arm is named in
the prompt, with the scores. A proposal that does not change the chosen arm is modified,
not vetoed: one plain step of the arm in one of its open directions (rotating with the
iteration) joins the proposal's own changes, so the arm is explored even by a proposer
that cannot read the prompt (offline, classical), and nothing is re-drawn at random.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from mechanisms.base import Mechanism, Modify, SearchState, modifiable

TRAINED = ("keep", "discard", "crash")


@dataclass
class Arm:
    """One parameter's pull statistics."""

    pulls: int = 0
    reward: float = 0.0  # sum of rewards (improvement / baseline)

    @property
    def mean(self) -> float:
        return self.reward / self.pulls if self.pulls else 0.0


class Bandit(Mechanism):
    """Steers each iteration toward the parameter with the best UCB1 score."""

    name = "bandit"

    def __init__(self, c: float = math.sqrt(2)) -> None:
        if c < 0:
            raise ValueError(f"c must be non-negative, got {c}")
        self.c = c
        self.arms: dict[str, Arm] = {}  # every parameter ever changed, active or not
        self.plays = 0  # trained iterations
        self.largest_reward = 0.0
        self._choice: Optional[tuple[int, str]] = None  # (iteration, arm) chosen for it

    # --- hooks ---------------------------------------------------------------------------

    def on_attach(self, state: SearchState) -> None:
        self._sync(state)

    def observe(self, state: SearchState, result: dict) -> None:
        self._sync(state)

    def shape_prompt(self, state: SearchState, prompt: str) -> Optional[str]:
        arm = self.choose(state)
        if arm is None:
            return None
        return f"Explore {arm} this iteration: {self._why(state, arm)}."

    def review_proposal(self, state: SearchState, proposal: dict) -> Optional[Modify]:
        arm = self.choose(state)
        changes = proposal.get("changes") or {}
        if arm is None or not isinstance(changes, Mapping) or arm in changes:
            return None
        step = state.move(arm, state.iteration)
        if step is None or not modifiable(changes, state.schema):
            return None
        direction, value = step
        return Modify(state.with_change(changes, arm, value),
                      note=f"bandit: this iteration explores {arm} ({direction}): {self._why(state, arm)}")

    # --- the bandit ----------------------------------------------------------------------

    def choose(self, state: SearchState) -> Optional[str]:
        """The arm to explore at ``state.iteration`` (fixed for the iteration once chosen)."""
        self._sync(state)
        active = state.movable_params()
        if self._choice and self._choice[0] == state.iteration and self._choice[1] in active:
            return self._choice[1]
        scores = self.scores(state)
        if not scores:
            return None
        order = {name: i for i, name in enumerate(active)}
        # Highest score first; ties go to the arm pulled less, then to schema order.
        arm = min(scores, key=lambda n: (-scores[n], self._arm(n).pulls, order[n]))
        self._choice = (state.iteration, arm)
        return arm

    def scores(self, state: SearchState) -> dict[str, float]:
        """UCB score per parameter the proposer can move; an untried one scores infinity."""
        self._sync(state)
        t = max(self.plays, 1)
        out: dict[str, float] = {}
        for name in state.movable_params():
            arm = self._arm(name)
            if arm.pulls == 0:
                out[name] = math.inf
                continue
            exploit = arm.mean / self.largest_reward if self.largest_reward > 0 else 0.0
            out[name] = exploit + self.c * math.sqrt(math.log(t) / arm.pulls)
        return out

    def _arm(self, name: str) -> Arm:
        return self.arms.get(name) or Arm()

    def _sync(self, state: SearchState) -> None:
        # Rebuilt from the records each time: cheap, and right after a mid-run attach.
        trained = [r for r in state.records if isinstance(r, Mapping) and r.get("decision") in TRAINED]
        scale = _baseline(state)
        self.arms = {}
        self.largest_reward = 0.0
        for record in trained:
            reward = _reward(record, scale)
            self.largest_reward = max(self.largest_reward, reward)
            for name in record.get("changes") or {}:
                arm = self.arms.setdefault(name, Arm())
                arm.pulls += 1
                arm.reward += reward
        self.plays = len(trained)

    def _why(self, state: SearchState, arm: str) -> str:
        scores = self.scores(state)
        untried = [n for n, s in scores.items() if s == math.inf]
        if arm in untried:
            return f"it has not been tried yet ({len(untried)} of {len(scores)} active parameters untried)"
        stats = self._arm(arm)
        others = sorted((n for n in scores if n != arm), key=lambda n: -scores[n])[:3]
        rest = ", ".join(f"{n} {scores[n]:.2f}" for n in others)
        return (f"highest UCB1 score {scores[arm]:.2f} (mean gain {stats.mean:.2e} of baseline "
                f"over {stats.pulls} tries)" + (f"; next: {rest}" if rest else ""))


def _baseline(state: SearchState) -> float:
    """The normaliser for rewards: the baseline's val_bpb, or 1 when it is unknown."""
    candidates: Sequence[Any] = [state.baseline_val_bpb] + [
        r.get("val_bpb") for r in state.records if isinstance(r, Mapping) and r.get("decision") == "baseline"]
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return 1.0


def _reward(record: Mapping[str, Any], scale: float) -> float:
    val, before = record.get("val_bpb"), record.get("best_before")
    if record.get("decision") == "crash" or not _is_number(val) or not _is_number(before):
        return 0.0
    return max(0.0, before - val) / scale


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

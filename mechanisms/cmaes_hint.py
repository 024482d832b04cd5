"""CMA-ES hints: before each LLM proposal, CMA-ES's next suggestion joins the prompt as one candidate.

The hybrid of the autoresearch-automl benchmark (a CMA-ES + LLM hybrid beat both alone):
the LLM still decides, but it sees where an evolution strategy fitted to the same history
would sample next. Groups ``A+cmaes`` and ``C+cmaes`` run it from the start, so
C-with-hybrid can be compared with plain C in one study.

How the suggestion is made, from the records alone (so a resumed run, a replay and a dry
run agree): the searchable parameters are the active numeric ones with bounds, each mapped
to [0, 1] (log scale for log-scale rates and power-of-two sizes). A CMA-ES (the ``cmaes``
package, Nomura & Shibata 2024; this built-in may import it and numpy) starts at the
baseline with σ = 0.2 and is told every trained iteration in order, one generation per
``popsize`` of them: its val_bpb, or for a crash the worst score so far plus 0.1. Its
sampler is seeded by the iteration, so the same history always gives the same hint. A
coordinate that would move a parameter in a direction the proposer cannot take
(``SearchState.moves``: frozen by Level 1.5, or past a bound) is left out of the hint.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from mechanisms.base import Mechanism, SearchState

TRAINED = ("keep", "discard", "crash")
CRASH_PENALTY = 0.1
SIGMA0 = 0.2


def searchable(schema: Mapping[str, Mapping[str, Any]], frozen: Sequence[str]) -> list[str]:
    out = []
    for name, spec in schema.items():
        if spec.get("locked") or name in frozen or spec.get("choices"):
            continue
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if spec.get("kind") in ("int", "float") and lo is not None and hi is not None and hi > lo:
            if (spec.get("log_scale") or spec.get("pow2")) and lo <= 0:
                continue
            out.append(name)
    return out


def _log(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("log_scale") or spec.get("pow2"))


def to_unit(spec: Mapping[str, Any], value: Any) -> float:
    lo, hi = float(spec["minimum"]), float(spec["maximum"])
    v = min(hi, max(lo, float(value)))
    if _log(spec):
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def from_unit(spec: Mapping[str, Any], u: float) -> Any:
    lo, hi = float(spec["minimum"]), float(spec["maximum"])
    u = min(1.0, max(0.0, u))
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if _log(spec) else lo + u * (hi - lo)
    if spec.get("pow2"):
        return 2 ** int(round(math.log2(x)))
    if spec.get("kind") == "int":
        return int(round(x))
    return float(f"{x:.4g}")


def _open(state: SearchState, name: str, old: Any, new: Any) -> bool:
    """Whether moving ``name`` from ``old`` to ``new`` goes in a direction the proposer may take."""
    if state.moves is None:
        return True
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return name in state.moves
    return ("up" if new > old else "down") in state.moves.get(name, {})


class CmaesHint(Mechanism):
    """Adds CMA-ES's next point, fitted to the trace so far, to each proposal prompt."""

    name = "cmaes_hint"

    def __init__(self) -> None:
        # Imported here, in the engine, not inside a hook: numpy's import is no hook's business.
        import numpy
        from cmaes import CMA

        self._np, self._cma = numpy, CMA
        self.last: dict[str, Any] = {}

    def suggest(self, state: SearchState) -> dict[str, Any]:
        """CMA-ES's next point as script values (only those that differ from the best)."""
        names = searchable(state.schema, state.frozen)
        if not names or not state.records:
            return {}
        specs = [state.schema[n] for n in names]
        base = state.records[0].get("values") or {n: state.schema[n].get("value") for n in names}
        mean = self._np.array([to_unit(s, base.get(n, s.get("value"))) for n, s in zip(names, specs)])
        bounds = self._np.array([[0.0, 1.0]] * len(names))
        optimizer = self._cma(mean=mean, sigma=SIGMA0, bounds=bounds, seed=len(state.records))
        worst: Optional[float] = None
        generation: list[tuple[Any, float]] = []
        for r in state.records:
            score = r.get("val_bpb")
            finite = isinstance(score, (int, float)) and math.isfinite(score)
            if r.get("decision") in TRAINED and r.get("iteration", 0) > 0:
                value = score if finite and r.get("decision") != "crash" else (
                    (worst if worst is not None else 1.0) + CRASH_PENALTY)
                values = r.get("values") or {}
                x = self._np.array([to_unit(s, values.get(n, base.get(n, s.get("value"))))
                                    for n, s in zip(names, specs)])
                generation.append((x, float(value)))
                if len(generation) == optimizer.population_size:
                    optimizer.tell(generation)
                    generation = []
            if finite:
                worst = score if worst is None else max(worst, score)
        point = optimizer.ask()
        best = state.best_values
        suggestion = {n: from_unit(s, float(u)) for n, s, u in zip(names, specs, point)}
        return {n: v for n, v in suggestion.items() if best.get(n) != v and _open(state, n, best.get(n), v)}

    def shape_prompt(self, state: SearchState, prompt: str) -> Optional[str]:
        self.last = self.suggest(state)
        if not self.last:
            return None
        trained = sum(1 for r in state.records if r.get("decision") in TRAINED)
        point = ", ".join(f"{k}={v!r}" for k, v in self.last.items())
        return (f"One candidate to consider: CMA-ES, fitted to the {trained} trained iteration(s) so far, "
                f"would try next {point}. Weigh it against your own idea; propose it (or part of it) only "
                "if you judge it promising.")

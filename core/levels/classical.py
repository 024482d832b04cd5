"""Classical Level 1: Optuna's samplers (TPE, CMA-ES, quasi-random Sobol) instead of the LLM.

A classical proposer answers the same question as the LLM and the offline proposer —
"what should the next run change?" — and its answer goes through the same validation,
mechanism review, acceptance rule, noise gate, events and report. It sees exactly what
they see: the schema's editable parameters with their bounds and scales, minus the locked
and frozen ones, which keep the best script's values. Each proposal is a full point of the
searched space (every active parameter it can sample), applied to the best script so far.

What is searched, per parameter (anything else is left at the best script's value):

- choices (and bools): categorical;
- bounded floats: uniform, or log-uniform for log-scale ones;
- power-of-two ints: the exponent, an integer between log2(min) and log2(max);
- other bounded ints: integers, log-spaced for log-scale ones;
- tuples of floats in (0, 1) such as Adam's betas: each 1 − β, log-uniform from a tenth to
  ten times the baseline's (at most 0.5).

Optuna runs in-process with an in-memory study. Our event log stays the source of truth:
the study is told each finished iteration from the folded records (its val_bpb for kept
and discarded ones; for a crash the worst score so far plus ``CRASH_PENALTY``, so that the
samplers learn where runs crash, as the usual "return a large loss on failure" does; a
failed trial for an iteration that trained nothing), and a resumed session rebuilds
it by replaying, in order, one ask per recorded iteration of this sampler and telling it
the recorded outcome. The samplers are seeded by the run's seed, so a fresh run, a resumed
one and a replay propose the same points. (A proposal vetoed by a mechanism is asked again
live; the replay asks once per iteration, so a session whose mechanisms veto classical
proposals resumes with the same history but a different random stream.)

The baseline is the study's first trial (TPE learns from it) and CMA-ES starts at it.
A coordinate sampled in a direction Level 1.5 froze is clipped to the current value (the
distributions stay fixed, as the samplers need): that parameter is left unchanged.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from core.record.change import Params
from core.services.schema import direction_of
from core.services.script import ParamSpec

SAMPLERS = ("tpe", "cmaes", "sobol", "random")
TPE_STARTUP_TRIALS = 8  # random trials before TPE models the history (Optuna's default is 10)
CRASH_PENALTY = 0.1  # a crash is told as the worst score so far plus this, so the samplers learn to avoid it
DIGITS = 6  # significant digits of sampled floats written into the script


class ClassicalUnavailable(RuntimeError):
    """Optuna (or cmaes, for CMA-ES) is not installed."""


@dataclass(frozen=True)
class Dimension:
    """One searched coordinate: an Optuna distribution and how it maps to a script value."""

    param: str  # the script constant
    key: str  # Optuna's parameter name
    distribution: Any
    how: str  # "value" | "pow2" | "one_minus" (a tuple element, 1 - beta)
    index: int = -1  # tuple element


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ClassicalUnavailable("classical groups need Optuna: pip install 'bilevel-autoresearch[classical]'") from exc
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def dimensions(schema: Mapping[str, ParamSpec], frozen: set[str] | frozenset[str],
               anchor: Mapping[str, Any] | None = None) -> list[Dimension]:
    """The searched coordinates of the active parameters, in schema order.

    ``anchor``: the baseline's values, which place the tuples' ranges (the schema's values
    are today's best, and a range that moved with them would change the space mid-search).
    """
    dist = _optuna().distributions
    dims: list[Dimension] = []
    for name, spec in schema.items():
        if spec.locked or name in frozen:
            continue
        lo, hi = spec.minimum, spec.maximum
        if spec.choices:
            if all(c is None or isinstance(c, (bool, int, float, str)) for c in spec.choices) and len(spec.choices) > 1:
                dims.append(Dimension(name, name, dist.CategoricalDistribution(list(spec.choices)), "value"))
        elif spec.kind == "bool":
            dims.append(Dimension(name, name, dist.CategoricalDistribution([False, True]), "value"))
        elif spec.kind == "float" and lo is not None and hi is not None and hi > lo:
            log = spec.log_scale and lo > 0
            dims.append(Dimension(name, name, dist.FloatDistribution(float(lo), float(hi), log=log), "value"))
        elif spec.kind == "int" and spec.pow2 and lo is not None and hi is not None:
            a, b = math.ceil(math.log2(max(1, lo))), math.floor(math.log2(hi))
            if b > a:
                dims.append(Dimension(name, f"log2({name})", dist.IntDistribution(a, b), "pow2"))
        elif spec.kind == "int" and lo is not None and hi is not None and hi > lo:
            log = spec.log_scale and lo > 0
            dims.append(Dimension(name, name, dist.IntDistribution(int(math.ceil(lo)), int(hi), log=log), "value"))
        elif spec.kind == "tuple" and isinstance(spec.value, tuple) and spec.value and all(
                isinstance(v, float) and 0.0 < v < 1.0 for v in _anchored(spec, anchor)):
            for i, v in enumerate(_anchored(spec, anchor)):
                gap = 1.0 - v
                dims.append(Dimension(name, f"1-{name}[{i}]",
                                      dist.FloatDistribution(gap / 10, min(0.5, gap * 10), log=True), "one_minus", i))
    return dims


def _anchored(spec: ParamSpec, anchor: Mapping[str, Any] | None) -> tuple:
    value = anchor.get(spec.name, spec.value) if anchor else spec.value
    return tuple(value) if isinstance(value, (list, tuple)) and len(value) == len(spec.value) else spec.value


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def to_changes(dims: Sequence[Dimension], params: Mapping[str, Any], values: Mapping[str, Any]) -> Params:
    """Optuna's parameters as the script values that differ from ``values`` (the best script's)."""
    changes: Params = {}
    tuples: dict[str, list[Any]] = {}
    for d in dims:
        raw = params[d.key]
        if d.how == "pow2":
            changes[d.param] = 2 ** int(raw)
        elif d.how == "one_minus":
            tuples.setdefault(d.param, list(values[d.param]))[d.index] = _round(1.0 - raw)
        elif isinstance(raw, float):
            lo, hi = d.distribution.low, d.distribution.high
            changes[d.param] = min(hi, max(lo, _round(raw)))
        else:
            changes[d.param] = raw
    changes.update({name: tuple(v) for name, v in tuples.items()})
    return {k: v for k, v in changes.items() if values.get(k) != v}


def clip_frozen(changes: Params, schema: Mapping[str, ParamSpec]) -> Params:
    """The changes without those in a frozen direction: each is clipped to the current value, i.e. dropped."""
    return {k: v for k, v in changes.items()
            if k not in schema or direction_of(schema[k], schema[k].value, v) not in schema[k].frozen_directions}


def to_params(dims: Sequence[Dimension], values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Script values as Optuna's parameters, or None when one lies outside its distribution."""
    out: dict[str, Any] = {}
    for d in dims:
        v = values.get(d.param)
        try:
            if d.how == "pow2":
                raw: Any = int(round(math.log2(v)))
            elif d.how == "one_minus":
                raw = 1.0 - float(v[d.index])
            else:
                raw = v
            if hasattr(d.distribution, "choices"):
                if raw not in d.distribution.choices:
                    return None
            elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                return None
            else:  # the baseline may sit just outside bounds that were set in the config
                raw = min(d.distribution.high, max(d.distribution.low, raw))
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        out[d.key] = raw
    return out


def make_sampler(kind: str, seed: int, x0: Mapping[str, Any] | None = None) -> Any:
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True,
                                              warn_independent_sampling=False)
        if kind == "cmaes":
            try:
                import cmaes  # noqa: F401 - Optuna's CmaEsSampler is built on it
            except ImportError as exc:  # pragma: no cover
                raise ClassicalUnavailable("CMA-ES needs the cmaes package: pip install cmaes") from exc
            return optuna.samplers.CmaEsSampler(x0=dict(x0) if x0 else None, seed=seed,
                                                warn_independent_sampling=False)
        if kind == "sobol":
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                              warn_independent_sampling=False)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r} (samplers: {', '.join(SAMPLERS)})")


class ClassicalProposer:
    """Proposes with an Optuna sampler; labelled with the sampler's name in every event."""

    def __init__(self, kind: str, seed: int) -> None:
        if kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {kind!r} (samplers: {', '.join(SAMPLERS)})")
        self.kind = self.source = kind
        self.seed = seed
        self.study: Any = None
        self.replayed = 0  # asks replayed from the log when the study was rebuilt
        self.diverged: list[int] = []  # iterations whose replayed point differs from the recorded one
        self._told: set[int] = set()  # iterations the study has been told
        self._open: dict[int, tuple[Any, list[Dimension]]] = {}  # iteration -> (trial, its dimensions)
        self._anchor: dict[str, Any] = {}  # the baseline's values

    def propose(self, schema: Mapping[str, ParamSpec], values: Mapping[str, Any], frozen: set[str], iteration: int,
                attempt: int, history: Sequence[Any] = ()) -> tuple[Params, str]:
        """The next point, as changes to the best script; ``history`` is the folded records, oldest first."""
        self._sync(schema, frozen, history)
        if iteration in self._open:  # a re-ask within the iteration: the earlier point failed validation or review
            self._finish(iteration, None)
        dims = dimensions(schema, frozen, self._anchor)
        if not dims:
            return {}, f"{self._label()}: no active parameter can be sampled"
        trial = self._ask(dims)
        self._open[iteration] = (trial, dims)
        changes = clip_frozen(to_changes(dims, trial.params, values), schema)
        moved = ", ".join(f"{k} {values[k]!r}→{v!r}" for k, v in changes.items() if values.get(k) != v)
        return changes, f"{self._label()} trial {trial.number}: {moved or 'the best point again'}."

    # --- the study, rebuilt from the records ------------------------------------------------

    def _label(self) -> str:
        return {"tpe": "TPE", "cmaes": "CMA-ES", "sobol": "Sobol quasi-random",
                "random": "uniform random"}[self.kind] + f" (seed {self.seed})"

    def _ask(self, dims: Sequence[Dimension]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.study.ask({d.key: d.distribution for d in dims})

    def _sync(self, schema: Mapping[str, ParamSpec], frozen: set[str], history: Sequence[Any]) -> None:
        optuna = _optuna()
        if self.study is None:
            baseline = next((r for r in history if r.iteration == 0), None)
            base_values = baseline.values if baseline is not None and baseline.values else {
                n: s.value for n, s in schema.items()}
            self._anchor = dict(base_values)
            base_dims = dimensions(schema, set(), self._anchor)
            x0 = to_params(base_dims, base_values)
            self.study = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(), direction="minimize",
                sampler=make_sampler(self.kind, self.seed, x0), study_name=f"bilevel-{self.kind}-{self.seed}")
            if baseline is not None and baseline.val_bpb is not None and x0 is not None:
                self.study.add_trial(optuna.trial.create_trial(
                    params=x0, distributions={d.key: d.distribution for d in base_dims}, value=baseline.val_bpb,
                    user_attrs={"iteration": 0, "decision": "baseline"}))
            self._told.add(0)
        before: Mapping[str, Any] = {n: s.value for n, s in schema.items()}  # the best values, as of each record
        worst = None  # the worst score so far: what a crash is told
        for record in history:
            if record.iteration not in self._told and record.source == self.source:
                if record.iteration not in self._open:  # resumed: ask again what this iteration was asked
                    dims = dimensions(schema, frozen, self._anchor)
                    trial = self._ask(dims)
                    self.replayed += 1
                    if record.changes.params and to_changes(dims, trial.params, before) != dict(record.changes.params):
                        self.diverged.append(record.iteration)
                    self._open[record.iteration] = (trial, dims)
                self._finish(record.iteration, _told_value(record, worst), record.decision)
                self._told.add(record.iteration)
            if record.val_bpb is not None and math.isfinite(record.val_bpb):
                worst = record.val_bpb if worst is None else max(worst, record.val_bpb)
            if record.decision in ("baseline", "keep") and record.values:
                before = record.values

    def _finish(self, iteration: int, value: float | None, decision: str = "rejected") -> None:
        optuna = _optuna()
        trial, _ = self._open.pop(iteration)
        trial.set_user_attr("iteration", iteration)
        trial.set_user_attr("decision", decision)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def _told_value(record: Any, worst: float | None) -> float | None:
    """What the study is told: the score; for a crash the worst score so far plus CRASH_PENALTY; else a failure."""
    if record.decision in ("keep", "discard") and record.val_bpb is not None and math.isfinite(record.val_bpb):
        return record.val_bpb
    if record.decision == "crash" and worst is not None:
        return worst + CRASH_PENALTY
    return None


# The registry's factories (core/record/registry.py): one per sampler, called with the run's seed.
def tpe(seed: int) -> ClassicalProposer:
    return ClassicalProposer("tpe", seed)


def cmaes(seed: int) -> ClassicalProposer:
    return ClassicalProposer("cmaes", seed)


def sobol(seed: int) -> ClassicalProposer:
    return ClassicalProposer("sobol", seed)


def random_search(seed: int) -> ClassicalProposer:
    return ClassicalProposer("random", seed)

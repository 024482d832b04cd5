"""Paired differences for the mechanism pre-screen: mean, bootstrap interval, sign-flip test.

The pre-screen's gate runs in the engine on a base install (no scipy, the report extra), so
these are the standard library's: a percentile bootstrap of the mean difference (seeded, like
core/analysis/stats.py's) and the exact sign-flip permutation test of paired differences (all
2^n sign patterns up to n = 16, a seeded Monte Carlo beyond). tests/test_prescreen.py checks
both against scipy's bootstrap and permutation_test.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Sequence

RESAMPLES = 9999
CONFIDENCE = 0.95
EXACT_UP_TO = 16  # 2^16 sign patterns: exact; more, Monte Carlo


@dataclass(frozen=True)
class PairedEffect:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def bootstrap_ci(diffs: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``diffs`` (the pairs resampled whole)."""
    n = len(diffs)
    if all(d == diffs[0] for d in diffs):
        return float(diffs[0]), float(diffs[0])
    rng = random.Random(seed)
    means = sorted(_mean([diffs[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - confidence) / 2
    # the same percentile rule as numpy's default (linear interpolation between order statistics)
    return _percentile(means, tail), _percentile(means, 1 - tail)


def _percentile(ordered: Sequence[float], q: float) -> float:
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def sign_flip_p(diffs: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p that the paired differences centre on zero: each pair's sign flipped at random."""
    n = len(diffs)
    observed = abs(_mean(diffs))
    tol = 1e-12 * max(1.0, observed)  # ties with the observed statistic count as extreme
    if n <= EXACT_UP_TO:
        patterns = itertools.product((1, -1), repeat=n)
        total = 2 ** n
        extreme = sum(abs(_mean([s * d for s, d in zip(signs, diffs)])) >= observed - tol for signs in patterns)
        return extreme / total
    rng = random.Random(seed)
    extreme = sum(abs(_mean([d if rng.random() < 0.5 else -d for d in diffs])) >= observed - tol
                  for _ in range(resamples))
    return (extreme + 1) / (resamples + 1)


def paired_effect(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> PairedEffect:
    """mean(a − b) over the pairs with its interval and p; ValueError below two pairs."""
    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    if len(diffs) < 2:
        raise ValueError("a paired effect needs at least two pairs")
    low, high = bootstrap_ci(diffs, seed=seed)
    return PairedEffect(len(diffs), _mean(diffs), low, high, sign_flip_p(diffs, seed=seed))

"""Statistics for honest comparisons: summaries, bootstrap intervals, permutation tests.

Three repeats per group is a small sample and run-to-run noise is of the order of the
effects studied, so every number the report prints comes with its uncertainty.

The resampling is scipy.stats' own (``bootstrap``, ``permutation_test``; the ``report``
extra), never a hand-written copy of it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_RESAMPLES = 9999
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (ddof = 1); None below two values
    mad: float | None  # median absolute deviation from the median (unscaled)
    min: float | None
    max: float | None


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float = CONFIDENCE
    method: str = "percentile bootstrap"


class StatsUnavailable(RuntimeError):
    """scipy is not installed; the message says how to install it."""


def scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as exc:
        raise StatsUnavailable("the statistics need scipy: pip install 'bilevel-autoresearch[report]'") from exc
    return stats


def mad(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    return float(np.median(np.abs(x - np.median(x))))


def summarize(values: Sequence[float]) -> Summary:
    x = [float(v) for v in values]
    if not x:
        return Summary(0, None, None, None, None, None)
    std = float(np.std(x, ddof=1)) if len(x) > 1 else None
    return Summary(len(x), float(np.mean(x)), std, mad(x), min(x), max(x))


def _rng_kw(fn: Any, seed: int) -> dict[str, Any]:
    # scipy renamed random_state to rng (1.15); accept either spelling.
    params = inspect.signature(fn).parameters
    return {"rng": np.random.default_rng(seed)} if "rng" in params else {"random_state": np.random.default_rng(seed)}


def _mean_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE,
                      n_resamples: int = DEFAULT_RESAMPLES, random_state: int = 0) -> Interval | None:
    """Percentile-bootstrap interval of the mean; None below two values (no spread to resample)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    if np.all(x == x[0]):
        return Interval(float(x[0]), float(x[0]), confidence)
    st = scipy_stats()
    res = st.bootstrap((x,), _mean_axis, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", vectorized=True, **_rng_kw(st.bootstrap, random_state))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high), confidence)


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE,
                      n_resamples: int = DEFAULT_RESAMPLES, random_state: int = 0) -> Interval | None:
    """Interval of mean(a) − mean(b), each sample resampled on its own; None below two values in either."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    if np.all(x == x[0]) and np.all(y == y[0]):
        d = float(x[0] - y[0])
        return Interval(d, d, confidence)
    st = scipy_stats()
    res = st.bootstrap((x, y), _diff_of_means, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", vectorized=True, **_rng_kw(st.bootstrap, random_state))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high), confidence)


def permutation_pvalue(a: Sequence[float], b: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES,
                       random_state: int = 0) -> float | None:
    """Two-sided p-value that mean(a) and mean(b) differ, from relabelling the pooled values.

    None when either sample is empty or there is only one arrangement.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0 or x.size + y.size < 3:
        return None
    st = scipy_stats()
    res = st.permutation_test((x, y), _diff_of_means, permutation_type="independent", vectorized=True,
                              alternative="two-sided", n_resamples=n_resamples,
                              **_rng_kw(st.permutation_test, random_state))
    return float(res.pvalue)


@dataclass(frozen=True)
class NullDelta:
    """What a search whose changes do nothing would report, from selection among noisy runs alone."""

    mean: float
    low: float  # 2.5th percentile
    high: float  # 97.5th percentile
    sims: int


def null_search_delta(sigma: float, iterations: int, *, threshold: float = 0.0, confirm: bool = False,
                      sims: int = 4000, random_state: int = 0) -> NullDelta:
    """Δ = best − baseline of a search where every run is the baseline plus N(0, σ²) noise.

    The same keep rule as the engine: keep when a value beats the best by more than
    ``threshold``; with ``confirm``, only when the mean of that value and one more draw
    still does (and the mean becomes the best).
    """
    rng = np.random.default_rng(random_state)
    baseline = rng.normal(0.0, sigma, sims)
    best = baseline.copy()
    for _ in range(max(0, iterations)):
        first = rng.normal(0.0, sigma, sims)
        candidate = first
        if confirm:
            candidate = (first + rng.normal(0.0, sigma, sims)) / 2
            keep = (first < best - threshold) & (candidate < best - threshold)
        else:
            keep = first < best - threshold
        best = np.where(keep, candidate, best)
    delta = best - baseline
    low, high = np.percentile(delta, [2.5, 97.5])
    return NullDelta(float(delta.mean()), float(low), float(high), sims)

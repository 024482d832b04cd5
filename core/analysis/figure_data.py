"""What each figure of the report draws, as plain data: built from the report here, drawn by
:mod:`core.analysis.plots`. Tests check this data against the events; the drawing is checked by
image snapshots.

* :class:`SessionTrace`: every iteration of one repeat as a point of its kind (a crash or a
  rejection has no score, so it carries none and is drawn at a marked band), the running best,
  the noise band under it, the moments a mechanism came or went or a parameter froze, and the
  keep-chain audit's verdict on each keep when the session was audited.
* :class:`Band`: a group's mean running best over its repeats, with a 95 % CI only where n ≥ 2.
* :class:`EffectRow`: per group and parameter, the effect of the kept changes apart from the
  discarded ones (their mean together says nothing: the discards are worse by selection).
* :func:`group_colors`: one colour per group, the same in every figure of a report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from core.analysis.ablation import Report, SessionData, parameter_rows
from core.analysis.evidence_text import latest_audit
from core.analysis.keeps import K_DEFAULT, WITHIN
from core.analysis.stats import bootstrap_mean_ci
from core.record.config import is_surrogate

# The paper's groups keep the colours the first figures gave them; any other group takes the next free one.
FIXED_COLORS = {"A": "#1f77b4", "B": "#2ca02c", "C": "#d62728", "D": "#9467bd"}
OTHER_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939",
                "#8c6d31", "#843c39")

# Point kinds, in the order a legend lists them.
KEPT, KEPT_NOISE, DISCARDED, CRASHED, REJECTED = "kept", "kept, within noise", "discarded", "crashed", "rejected"
BASELINE = "baseline"
UNSCORED = (CRASHED, REJECTED)  # no val_bpb: drawn at the band, never at a value
_KINDS = {"keep": KEPT, "discard": DISCARDED, "crash": CRASHED, "rejected": REJECTED, "baseline": BASELINE}


def group_colors(groups: Sequence[str]) -> dict[str, str]:
    """One colour per group: fixed for A–D, the others in order; a split group ("A (model=…)") gets its own."""
    out = {g: FIXED_COLORS[g] for g in groups if g in FIXED_COLORS}
    free = [c for c in OTHER_COLORS if c not in out.values()]
    for i, g in enumerate(g for g in groups if g not in out):
        out[g] = free[i % len(free)]
    return {g: out[g] for g in groups}


@dataclass(frozen=True)
class TracePoint:
    iteration: int
    kind: str  # BASELINE, KEPT, KEPT_NOISE, DISCARDED, CRASHED, REJECTED
    val_bpb: float | None  # None for CRASHED and REJECTED


@dataclass(frozen=True)
class TraceMark:
    x: float  # between two iterations: the last one finished before it + 0.5
    kind: str  # "mechanism on" | "mechanism off" | "freeze" | "unfreeze"
    label: str


@dataclass
class SessionTrace:
    group: str
    session: str
    points: list[TracePoint]
    best: list[tuple[int, float]]  # the running best, a step after each keep
    baseline: float | None = None
    marks: list[TraceMark] = field(default_factory=list)
    sigma: float | None = None
    k: float = K_DEFAULT
    audit: dict[int, str] = field(default_factory=dict)  # keep iteration -> the audit's verdict (audited only)

    def of(self, kind: str) -> list[TracePoint]:
        return [p for p in self.points if p.kind == kind]


def session_trace(s: SessionData, group: str, k: float = K_DEFAULT) -> SessionTrace:
    points = []
    for r in s.state.records:
        kind = _KINDS.get(r.decision)
        if kind is None:  # interrupted or cancelled: no verdict on the change, nothing to plot
            continue
        verdict = s.verdicts.get(r.iteration)
        if kind == KEPT and verdict is not None and verdict.verdict == WITHIN:
            kind = KEPT_NOISE
        points.append(TracePoint(r.iteration, kind, None if kind in UNSCORED else r.val_bpb))
    return SessionTrace(group, s.name, points, s.curve(), s.baseline, trace_marks(s),
                        s.sigma.value if s.sigma else None, k, audit_verdicts(s))


AUDITED = ("holds", "within noise", "harmful")  # the verdicts an audit measured (not superseded, unmeasured)


def audit_verdicts(s: SessionData) -> dict[int, str]:
    """Keep iteration -> the latest finished audit's measured verdict on it; empty when never audited."""
    audit = latest_audit(s.state)
    if audit is None or audit.finished is None:
        return {}
    return {n: v.verdict for n, v in sorted(audit.verdicts.items()) if v.verdict in AUDITED}


def trace_marks(s: SessionData) -> list[TraceMark]:
    """Mechanism activations and deactivations, freezes and unfreezes, where they fell between iterations."""
    at = lambda after: (-1 if after is None else after) + 0.5  # noqa: E731 (None: before the baseline finished)
    marks = []
    for m in s.mechanisms.values():
        if m.activated_after is not None or m.iterations:
            marks.append(TraceMark(at(m.activated_after), "mechanism on", m.name))
        if m.deactivated_after is not None:
            marks.append(TraceMark(at(m.deactivated_after), "mechanism off", m.name))
    grouped: dict[tuple[float, str], list[str]] = {}
    for c in s.state.param_changes:
        grouped.setdefault((at(c.after), c.action), []).append(c.name)
    marks += [TraceMark(x, action, ", ".join(names)) for (x, action), names in grouped.items()]
    return sorted(marks, key=lambda m: (m.x, m.kind, m.label))


@dataclass
class Band:
    group: str
    n: int  # repeats with a baseline
    rows: list[tuple[int, float, float | None, float | None]]  # iteration, mean Δ, CI low, CI high (None: n < 2)

    @property
    def has_ci(self) -> bool:
        return self.n >= 2


def running_best_bands(report: Report) -> list[Band]:
    """Per group and iteration: mean running-best Δ over repeats and, where n ≥ 2, its bootstrap 95 % CI."""
    bands = []
    for g in report.groups:
        curves = [[(i, v - s.baseline) for i, v in s.curve()] for s in g.sessions if s.baseline is not None]
        curves = [c for c in curves if c]
        last = max((c[-1][0] for c in curves), default=-1)
        rows: list[tuple[int, float, float | None, float | None]] = []
        for it in range(last + 1):
            values = [next((v for i, v in reversed(c) if i <= it), 0.0) for c in curves]
            mean = sum(values) / len(values)
            ci = bootstrap_mean_ci(values, random_state=report.seed)  # None below two repeats
            rows.append((it, mean, ci.low if ci else None, ci.high if ci else None))
        bands.append(Band(g.group, len(curves), rows))
    return bands


@dataclass(frozen=True)
class EffectRow:
    group: str
    parameter: str
    kept: tuple[float, ...]  # val_bpb − best before of each kept change that touched it
    discarded: tuple[float, ...]  # and of each discarded one

    @staticmethod
    def _mean(values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    @property
    def kept_mean(self) -> float | None:
        return self._mean(self.kept)

    @property
    def discarded_mean(self) -> float | None:
        return self._mean(self.discarded)


def effect_rows(report: Report) -> list[EffectRow]:
    return [EffectRow(p.group, p.name, tuple(p.kept_effects), tuple(p.discarded_effects)) for p in parameter_rows(report)]


@dataclass
class Figures:
    """Everything the report's figures draw, in one place."""

    colors: dict[str, str]
    surrogate: bool
    traces: dict[str, list[SessionTrace]]  # group -> one per repeat
    bands: list[Band]
    effects: list[EffectRow]
    proposed: dict[tuple[str, str], tuple[int, int]]  # (group, parameter) -> (proposed, kept)
    cost: list[tuple[str, str, float, float]]  # group, session, training device-seconds, Δ


def figure_data(report: Report, k: float = K_DEFAULT) -> Figures:
    groups = [g.group for g in report.groups]
    return Figures(
        colors=group_colors(groups),
        surrogate=any(is_surrogate(s.state.config) for s in report.sessions),
        traces={g.group: [session_trace(s, g.group, k) for s in g.sessions] for g in report.groups},
        bands=running_best_bands(report),
        effects=effect_rows(report),
        proposed={(p.group, p.name): (p.proposed, p.kept) for p in parameter_rows(report)},
        cost=[(g.group, s.name, s.device_seconds, s.delta) for g in report.groups for s in g.sessions
              if s.delta is not None],
    )

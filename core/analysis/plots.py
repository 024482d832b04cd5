"""Figures of the ablation report (matplotlib, the ``report`` extra), as PNG and SVG.

Each function draws one kind of figure from :mod:`core.analysis.figure_data` (nothing here reads
sessions or computes a statistic), in one fixed style (font, size, DPI, Agg) so that the same
data gives the same image: the snapshot tests rely on it. A surrogate figure carries a
SURROGATE watermark and title; every figure takes the report's one colour per group.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from core.analysis.figure_data import (BASELINE, CRASHED, DISCARDED, KEPT, KEPT_NOISE, REJECTED, Band, EffectRow,
                                       SessionTrace)

FORMATS = ("png", "svg")
DPI = 150
# Fixed so that a figure renders the same everywhere: DejaVu Sans ships with matplotlib; the SVG ids are salted
# and its text stays text (selectable in a paper's draft, searchable by the tests).
STYLE = {"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
         "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 100,
         "svg.hashsalt": "bilevel-report", "svg.fonttype": "none", "axes.grid": True, "grid.alpha": 0.3}
SURROGATE_TITLE = "SURROGATE — "

# How each kind of iteration is drawn: a kept change solid, a noise keep hollow, a discard faint.
MARKERS: dict[str, dict[str, Any]] = {
    BASELINE: dict(marker="s", s=34, edgecolors="black", linewidths=0.8),
    KEPT: dict(marker="o", s=34, edgecolors="black", linewidths=0.8),
    KEPT_NOISE: dict(marker="o", s=34, facecolors="white", linewidths=1.4),
    DISCARDED: dict(marker="o", s=12, alpha=0.45, linewidths=0),
    CRASHED: dict(marker="x", s=30, linewidths=1.4),
    REJECTED: dict(marker="v", s=24, facecolors="none", linewidths=1.1),
}
MARK_STYLE = {"mechanism on": ("#222222", "-", "+"), "mechanism off": ("#222222", ":", "−"),
              "freeze": ("#777777", "--", "freeze "), "unfreeze": ("#777777", "-.", "unfreeze ")}
AUDIT_COLORS = {"holds": "#2ca02c", "within noise": "#7f7f7f", "harmful": "#d62728"}  # the keep-chain audit's verdicts
BAND = (0.9, 1.0)  # the strip, in axes fraction, where runs without a score are drawn
DATA = (0.04, 0.86)  # where the scored values go, clear of the strip


def unavailable() -> str:
    """Why figures cannot be drawn here ("" when they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'bilevel-autoresearch[report]')"
    return ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window (headless boxes over SSH)
    import matplotlib.pyplot as plt

    return plt


def Rectangle(*args: Any, **kw: Any) -> Any:  # noqa: N802 (matplotlib's class, imported only when drawing)
    from matplotlib.patches import Rectangle as cls

    return cls(*args, **kw)


@contextmanager
def _figure(stem: Path, out: list[Path], *, surrogate: bool, formats: Sequence[str], dpi: int,
            **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A figure in the fixed style; on leaving, the SURROGATE mark where due, then saved and freed."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(**subplots)
        try:
            yield fig, axes
            if surrogate:
                _surrogate_mark(fig)
            for fmt in formats:
                path = stem.with_suffix(f".{fmt}")
                fig.savefig(path, dpi=dpi, bbox_inches="tight",
                            metadata={"Date": None} if fmt == "svg" else None)  # no date: the same data, the same file
                out.append(path)
        finally:
            plt.close(fig)


def _surrogate_mark(fig: Any) -> None:
    # A watermark across the figure: a surrogate figure must not pass for a training run, even cropped.
    fig.text(0.5, 0.5, "SURROGATE", fontsize=54, color="#888888", alpha=0.16, rotation=28, ha="center",
             va="center", weight="bold", zorder=100)


def _title(text: str, surrogate: bool) -> str:
    return (SURROGATE_TITLE if surrogate else "") + text


# --- every iteration of one group's repeats ---------------------------------------------------


def trace_figure(traces: Sequence[SessionTrace], color: str, stem: Path, *, surrogate: bool = False,
                 formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """One panel per repeat: each iteration as a point of its kind, the running best, marks, σ band."""
    out: list[Path] = []
    if not traces:
        return out
    cols = min(3, len(traces))
    rows = math.ceil(len(traces) / cols)
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi, nrows=rows, ncols=cols,
                 figsize=(4.4 * cols, 3.1 * rows + 0.9), squeeze=False) as (fig, axes):
        for ax, t in zip(axes.flat, traces):
            _trace_panel(ax, t, color)
        for ax in list(axes.flat)[len(traces):]:
            ax.set_visible(False)
        t0 = traces[0]
        sigma = (f"σ = {t0.sigma:.6g}; hollow: kept within {t0.k:g}σ of the best before it"
                 if t0.sigma is not None else "σ unknown: no keep can be told from noise")
        fig.suptitle(_title(f"Group {t0.group}: every iteration of each repeat ({sigma})", surrogate), fontsize=9)
        drawn = {p.kind for t in traces for p in t.points} | {m.kind for t in traces for m in t.marks} \
            | {f"audit {v}" for t in traces for v in t.audit.values()}
        handles, labels = _trace_legend(color, drawn, any(t.sigma for t in traces), t0.k)
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return out


def _trace_panel(ax: Any, t: SessionTrace, color: str) -> None:
    scored = [p for p in t.points if p.val_bpb is not None]
    values = [p.val_bpb for p in scored] + [y for _, y in t.best]
    if t.sigma and t.best:
        values += [y - t.k * t.sigma for _, y in t.best]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = (hi - lo) or max(abs(hi) * 1e-3, 1e-6)
    full = span / (DATA[1] - DATA[0])
    bottom = lo - DATA[0] * full
    ax.set_ylim(bottom, bottom + full)
    top = bottom + BAND[0] * full  # no tick in the strip: a crash there must not read as a value
    ax.set_yticks([y for y in ax.get_yticks() if bottom <= y <= top])
    if t.best:
        xs, ys = zip(*t.best)
        if t.sigma:
            ax.fill_between(xs, [y - t.k * t.sigma for y in ys], ys, step="post", color=color, alpha=0.13,
                            linewidth=0, zorder=1)
        ax.step(xs, ys, where="post", color=color, linewidth=1.6, zorder=2)
    for kind in (DISCARDED, BASELINE, KEPT, KEPT_NOISE):
        pts = t.of(kind)
        if pts:
            ax.scatter([p.iteration for p in pts], [p.val_bpb for p in pts], zorder=4, **_marker(kind, color))
    by_iteration = {p.iteration: p for p in t.points if p.val_bpb is not None}
    for verdict, ring in AUDIT_COLORS.items():  # the audit's verdict on a keep: a ring around its point
        pts = [by_iteration[n] for n, v in t.audit.items() if v == verdict and n in by_iteration]
        if pts:
            ax.scatter([p.iteration for p in pts], [p.val_bpb for p in pts], marker="o", s=110,
                       facecolors="none", edgecolors=ring, linewidths=1.6, zorder=5)
    strip = ax.get_xaxis_transform()  # x in iterations, y in axes fraction: the strip holds no value
    ax.add_patch(Rectangle((0, BAND[0]), 1, BAND[1] - BAND[0], transform=ax.transAxes, color="#ececec", zorder=0))
    ax.text(0.005, sum(BAND) / 2, "no score", transform=ax.transAxes, fontsize=6, color="#555555", va="center")
    for kind in (CRASHED, REJECTED):
        pts = t.of(kind)
        if pts:
            ax.scatter([p.iteration for p in pts], [sum(BAND) / 2] * len(pts), transform=strip, zorder=4,
                       clip_on=False, **_marker(kind, color))
    for m in t.marks:
        line, style, prefix = MARK_STYLE.get(m.kind, ("#777777", "--", ""))
        ax.axvline(m.x, color=line, linestyle=style, linewidth=0.8, zorder=1)
        # mechanisms labelled left of their line from the bottom, parameters right of theirs from the top:
        # a freeze and an activation after the same iteration stay readable
        mech = m.kind.startswith("mechanism")
        ax.text(m.x, DATA[0] + 0.01 if mech else DATA[1], f" {prefix}{m.label} "[:48], transform=strip,
                rotation=90, fontsize=6, color=line, va="bottom" if mech else "top", ha="right" if mech else "left")
    last = max((p.iteration for p in t.points), default=0)
    ax.set_xlim(-0.6, max([last + 0.6, *[m.x + 0.9 for m in t.marks]]))  # room for the last mark's label
    ax.set(xlabel="iteration", ylabel="val_bpb", title=t.session)
    ax.grid(alpha=0.3)


def _marker(kind: str, color: str) -> dict[str, Any]:
    style = dict(MARKERS[kind])
    if kind in (KEPT_NOISE, REJECTED):
        style["edgecolors"] = color
    else:
        style["c"] = color
    return style


def _trace_legend(color: str, drawn: set[str], with_sigma: bool, k: float) -> tuple[list[Any], list[str]]:
    """Legend entries for what the panels draw (a kind that never occurred is not listed)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def point(kind: str) -> Any:
        st = MARKERS[kind]
        face = "white" if kind == KEPT_NOISE else "none" if kind == REJECTED else color
        return Line2D([], [], linestyle="", marker=st["marker"], markersize=5 if kind != DISCARDED else 3.5,
                      markerfacecolor=face, markeredgecolor=st.get("edgecolors", color) if kind == KEPT else color,
                      alpha=st.get("alpha", 1.0))

    names = {BASELINE: "baseline", KEPT: "kept", KEPT_NOISE: f"kept, within {k:g}σ", DISCARDED: "discarded",
             CRASHED: "crashed (no score)", REJECTED: "rejected (not trained)"}
    entries = [(point(kind), label) for kind, label in names.items() if kind in drawn]
    entries.append((Line2D([], [], color=color, linewidth=1.6), "running best"))
    if with_sigma:
        entries.append((Patch(color=color, alpha=0.13), f"within {k:g}σ below the best"))
    marks = {"mechanism on": "mechanism activated", "mechanism off": "mechanism deactivated",
             "freeze": "parameter frozen", "unfreeze": "parameter unfrozen"}
    for kind, label in marks.items():
        if kind in drawn:
            line, style, _ = MARK_STYLE[kind]
            entries.append((Line2D([], [], color=line, linestyle=style, linewidth=0.8), label))
    for verdict, ring in AUDIT_COLORS.items():
        if f"audit {verdict}" in drawn:
            entries.append((Line2D([], [], linestyle="", marker="o", markersize=8, markerfacecolor="none",
                                   markeredgecolor=ring, markeredgewidth=1.4), f"audit: {verdict}"))
    return [h for h, _ in entries], [lb for _, lb in entries]


# --- running best over repeats ------------------------------------------------------------------


def _mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """The mean over repeats at each iteration, each repeat carried forward past its last point."""
    if not curves:
        return [], []
    last = max((c[-1][0] for c in curves if c), default=-1)
    xs, ys = [], []
    for it in range(last + 1):
        values = []
        for c in curves:
            points = [v for i, v in c if i <= it]
            if points:
                values.append(points[-1])
        if values:
            xs.append(it)
            ys.append(sum(values) / len(values))
    return xs, ys


def running_best_figure(curves: dict[str, list[list[tuple[int, float]]]],
                        baselines: dict[str, list[float | None]], colors: dict[str, str], stem: Path, *,
                        points: dict[str, list[list[tuple[int, float]]]] | None = None,
                        marks: dict[str, list[list[tuple[float, str]]]] | None = None,
                        surrogate: bool = False, formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Running best val_bpb per repeat (thin) and group mean (thick), absolute and from each repeat's baseline;
    every scored iteration as a faint point (``points``: group -> per repeat (iteration, val_bpb)), and where
    a mechanism activated or a parameter froze as ticks along the bottom (``marks``: (x, kind))."""
    out: list[Path] = []
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi, ncols=2, figsize=(12, 4.5)) as (
            fig, (ax_abs, ax_rel)):
        rug = ax_abs.get_xaxis_transform()  # x in iterations, y in axes fraction
        for group, runs in curves.items():
            color = colors[group]
            for run_points in (points or {}).get(group, []):
                if run_points:
                    ax_abs.scatter([x for x, _ in run_points], [y for _, y in run_points], s=14, color=color,
                                   alpha=0.45, linewidths=0, zorder=1)
            for run_marks in (marks or {}).get(group, []):
                for x, kind in run_marks:
                    if kind in ("mechanism on", "freeze"):
                        ax_abs.plot([x, x], [0.0, 0.05], transform=rug, color=color, linewidth=1.1,
                                    linestyle="-" if kind == "mechanism on" else "--", zorder=3, clip_on=False)
            relative = []
            for run, base in zip(runs, baselines.get(group, [])):
                if not run:
                    continue
                xs, ys = zip(*run)
                ax_abs.step(xs, ys, where="post", color=color, alpha=0.35, linewidth=0.9)
                if base is not None:
                    rel = [(x, y - base) for x, y in run]
                    relative.append(rel)
                    ax_rel.step([x for x, _ in rel], [y for _, y in rel], where="post", color=color, alpha=0.35,
                                linewidth=0.9)
            mx, my = _mean_curve([r for r in runs if r])
            if mx:
                ax_abs.step(mx, my, where="post", color=color, linewidth=2.8, label=f"group {group} (n={len(runs)})")
            rx, ry = _mean_curve(relative)
            if rx:
                ax_rel.step(rx, ry, where="post", color=color, linewidth=2.8, label=f"group {group}")
        title = "Running best val_bpb (thin: repeats, thick: mean" + ("; dots: every iteration" if points else "") + ")"
        ax_abs.set(xlabel="iteration", ylabel="best val_bpb so far", title=_title(title, surrogate))
        kinds = {kind for rs in (marks or {}).values() for r in rs for _, kind in r}
        for kind, style, label in (("mechanism on", "-", "tick: mechanism activated"),
                                   ("freeze", "--", "tick: parameter frozen")):
            if kind in kinds:  # legend entries for the ticks along the bottom
                ax_abs.plot([], [], color="#444444", linestyle=style, linewidth=1.1, label=label)
        ax_rel.set(xlabel="iteration", ylabel="best − baseline", title="Δ from each repeat's own baseline")
        ax_rel.axhline(0, color="black", linewidth=0.6)
        _legends(ax_abs, ax_rel)
        fig.tight_layout()
    return out


def running_best_band_figure(bands: Sequence[Band], colors: dict[str, str], stem: Path, *, surrogate: bool = False,
                             formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Mean running best (Δ from each repeat's baseline) per group; its 95 % CI band only where n ≥ 2."""
    out: list[Path] = []
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi, figsize=(8, 4.8)) as (fig, ax):
        without = []
        for b in bands:
            if not b.rows:
                continue
            color = colors[b.group]
            xs = [r[0] for r in b.rows]
            label = f"group {b.group} (n={b.n}, 95 % CI)" if b.has_ci else f"group {b.group} (n={b.n}, no CI)"
            ax.step(xs, [r[1] for r in b.rows], where="post", color=color, linewidth=2.2, label=label)
            if b.has_ci:
                ax.fill_between(xs, [r[2] for r in b.rows], [r[3] for r in b.rows], step="post", color=color,
                                alpha=0.18, linewidth=0)
            else:
                without.append(b.group)
        ax.axhline(0, color="black", linewidth=0.6)
        title = "Mean running best per group" + (", 95 % bootstrap CI" if len(without) < len(bands) else "")
        ax.set(xlabel="iteration", ylabel="best − baseline (mean over repeats)", title=_title(title, surrogate))
        if without:  # say why a band is missing rather than let a line pass for a certain one
            ax.text(0.99, 0.02, f"no interval for {', '.join(without)}: one repeat has no spread (n = 1)",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#444444")
        _legends(ax)
        fig.tight_layout()
    return out


# --- parameters: how often, and with what effect ------------------------------------------------


def exploration_figure(effects: Sequence[EffectRow], proposed: dict[tuple[str, str], tuple[int, int]],
                       colors: dict[str, str], stem: Path, *, surrogate: bool = False,
                       formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Per parameter and group: proposals and keeps; the mean effect of kept changes apart from discarded ones."""
    out: list[Path] = []
    groups = list(colors)
    names = sorted({n for _, n in proposed}, key=lambda n: (-sum(v[0] for (g, m), v in proposed.items() if m == n), n))
    height = max(3.0, 0.42 * len(names) * max(1, len(groups)) + 1.6)
    by_key = {(e.group, e.parameter): e for e in effects}
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi, ncols=2, figsize=(12, height),
                 sharey=True) as (fig, (ax_n, ax_e)):
        bar = 0.8 / max(1, len(groups))
        for gi, group in enumerate(groups):
            color = colors[group]
            ys = [i + (gi - (len(groups) - 1) / 2) * bar for i in range(len(names))]
            counts = [proposed.get((group, n), (0, 0)) for n in names]
            ax_n.barh(ys, [c[0] for c in counts], height=bar, color=color, alpha=0.35, label=f"{group} proposed")
            ax_n.barh(ys, [c[1] for c in counts], height=bar, color=color, label=f"{group} kept")
            rows = [by_key.get((group, n)) for n in names]
            kept = [r.kept_mean if r and r.kept_mean is not None else 0.0 for r in rows]
            dropped = [r.discarded_mean if r and r.discarded_mean is not None else 0.0 for r in rows]
            ax_e.barh([y - bar / 4 for y in ys], kept, height=bar / 2, color=color, label=f"{group} kept")
            ax_e.barh([y + bar / 4 for y in ys], dropped, height=bar / 2, color=color, alpha=0.3, hatch="///",
                      edgecolor=color, linewidth=0, label=f"{group} discarded")
        ax_n.set_yticks(list(range(len(names))))  # ticks before labels: set() once applied them alphabetically
        ax_n.set_yticklabels(names)
        ax_n.set(xlabel="proposals (light) and keeps (dark)",
                 title=_title("Which parameters each group explored", surrogate))
        ax_e.set(xlabel="mean val_bpb − best before (negative helped)",
                 title="Effect: kept changes (solid) apart from discarded ones (hatched)")
        ax_e.axvline(0, color="black", linewidth=0.6)
        ax_n.invert_yaxis()
        _legends(ax_n, ax_e, axis="x")
        fig.tight_layout()
    return out


# --- cost ---------------------------------------------------------------------------------------


def cost_figure(cost: Sequence[tuple[str, str, float, float]], colors: dict[str, str], stem: Path, *,
                surrogate: bool = False, formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Δ of each repeat against its training device-seconds (summed run durations, never wall time)."""
    out: list[Path] = []
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi, figsize=(6.4, 4.4)) as (fig, ax):
        for group, color in colors.items():
            pts = [(sec, d) for g, _, sec, d in cost if g == group]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=30, edgecolors="black",
                           linewidths=0.6, label=f"group {group} (n={len(pts)})", zorder=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(xlabel="training device-seconds per repeat", ylabel="Δ = best − baseline (negative is better)",
               title=_title("What each repeat gained for its training time", surrogate))
        _legends(ax)
        fig.tight_layout()
    return out


def audit_effects_figure(points: Sequence[tuple[str, float, float, float, float, str]], stem: Path, *,
                         surrogate: bool = False, formats: Sequence[str] = FORMATS, dpi: int = DPI) -> list[Path]:
    """The keep-chain audit: each keep's audited effect with its CI (o), beside the search's recorded gain (x)."""
    out: list[Path] = []
    colors = AUDIT_COLORS
    with _figure(stem, out, surrogate=surrogate, formats=formats, dpi=dpi,
                 figsize=(7, 0.35 * len(points) + 1.5)) as (fig, ax):
        for i, (_label, gain, effect, low, high, verdict) in enumerate(points):
            ax.errorbar([effect], [i], xerr=[[effect - low], [high - effect]], fmt="o",
                        color=colors.get(verdict, "#7f7f7f"))
            ax.plot([gain], [i], "x", color="black")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(points)), [p[0] for p in points])
        ax.set_xlabel("val_bpb: audited effect (o, 95 % CI) and the search's recorded gain (x)")
        ax.set_title(_title("Keep-chain audit: green holds, grey within noise, red harmful", surrogate))
    return out


def _legends(*axes: Any, axis: str = "both") -> None:
    for ax in axes:
        ax.grid(axis=axis, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)

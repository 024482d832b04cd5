"""Figures of the ablation report (matplotlib, the ``report`` extra), as PNG and SVG.

* Running best val_bpb against iteration: a thin line per repeat, a thick line per group
  mean; beside it the same as Δ from each repeat's own baseline (baselines differ by seed).
* Parameter exploration: per group, how often each parameter was proposed and kept, and
  the mean effect on val_bpb when it was.

Plain data in, files out; nothing here reads sessions.
"""
from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class ParamRow:
    group: str
    name: str
    proposed: int = 0
    kept: int = 0
    crashed: int = 0
    effects: list[float] = field(default_factory=list)  # val_bpb − best before, over scored proposals

    @property
    def mean_effect(self) -> float | None:
        return sum(self.effects) / len(self.effects) if self.effects else None

    @property
    def best_effect(self) -> float | None:
        return min(self.effects) if self.effects else None


COLORS = {"A": "#1f77b4", "B": "#2ca02c", "C": "#d62728", "D": "#9467bd"}
FORMATS = ("png", "svg")


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


def _color(group: str, index: int) -> str:
    fallback = ["#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    return COLORS.get(group, fallback[index % len(fallback)])


def _save(fig, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


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
                        baselines: dict[str, list[float | None]], stem: Path) -> list[Path]:
    plt = _pyplot()
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(12, 4.5))
    for gi, (group, runs) in enumerate(curves.items()):
        color = _color(group, gi)
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
    ax_abs.set(xlabel="iteration", ylabel="best val_bpb so far", title="Running best val_bpb (thin: repeats, thick: mean)")
    ax_rel.set(xlabel="iteration", ylabel="best − baseline", title="Δ from each repeat's own baseline")
    ax_rel.axhline(0, color="black", linewidth=0.6)
    return _finish(plt, fig, (ax_abs, ax_rel), stem, grid_axis="both", legend_size=8)


def running_best_band_figure(bands: dict[str, list[tuple[int, float, float, float]]], stem: Path,
                             title: str = "") -> list[Path]:
    """Mean running best (Δ from each repeat's baseline) per group, with its 95 % CI band.

    ``bands``: group -> (iteration, mean Δ, CI low, CI high) rows, from the report.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for gi, (group, rows) in enumerate(bands.items()):
        if not rows:
            continue
        color = _color(group, gi)
        xs = [r[0] for r in rows]
        ax.step(xs, [r[1] for r in rows], where="post", color=color, linewidth=2.2, label=f"group {group}")
        ax.fill_between(xs, [r[2] for r in rows], [r[3] for r in rows], step="post", color=color, alpha=0.18,
                        linewidth=0)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set(xlabel="iteration", ylabel="best − baseline (mean over repeats)",
           title=title or "Mean running best per group, 95 % bootstrap CI")
    return _finish(plt, fig, (ax,), stem, grid_axis="both", legend_size=8)


def _finish(plt: Any, fig: Any, axes: Sequence[Any], stem: Path, *, grid_axis: str, legend_size: int) -> list[Path]:
    """Grid, legends where there is something to label, layout; save PNG and SVG and free the figure."""
    for ax in axes:
        ax.grid(axis=grid_axis, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size)
    fig.tight_layout()
    try:
        return _save(fig, stem)
    finally:
        plt.close(fig)


def exploration_figure(rows: Sequence[ParamRow], groups: Sequence[str], stem: Path) -> list[Path]:
    plt = _pyplot()
    names = sorted({r.name for r in rows}, key=lambda n: -sum(r.proposed for r in rows if r.name == n))
    height = max(3.0, 0.35 * len(names) * max(1, len(groups)) + 1.5)
    fig, (ax_n, ax_e) = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    bar = 0.8 / max(1, len(groups))
    by_key = {(r.group, r.name): r for r in rows}
    for gi, group in enumerate(groups):
        color = _color(group, gi)
        ys = [i + (gi - (len(groups) - 1) / 2) * bar for i in range(len(names))]
        proposed = [by_key[(group, n)].proposed if (group, n) in by_key else 0 for n in names]
        kept = [by_key[(group, n)].kept if (group, n) in by_key else 0 for n in names]
        effect = [by_key[(group, n)].mean_effect if (group, n) in by_key else None for n in names]
        ax_n.barh(ys, proposed, height=bar, color=color, alpha=0.35, label=f"{group} proposed")
        ax_n.barh(ys, kept, height=bar, color=color, label=f"{group} kept")
        ax_e.barh(ys, [e or 0.0 for e in effect], height=bar, color=color, label=f"group {group}")
    ax_n.set_yticks(list(range(len(names))))  # ticks before labels: set() once applied them alphabetically
    ax_n.set_yticklabels(names)
    ax_n.set(xlabel="proposals (light) and keeps (dark)", title="Which parameters each group explored")
    ax_e.set(xlabel="mean val_bpb − best before (negative helped)", title="With what effect")
    ax_e.axvline(0, color="black", linewidth=0.6)
    ax_n.invert_yaxis()
    return _finish(plt, fig, (ax_n, ax_e), stem, grid_axis="x", legend_size=7)

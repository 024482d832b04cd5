"""The keep-chain audit in the report: one table of every audited keep and one figure of the effects.

Reads only the folded audits (RunState.audits); the rest of the report is core/analysis/report.py's.
Also the source of "keeps that held" for the report's column: :func:`held_counts`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from core.analysis.evidence_text import AUDIT_COLUMNS, audit_rows, latest_audit
from core.analysis.ablation import SessionData

HEADER = ("session", *AUDIT_COLUMNS)


def held_counts(s: SessionData) -> tuple[int, int] | None:
    """(keeps that held, keeps audited) in the session's latest audit; None when it was never audited."""
    audit = latest_audit(s.state)
    if audit is None or audit.finished is None:
        return None
    measured = [v for v in audit.verdicts.values() if v.verdict in ("holds", "within noise", "harmful")]
    return sum(v.verdict == "holds" for v in measured), len(measured)


def audit_section(sessions: Sequence[SessionData]) -> list[str]:
    """Markdown lines: the audit table (empty when no session was audited)."""
    rows = []
    for s in sessions:
        audit = latest_audit(s.state)
        if audit is not None:
            rows += [[s.name, *row] for row in audit_rows(audit)]
    if not rows:
        return []
    return ["## Keep-chain audit", "",
            "Each keep re-measured on fresh seeds: *effect* = mean over seeds of (best without the keep − best), "
            "with a 95 % t interval over paired seeds; positive means the keep helped. *holds*: the interval "
            "is above 0; *within noise*: it contains 0; *harmful*: below 0.", "",
            _md_table(HEADER, rows), ""]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # report.py imports this module: its md_table is out of reach without a cycle
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def audit_figure(sessions: Sequence[SessionData], stem: Path) -> list[Path]:
    """Each audited keep's search gain beside its audited effect with its interval ([] when none)."""
    from core.analysis.plots import _pyplot, _save

    points = []
    for s in sessions:
        audit = latest_audit(s.state)
        for v in (audit.verdicts.values() if audit is not None else []):
            if v.effect is not None and v.ci_low is not None and v.ci_high is not None:
                points.append((f"{s.name[-12:]} #{v.iteration}", v.recorded_gain or 0.0, v.effect, v.ci_low,
                               v.ci_high, v.verdict))
    if not points:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(points) + 1.5))
    colors = {"holds": "#2ca02c", "within noise": "#7f7f7f", "harmful": "#d62728"}
    for i, (label, gain, effect, low, high, verdict) in enumerate(points):
        ax.errorbar([effect], [i], xerr=[[effect - low], [high - effect]], fmt="o", color=colors[verdict])
        ax.plot([gain], [i], "x", color="black")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(points)), [p[0] for p in points])
    ax.set_xlabel("val_bpb: audited effect (o, 95 % CI) and the search's recorded gain (x)")
    ax.set_title("Keep-chain audit: green holds, grey within noise, red harmful")
    fig.tight_layout()
    paths = _save(fig, stem)
    plt.close(fig)
    return paths

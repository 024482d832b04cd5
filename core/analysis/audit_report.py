"""The keep-chain audit in the report: one table of every audited keep and one figure of the effects.

Reads only the folded audits (RunState.audits); the rest of the report is core/analysis/report.py's.
"Keeps that held" reads the audit's verdicts through core/analysis/keeps.py's AuditOrNoise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from core.analysis.evidence_text import AUDIT_COLUMNS, audit_rows, latest_audit
from core.analysis.ablation import SessionData

HEADER = ("session", *AUDIT_COLUMNS)


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


def audit_points(sessions: Sequence[SessionData]) -> list[tuple[str, float, float, float, float, str]]:
    """What the audit figure draws: per audited keep, its label, the search's gain, the audited effect and CI."""
    points = []
    for s in sessions:
        audit = latest_audit(s.state)
        for v in (audit.verdicts.values() if audit is not None else []):
            if v.effect is not None and v.ci_low is not None and v.ci_high is not None:
                points.append((f"{s.name[-12:]} #{v.iteration}", v.recorded_gain or 0.0, v.effect, v.ci_low,
                               v.ci_high, v.verdict))
    return points


def audit_figure(sessions: Sequence[SessionData], stem: Path, *, surrogate: bool = False) -> list[Path]:
    """Each audited keep's search gain beside its audited effect with its interval ([] when none)."""
    from core.analysis.plots import audit_effects_figure

    points = audit_points(sessions)
    return audit_effects_figure(points, stem, surrogate=surrogate) if points else []

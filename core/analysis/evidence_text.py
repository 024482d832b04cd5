"""The evidence loop in words: log lines for its events, and the audit table the report and the app show."""
from __future__ import annotations

from typing import Any, Callable

from core.record import events as ev
from core.record.state import AuditState, RunState


def _f(x: float | None, digits: int = 6) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def _calibrated(e: ev.NoiseCalibrated) -> str:
    if e.std is None:
        return f"calibration: no σ ({e.reason})"
    return (f"calibration: σ = {e.std:.6f} over {len(e.values)} seeds, baseline mean {e.mean:.6f}"
            + (f" ({e.failed} failed)" if e.failed else ""))


def _verdict(e: ev.AuditVerdict) -> str:
    changes = ", ".join(f"{k}={v}" for k, v in e.changes.items())
    if e.effect is None:
        return f"audit {e.audit}: keep #{e.iteration} ({changes}) {e.verdict}"
    return (f"audit {e.audit}: keep #{e.iteration} ({changes}) effect {_f(e.effect)} "
            f"[{_f(e.ci_low)}, {_f(e.ci_high)}] over {e.pairs} seeds: {e.verdict.upper()}")


def _finished(e: ev.AuditFinished) -> str:
    if e.best_mean is None:
        return f"audit {e.audit} {e.status}: {e.reason}"
    text = (f"audit {e.audit} {e.status}: best {e.best_mean:.6f} vs baseline {e.baseline_mean or 0:.6f}, "
            f"gain {_f(e.gain)} [{_f(e.gain_ci_low)}, {_f(e.gain_ci_high)}]")
    if e.dropped:
        text += (f"; proposed without {', '.join(f'#{n}' for n in e.dropped)}: "
                 f"mean {e.proposed_mean:.6f}" if e.proposed_mean is not None else "")
    return text


FORMATS: dict[type, Callable[[Any], str | None]] = {
    ev.CalibrationStarted: lambda e: f"calibration: the baseline on {len(e.seeds)} fresh seeds before the search",
    ev.CalibrationRunFinished: lambda e: (f"calibration run (seed {e.seed}): "
                                          + (f"val_bpb {e.val_bpb:.6f}" if e.val_bpb is not None else e.outcome)),
    ev.NoiseCalibrated: _calibrated,
    ev.NoiseDeclared: lambda e: f"noise: the script declares σ = {e.std:g}",
    ev.SeedFixed: lambda e: f"SEED FIXED: {e.note} {e.consequence}",
    ev.AuditPlanned: lambda e: (f"audit {e.audit}: {len(e.runs)} runs ≈ {e.estimated_s:g} s of training; keeps "
                                f"{', '.join(f'#{n}' for n in e.keeps) or 'none'}"
                                + (f" (not covered: {', '.join(f'#{n}' for n in e.unaudited)})" if e.unaudited else "")),
    ev.AuditSkipped: lambda e: f"audit {e.audit} skipped: {e.reason}",
    ev.AuditRunFinished: lambda e: (f"audit {e.audit} {e.config} (seed {e.seed}): "
                                    + (f"val_bpb {e.val_bpb:.6f}" if e.val_bpb is not None else e.outcome)),
    ev.AuditVerdict: _verdict,
    ev.AuditFinished: _finished,
}


def latest_audit(state: RunState) -> AuditState | None:
    return state.audits[-1] if state.audits else None


AUDIT_COLUMNS = ("keep", "changes", "search gain", "effect", "95% CI", "seeds", "verdict")


def audit_rows(audit: AuditState) -> list[tuple[str, ...]]:
    """One row per keep of the audited chain, in chain order (the folded verdicts)."""
    rows = []
    for n in audit.plan.chain:
        v = audit.verdicts.get(n)
        if v is None:
            rows.append((f"#{n}", "", "", "", "", "", "pending"))
            continue
        ci = "" if v.ci_low is None else f"[{_f(v.ci_low)}, {_f(v.ci_high)}]"
        rows.append((f"#{n}", ", ".join(f"{k}={val}" for k, val in v.changes.items()),
                     _f(v.recorded_gain), _f(v.effect), ci, str(v.pairs or ""), v.verdict))
    return rows

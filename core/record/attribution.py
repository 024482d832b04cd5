"""What a mechanism's activity led to: the keeps that followed while it was active, and how many held.

One fold (core/record/state.py) serves the report's attribution table and the ledger's session
rows, so both count the same keeps. "Held" is the keep-chain audit's word (its latest audit that
finished): a keep "holds" when its effect's interval clears zero; keeps it did not measure
(superseded, unmeasured, or beyond its share) are not counted either way.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.record.state import MechanismUse, RunState

MEASURED = ("holds", "within noise", "harmful")


@dataclass(frozen=True)
class KeepsHeld:
    keeps: list[int]  # keep iterations while the mechanism was active
    held: int | None  # of those the audit measured, how many held (None: no finished audit)
    audited: int  # of those, how many the audit measured

    def text(self) -> str:
        """"2 of 3" (held of audited), "not audited" without an audit, "—" without keeps."""
        if not self.keeps:
            return "—"
        if self.held is None:
            return "not audited"
        rest = len(self.keeps) - self.audited
        return f"{self.held} of {self.audited}" + (f" (+{rest} not measured)" if rest else "")


def keeps_held(state: RunState, use: MechanismUse) -> KeepsHeld:
    active = set(use.iterations)
    keeps = sorted(r.iteration for r in state.proposals if r.decision == "keep" and r.iteration in active)
    audit = next((a for a in reversed(state.audits) if a.finished is not None), None)
    if audit is None:
        return KeepsHeld(keeps, None, 0)
    measured = [audit.verdicts[k] for k in keeps if k in audit.verdicts and audit.verdicts[k].verdict in MEASURED]
    return KeepsHeld(keeps, sum(v.verdict == "holds" for v in measured), len(measured))

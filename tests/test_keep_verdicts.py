"""Which keeps held: the keep-chain audit's verdict where one finished, the σ test for the rest."""
from __future__ import annotations

from core.analysis.keeps import BEYOND, WITHIN, AuditOrNoise, Sigma, held_counts
from core.record import events as ev
from core.record.change import ParamChange
from core.record.state import AuditState, IterationRecord, RunState

SIGMA = Sigma(0.0005, "declared by the script")


def _keep(iteration: int, best_before: float, val_bpb: float) -> IterationRecord:
    return IterationRecord(iteration=iteration, decision="keep", changes=ParamChange(params={"X": iteration}),
                           hypothesis="", val_bpb=val_bpb, best_before=best_before, best_after=val_bpb,
                           outcome="ok", reason="", rule="", duration_s=1.0, source="offline", mechanisms={},
                           values={})


def _state(finished: bool) -> RunState:
    state = RunState()
    # three keeps: 3σ, 4σ and 0.5σ over the best before each
    state.records = [_keep(2, 1.0000, 0.9985), _keep(5, 0.9985, 0.9965), _keep(8, 0.9965, 0.99625)]
    audit = AuditState(ev.AuditPlanned(audit=1, keeps=[5, 2], unaudited=[8]))
    audit.verdicts = {5: ev.AuditVerdict(audit=1, iteration=5, verdict="holds"),
                      2: ev.AuditVerdict(audit=1, iteration=2, verdict="harmful")}
    audit.finished = ev.AuditFinished(audit=1) if finished else None
    state.audits = [audit]
    return state


def test_a_finished_audit_decides_the_keeps_it_measured_and_sigma_the_rest():
    verdicts = AuditOrNoise()(_state(finished=True), SIGMA)
    assert {it: v.verdict for it, v in verdicts.items()} == {2: "harmful", 5: "holds", 8: WITHIN}
    # 2 beat its best by 3σ, yet on fresh seeds it hurt: the audit, not the single draw, says whether it held
    assert held_counts(verdicts) == (1, 2, 0)
    assert "keep-chain audit" in AuditOrNoise().name


def test_without_a_finished_audit_every_keep_gets_the_sigma_test():
    verdicts = AuditOrNoise()(_state(finished=False), SIGMA)
    assert {it: v.verdict for it, v in verdicts.items()} == {2: BEYOND, 5: BEYOND, 8: WITHIN}
    assert held_counts(verdicts) == (2, 1, 0)

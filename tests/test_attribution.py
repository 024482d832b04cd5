"""Attribution per mechanism: iterations active, proposals shaped, vetoed and modified, keeps that followed, held."""
from __future__ import annotations

from pathlib import Path

from core.analysis.ablation import SessionData
from core.analysis.report import mechanism_header, mechanism_rows_for
from core.engine.ledger_sync import rows_from_state
from core.record import events as ev
from core.record.change import ParamChange
from core.record.state import fold


def session_events(audited: bool) -> list[ev.Event]:
    """Tabu from the start, bandit from #3; keeps at #2 (tabu alone), #3 and #5 (both); the audit holds #2 and #5."""
    events: list[ev.Event] = [
        ev.SessionStarted(session="s", name="s", group="C", config={"script": {"preset": "surrogate"}}),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=1.0),
        ev.MechanismActivated(name="tabu", origin="builtin", hooks=["review_proposal", "shape_prompt"]),
    ]
    decisions = {1: "discard", 2: "keep", 3: "keep", 4: "discard", 5: "keep", 6: "discard"}
    best = 1.0
    for n, decision in decisions.items():
        if n == 3:
            events.append(ev.MechanismActivated(name="bandit", origin="builtin", hooks=["review_proposal"]))
        active = ["tabu"] + (["bandit"] if n >= 3 else [])
        events.append(ev.MechanismEffect(iteration=n, name="tabu", hook="shape_prompt", effect="prompt"))
        if n in (1, 4):
            events.append(ev.MechanismEffect(iteration=n, name="tabu", hook="review_proposal", effect="vetoed"))
        if n >= 3:
            events.append(ev.MechanismEffect(iteration=n, name="bandit", hook="review_proposal", effect="modified"))
        val = best - 0.01 if decision == "keep" else best + 0.01
        events.append(ev.IterationFinished(iteration=n, decision=decision, val_bpb=val, best_before=best,
                                           changes=ParamChange(params={"LR": 0.01 * n}),
                                           mechanisms={m: {"review_proposal": 1} for m in active}))
        best = min(best, val)
    if audited:
        events += [ev.AuditPlanned(audit=1, chain=[2, 3, 5], keeps=[2, 3, 5], repeats=3),
                   ev.AuditVerdict(audit=1, iteration=2, verdict="holds", effect=0.01, ci_low=0.004, ci_high=0.02),
                   ev.AuditVerdict(audit=1, iteration=3, verdict="within noise", effect=0.001),
                   ev.AuditVerdict(audit=1, iteration=5, verdict="holds", effect=0.009, ci_low=0.002, ci_high=0.02),
                   ev.AuditFinished(audit=1)]
    return events


def rows(audited: bool) -> dict[str, dict[str, str]]:
    data = SessionData(path=Path("/sessions/s"), state=fold(session_events(audited)))
    header = mechanism_header()
    return {r[2]: dict(zip(header, r[2:])) for r in mechanism_rows_for("C", data)}


def test_each_mechanism_gets_its_activity_and_the_keeps_that_followed_with_the_audits_verdict():
    table = rows(audited=True)
    tabu, bandit = table["tabu"], table["bandit"]
    assert (tabu["iterations active"], tabu["proposals shaped"], tabu["vetoed"], tabu["modified"]) == ("6", "6", "2", "0")
    assert (bandit["iterations active"], bandit["proposals shaped"], bandit["modified"]) == ("4", "0", "4")
    assert tabu["keeps that followed"] == "3" and tabu["held in the audit"] == "2 of 3"
    assert bandit["keeps that followed"] == "2" and bandit["held in the audit"] == "1 of 2"
    assert (tabu["active from"], bandit["active from"]) == ("after #0", "after #2")


def test_without_an_audit_the_keeps_are_counted_and_said_to_be_unaudited():
    table = rows(audited=False)
    assert table["tabu"]["keeps that followed"] == "3" and table["tabu"]["held in the audit"] == "not audited"


def test_the_ledger_records_the_same_audit_verdict_per_mechanism():
    state = fold(session_events(audited=True))
    _, _, records = rows_from_state(state, lambda rel: "", "s")
    verdicts = {r.name: (r.keeps_while_active, r.audit_verdict) for r in records}
    assert verdicts == {"tabu": (3, "2 of 3 keeps held"), "bandit": (2, "1 of 2 keeps held")}
    _, _, unaudited = rows_from_state(fold(session_events(audited=False)), lambda rel: "", "s")
    assert {r.audit_verdict for r in unaudited} == {None}

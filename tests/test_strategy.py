"""Level 1.5: the paper's freeze rule in code, and the limits on what a cycle may change."""
from __future__ import annotations

from core.levels.strategy import apply_limits, freeze_candidates, offline_guidance
from core.services.script import ParamSpec
from core.record.state import IterationRecord
from core.levels.trace import param_stats


def rec(i: int, decision: str, changes: dict, val: float | None, best_before: float = 1.0) -> IterationRecord:
    return IterationRecord(iteration=i, decision=decision, changes=changes, hypothesis="", val_bpb=val,
                           best_before=best_before, best_after=None, outcome="ok", reason="", rule="",
                           duration_s=1.0, source="llm", mechanisms={}, values={})


SCHEMA = {n: ParamSpec(n, "float", 0.1) for n in ("A", "B", "C", "D", "E")}
SCHEMA["L"] = ParamSpec("L", "int", 8, locked=True)


def test_parameter_proposed_k_times_with_zero_net_gain_is_a_candidate():
    records = [rec(0, "baseline", {}, 1.0)] + [rec(i, "discard", {"A": 0.1 * i}, 1.01) for i in (1, 2, 3)]
    stats = param_stats(records)
    assert stats["A"].proposed == 3 and stats["A"].net_improvement == 0.0
    assert freeze_candidates(stats, k=3, locked=["L"], frozen=[]) == ["A"]


def test_below_the_k_threshold_there_is_no_candidate():
    records = [rec(i, "discard", {"A": 0.1 * i}, 1.01) for i in (1, 2)]
    assert freeze_candidates(param_stats(records), k=3, locked=[], frozen=[]) == []


def test_any_net_gain_saves_a_parameter_from_the_rule():
    records = [rec(1, "discard", {"A": 0.2}, 1.01), rec(2, "keep", {"A": 0.3}, 0.99),
               rec(3, "discard", {"A": 0.4}, 1.0, best_before=0.99)]
    assert freeze_candidates(param_stats(records), k=3, locked=[], frozen=[]) == []


def test_crashes_and_rejections_count_as_they_should():
    records = [rec(1, "crash", {"A": 9.0}, None), rec(2, "crash", {"A": 8.0}, None),
               rec(3, "discard", {"A": 7.0}, 1.1), rec(4, "rejected", {"B": 1.0}, None)]
    stats = param_stats(records)
    assert stats["A"].proposed == 3 and stats["A"].crashed == 2 and "B" not in stats
    assert freeze_candidates(stats, k=3, locked=[], frozen=[]) == ["A"]


def test_frozen_and_locked_parameters_are_not_candidates_again():
    records = [rec(i, "discard", {"A": 0.1 * i, "L": i}, 1.01) for i in (1, 2, 3)]
    assert freeze_candidates(param_stats(records), k=3, locked=["L"], frozen=["A"]) == []


def test_limits_cap_new_freezes_per_cycle():
    plan = apply_limits(want_freeze=["A", "B", "C"], want_unfreeze=[], candidates=["A", "B", "C"],
                        schema=SCHEMA, frozen=[], max_new_freezes=2, min_active=1)
    assert plan.freeze == ["A", "B"] and "limit of 2" in plan.refused["C"]


def test_limits_keep_a_minimum_of_active_parameters():
    plan = apply_limits(want_freeze=["A", "B", "C"], want_unfreeze=[], candidates=["A", "B", "C"],
                        schema=SCHEMA, frozen=["D"], max_new_freezes=5, min_active=2)
    # five tunable, D frozen: four active; freezing may go down to two
    assert plan.freeze == ["A", "B"] and "fewer than 2" in plan.refused["C"]


def test_locked_parameters_are_never_unfrozen_and_non_candidates_never_frozen():
    plan = apply_limits(want_freeze=["B", "L"], want_unfreeze=["L", "C"], candidates=["A"],
                        schema=SCHEMA, frozen=["C"], max_new_freezes=3, min_active=1)
    assert plan.unfreeze == ["C"]
    assert "never unfrozen" in plan.refused["L"] or "locked" in plan.refused["L"]
    assert "not a freeze candidate" in plan.refused["B"]
    assert plan.freeze == []


def test_offline_guidance_names_the_least_explored_parameters():
    stats = param_stats([rec(i, "discard", {"A": 0.1 * i}, 1.01) for i in (1, 2, 3)] +
                        [rec(4, "discard", {"B": 0.5}, 1.01)])
    text = offline_guidance(stats, ["A", "B", "C"])
    assert "C (0×), B (1×);" in text and "A (" not in text

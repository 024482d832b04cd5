"""Tests for the built-in search mechanisms (tabu, bandit, orthogonal), their registry and
offline Level 2's rule for choosing among them, on hand-built traces of the reference
parameters."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mechanisms
from mechanisms import BUILTINS, Bandit, Orthogonal, Tabu, builtin
from mechanisms.base import Mechanism, Modify, SearchState, Veto
from mechanisms.selection import choose_builtin
from mechanisms.contract import ContractError, check_local
from mechanisms.tabu import within_tolerance
from tests.support.patience import patience

ROOT = Path(__file__).resolve().parents[1]
BASELINE_BPB = 1.0


def spec(kind: str, value: Any, **extra: Any) -> dict[str, Any]:
    """A schema entry shaped like the engine's (choices as a list, as after JSON)."""
    return {"kind": kind, "value": value, "locked": False, "minimum": None, "maximum": None,
            "choices": None, "log_scale": False, "pow2": False, **extra}


SCHEMA = {
    "MATRIX_LR": spec("float", 0.04, minimum=0.0004, maximum=4.0, log_scale=True),
    "WARMDOWN_RATIO": spec("float", 0.5, minimum=0.0, maximum=1.0),
    "TOTAL_BATCH_SIZE": spec("int", 2**19, minimum=2**15, maximum=2**23, pow2=True),
    "WINDOW_PATTERN": spec("str", "SSSL", choices=["SSSL", "SL", "L"]),
    "ADAM_BETAS": spec("tuple", (0.8, 0.95)),
}
PARAMS = list(SCHEMA)


def trace(*steps: tuple[dict[str, Any], float | None], schema: dict[str, dict] | None = None,
          frozen: tuple[str, ...] = (), iteration: int | None = None,
          frozen_directions: dict[str, list[str]] | None = None, with_moves: bool = False) -> SearchState:
    """A SearchState after a baseline and ``steps`` of (changes, val_bpb; None = crash).

    Decisions follow the inner loop: keep when val_bpb beats the best, else discard.
    ``with_moves``: the engine's ``moves`` (what the proposer can do), as core.levels.trace builds them;
    without, ``moves`` is None, as in a trace recorded before there were any.
    """
    schema = schema if schema is not None else SCHEMA
    best = {n: s["value"] for n, s in schema.items()}
    best_bpb = BASELINE_BPB
    records: list[dict[str, Any]] = [{"iteration": 0, "decision": "baseline", "changes": {}, "hypothesis": "",
                                      "val_bpb": BASELINE_BPB, "best_before": None, "values": dict(best)}]
    for i, (changes, val_bpb) in enumerate(steps, start=1):
        if val_bpb is None:
            decision = "crash"
        else:
            decision = "keep" if val_bpb < best_bpb else "discard"
        records.append({"iteration": i, "decision": decision, "changes": dict(changes), "hypothesis": "h",
                        "val_bpb": val_bpb, "best_before": best_bpb, "values": {**best, **changes}})
        if decision == "keep":
            best.update(changes)
            best_bpb = val_bpb
    fd = {n: sorted(d) for n, d in (frozen_directions or {}).items()}
    moves = None
    if with_moves:
        from core.levels.trace import moves as engine_moves
        run = SimpleNamespace(frozen=set(frozen), best_values=best, frozen_directions=fd)
        moves = engine_moves(run, schema)  # type: ignore[arg-type]
    return SearchState(iteration=len(steps) + 1 if iteration is None else iteration, records=records,
                       schema=schema, best_values=best, best_val_bpb=best_bpb, baseline_val_bpb=BASELINE_BPB,
                       frozen=list(frozen), frozen_directions=fd, moves=moves)


def propose(**changes: Any) -> dict[str, Any]:
    return {"changes": changes, "hypothesis": "test"}


def next_iteration(state: SearchState) -> SearchState:
    return SearchState(iteration=state.iteration + 1, records=state.records, schema=state.schema,
                       best_values=state.best_values, best_val_bpb=state.best_val_bpb,
                       baseline_val_bpb=state.baseline_val_bpb, frozen=state.frozen,
                       frozen_directions=state.frozen_directions, moves=state.moves)


# --- tabu ------------------------------------------------------------------------------------


def test_tabu_vetoes_a_repeat_within_tolerance_and_names_the_iteration() -> None:
    state = trace(({"WARMDOWN_RATIO": 0.3}, 1.002), ({"MATRIX_LR": 0.0498}, 1.2345))
    verdict = Tabu().review_proposal(state, propose(MATRIX_LR=0.05))
    assert isinstance(verdict, Veto)
    assert "#2" in verdict.reason
    assert "MATRIX_LR=0.05" in verdict.reason and "MATRIX_LR=0.0498" in verdict.reason
    assert "discarded" in verdict.reason and "1.2345" in verdict.reason


def test_tabu_accepts_a_value_outside_tolerance() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 1.01))
    assert Tabu().review_proposal(state, propose(MATRIX_LR=0.06)) is None  # ln(1.2) > ln(1.15)
    assert Tabu().review_proposal(state, propose(MATRIX_LR=0.042)) is None  # ln(1.19) > ln(1.15)
    assert isinstance(Tabu().review_proposal(state, propose(MATRIX_LR=0.045)), Veto)


@pytest.mark.parametrize(("name", "a", "b", "close"), [
    ("MATRIX_LR", 0.05, 0.0571, True),  # log scale: ratio 1.142
    ("MATRIX_LR", 0.05, 0.0580, False),  # ratio 1.16
    ("WARMDOWN_RATIO", 0.54, 0.5, True),  # 5% of the range 0..1
    ("WARMDOWN_RATIO", 0.56, 0.5, False),
    ("TOTAL_BATCH_SIZE", 2**20, 2**20, True),  # powers of two: equal only
    ("TOTAL_BATCH_SIZE", 2**20, 2**21, False),
    ("WINDOW_PATTERN", "SL", "SL", True),  # choices: equal only
    ("WINDOW_PATTERN", "SL", "L", False),
    ("ADAM_BETAS", (0.85, 0.95), (0.86, 0.951), True),  # element by element
    ("ADAM_BETAS", [0.85, 0.95], (0.85, 0.95), True),  # a tuple read back from JSON is a list
    ("ADAM_BETAS", (0.7, 0.95), (0.85, 0.95), False),
    ("ADAM_BETAS", (0.85, 0.95, 0.9), (0.85, 0.95), False),
])
def test_tolerance_is_measured_in_each_parameters_own_scale(name: str, a: Any, b: Any, close: bool) -> None:
    assert within_tolerance(a, b, SCHEMA[name]) is close


def test_tolerance_for_plain_ints_and_unbounded_floats() -> None:
    assert within_tolerance(101, 100, spec("int", 100)) and not within_tolerance(106, 100, spec("int", 100))
    assert within_tolerance(9, 8, spec("int", 8))  # at least 1 apart is allowed
    assert within_tolerance(2.09, 2.0, spec("float", 2.0)) and not within_tolerance(2.2, 2.0, spec("float", 2.0))
    assert not within_tolerance(True, 1, spec("bool", True))


def test_tabu_only_blocks_where_the_entry_actually_explored() -> None:
    # #1 changed WARMDOWN_RATIO only; MATRIX_LR=0.04 was merely its background value.
    state = trace(({"WARMDOWN_RATIO": 0.3}, 1.01))
    assert Tabu().review_proposal(state, propose(MATRIX_LR=0.041)) is None


def test_tabu_allows_half_of_a_discarded_pair() -> None:
    state = trace(({"MATRIX_LR": 0.05, "WARMDOWN_RATIO": 0.9}, 1.01))
    assert Tabu().review_proposal(state, propose(MATRIX_LR=0.05)) is None
    assert isinstance(Tabu().review_proposal(state, propose(MATRIX_LR=0.05, WARMDOWN_RATIO=0.92)), Veto)


def test_tabu_compares_the_full_config_after_later_keeps() -> None:
    # #1 tried MATRIX_LR=0.05 at WARMDOWN 0.5; #2 kept WARMDOWN 0.3; retrying 0.05 alone
    # compares only the parameters either changed, so it is still a repeat of #1.
    state = trace(({"MATRIX_LR": 0.05}, 1.01), ({"WARMDOWN_RATIO": 0.3}, 0.99))
    verdict = Tabu().review_proposal(state, propose(MATRIX_LR=0.05))
    assert isinstance(verdict, Veto) and "#1" in verdict.reason


def test_tabu_forgets_entries_older_than_its_tenure() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 1.01), ({"WARMDOWN_RATIO": 0.3}, 1.01), ({"WINDOW_PATTERN": "L"}, 1.01))
    assert Tabu(tenure=2).review_proposal(state, propose(MATRIX_LR=0.05)) is None
    assert isinstance(Tabu(tenure=3).review_proposal(state, propose(MATRIX_LR=0.05)), Veto)


def test_tabu_vetoes_a_repeat_of_a_crash_and_says_it_crashed() -> None:
    state = trace(({"TOTAL_BATCH_SIZE": 2**22}, None))
    verdict = Tabu().review_proposal(state, propose(TOTAL_BATCH_SIZE=2**22))
    assert isinstance(verdict, Veto) and "crashed" in verdict.reason and "#1" in verdict.reason


def test_tabu_prompt_lists_recent_regions_newest_first() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 1.01), ({"WINDOW_PATTERN": "L"}, None))
    text = Tabu().shape_prompt(state, "")
    assert text is not None
    assert text.index("#2 WINDOW_PATTERN='L'") < text.index("#1 MATRIX_LR=0.05")
    assert Tabu().shape_prompt(trace(), "") is None


def test_tabu_attached_mid_run_knows_the_history() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 1.01), ({"WARMDOWN_RATIO": 0.3}, 1.01))
    tabu = Tabu()
    tabu.on_attach(state)
    assert [e["iteration"] for e in tabu.entries] == [1, 2]
    assert isinstance(tabu.review_proposal(state, propose(MATRIX_LR=0.05)), Veto)


# --- bandit ----------------------------------------------------------------------------------


def test_bandit_explores_untried_arms_first_in_schema_order() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01))
    bandit = Bandit()
    assert bandit.choose(state) == "TOTAL_BATCH_SIZE"
    text = bandit.shape_prompt(state, "")
    assert text is not None and "TOTAL_BATCH_SIZE" in text and "not been tried" in text


def test_bandit_picks_the_best_ucb_score_once_all_arms_are_tried() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.0), ({"TOTAL_BATCH_SIZE": 2**20}, None),
                  ({"WINDOW_PATTERN": "L"}, 0.995), ({"ADAM_BETAS": (0.85, 0.95)}, 1.02))
    bandit = Bandit()
    assert bandit.choose(state) == "MATRIX_LR"
    scores = bandit.scores(state)
    explore = math.sqrt(2) * math.sqrt(math.log(5) / 1)
    assert scores["MATRIX_LR"] == pytest.approx(1.0 + explore)  # the largest reward rescales to 1
    # WINDOW_PATTERN's run beat the baseline but not the best at the time (0.99): no reward.
    assert scores["WINDOW_PATTERN"] == pytest.approx(explore)
    assert scores["TOTAL_BATCH_SIZE"] == pytest.approx(explore)  # a crash earns nothing
    text = bandit.shape_prompt(state, "")
    assert text is not None and "MATRIX_LR" in text and "UCB1" in text


def test_bandit_explores_an_undersampled_arm_over_a_mediocre_favourite() -> None:
    favourite = [({"MATRIX_LR": 0.04 * (1.3 ** k)}, 1.0 - 0.0001 * (k + 1) * 0.5) for k in range(8)]
    one_off = [({p: v}, 1.01) for p, v in (("WARMDOWN_RATIO", 0.3), ("TOTAL_BATCH_SIZE", 2**20),
                                            ("WINDOW_PATTERN", "L"), ("ADAM_BETAS", (0.85, 0.95)))]
    state = trace(*favourite, *one_off)
    scores = Bandit().scores(state)
    assert max(scores, key=scores.__getitem__) != "MATRIX_LR"
    # With no exploration term the favourite, the only arm that ever paid off, wins.
    assert Bandit(c=0.0).choose(state) == "MATRIX_LR"


def test_bandit_skips_frozen_and_locked_parameters() -> None:
    schema = {**SCHEMA, "WINDOW_PATTERN": {**SCHEMA["WINDOW_PATTERN"], "locked": True}}
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), schema=schema,
                  frozen=("TOTAL_BATCH_SIZE",))
    bandit = Bandit()
    assert bandit.choose(state) == "ADAM_BETAS"
    assert set(bandit.scores(state)) == {"MATRIX_LR", "WARMDOWN_RATIO", "ADAM_BETAS"}


def test_bandit_adds_its_arm_to_a_proposal_that_misses_it_instead_of_vetoing() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), with_moves=True)
    bandit = Bandit()
    assert bandit.choose(state) == "WARMDOWN_RATIO"
    assert bandit.review_proposal(state, propose(WARMDOWN_RATIO=0.4, TOTAL_BATCH_SIZE=2**20)) is None
    modified = bandit.review_proposal(state, propose(MATRIX_LR=0.06))
    assert isinstance(modified, Modify)
    assert modified.changes["MATRIX_LR"] == 0.06  # the proposer's own change stays
    assert modified.changes["WARMDOWN_RATIO"] in (0.4, 0.6)  # one plain step (a tenth of the range) either way
    assert "WARMDOWN_RATIO" in modified.note
    assert check_local("review_proposal", modified, state.schema) == modified


def test_bandit_steps_its_arm_only_in_an_open_direction() -> None:
    untried = {"MATRIX_LR": 0.05, "WARMDOWN_RATIO": 0.3, "WINDOW_PATTERN": "L", "ADAM_BETAS": (0.85, 0.95)}
    state = trace(*[({k: v}, 1.01) for k, v in untried.items()], frozen_directions={"TOTAL_BATCH_SIZE": ["up"]},
                  with_moves=True)
    bandit = Bandit()
    assert bandit.choose(state) == "TOTAL_BATCH_SIZE"
    for k in range(4):  # whatever the iteration's turn, never the frozen increase
        modified = bandit.review_proposal(next_iteration(state) if k % 2 else state, propose(MATRIX_LR=0.06))
        assert isinstance(modified, Modify) and modified.changes["TOTAL_BATCH_SIZE"] == 2**18


def test_bandit_never_picks_a_parameter_the_proposer_cannot_move() -> None:
    # WINDOW_PATTERN with one choice left, TOTAL_BATCH_SIZE at its floor with "up" frozen, ADAM_BETAS no direction
    schema = {**SCHEMA, "WINDOW_PATTERN": {**SCHEMA["WINDOW_PATTERN"], "choices": ["SSSL"]},
              "TOTAL_BATCH_SIZE": {**SCHEMA["TOTAL_BATCH_SIZE"], "minimum": 2**19}}
    state = trace(({"MATRIX_LR": 0.05}, 0.99), schema=schema, frozen_directions={"TOTAL_BATCH_SIZE": ["up"]},
                  with_moves=True)
    assert set(state.moves or {}) == {"MATRIX_LR", "WARMDOWN_RATIO"}
    assert set(Bandit().scores(state)) == {"MATRIX_LR", "WARMDOWN_RATIO"}


# --- orthogonal ------------------------------------------------------------------------------


def test_orthogonal_schedules_least_recently_changed_dimensions_first() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), ({"MATRIX_LR": 0.06}, 1.01),
                  ({"ADAM_BETAS": (0.85, 0.95)}, 1.01))
    orthogonal = Orthogonal()
    assert orthogonal.schedule(state) == ["TOTAL_BATCH_SIZE", "WINDOW_PATTERN", "WARMDOWN_RATIO",
                                          "MATRIX_LR", "ADAM_BETAS"]
    text = orthogonal.shape_prompt(state, "")
    assert text is not None and "Vary TOTAL_BATCH_SIZE and WINDOW_PATTERN together" in text


def test_orthogonal_adds_a_stale_dimension_to_a_stale_only_proposal() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), with_moves=True)
    orthogonal = Orthogonal()
    assert orthogonal.review_proposal(state, propose(MATRIX_LR=0.06, WINDOW_PATTERN="L")) is None
    modified = orthogonal.review_proposal(state, propose(MATRIX_LR=0.06, WARMDOWN_RATIO=0.4))
    assert isinstance(modified, Modify)
    assert modified.changes["TOTAL_BATCH_SIZE"] in (2**18, 2**20)  # the least recently explored, one step
    assert {"MATRIX_LR", "WARMDOWN_RATIO"} <= set(modified.changes)
    assert check_local("review_proposal", modified, state.schema) == modified


def test_orthogonal_skips_a_stale_dimension_that_cannot_move() -> None:
    # TOTAL_BATCH_SIZE and WINDOW_PATTERN are stale but closed: down frozen at ... and no other choice left
    schema = {**SCHEMA, "WINDOW_PATTERN": {**SCHEMA["WINDOW_PATTERN"], "choices": ["SSSL", "SL"]}}
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), schema=schema,
                  frozen_directions={"TOTAL_BATCH_SIZE": ["down", "up"], "WINDOW_PATTERN": ["→SL"]},
                  with_moves=True)
    orthogonal = Orthogonal()
    assert "TOTAL_BATCH_SIZE" not in orthogonal.schedule(state)
    assert orthogonal.review_proposal(state, propose(MATRIX_LR=0.06)) is None  # nothing movable is stale


def test_orthogonal_forgets_changes_older_than_its_window() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), *[({"WARMDOWN_RATIO": 0.3 + k / 10}, 1.01) for k in range(4)],
                  with_moves=True)
    assert Orthogonal(window=4).review_proposal(state, propose(MATRIX_LR=0.06)) is None
    assert isinstance(Orthogonal(window=5).review_proposal(state, propose(MATRIX_LR=0.06)), Modify)


def test_orthogonal_does_not_veto_when_nothing_fresher_is_left() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01),
                  frozen=("TOTAL_BATCH_SIZE", "WINDOW_PATTERN", "ADAM_BETAS"))
    assert Orthogonal().review_proposal(state, propose(MATRIX_LR=0.06)) is None


# --- robustness: every hook on awkward traces ------------------------------------------------


def awkward_states() -> dict[str, SearchState]:
    odd = trace(({"MATRIX_LR": 0.05}, None), ({"NOT_IN_SCHEMA": 3}, 1.01), ({"WARMDOWN_RATIO": 0.3}, 0.98))
    odd.records.append({"iteration": 4, "decision": "rejected", "changes": {}, "val_bpb": None})
    odd.records.append({"iteration": 5, "decision": "discard"})  # keys missing altogether
    return {
        "empty": SearchState(),
        "baseline only": trace(),
        "crashes, unknown params, missing keys": odd,
        "all frozen": trace(({"MATRIX_LR": 0.05}, 0.99), frozen=tuple(PARAMS)),
        "every direction frozen": trace(({"MATRIX_LR": 0.05}, 0.99), with_moves=True, frozen_directions={
            "MATRIX_LR": ["down", "up"], "WARMDOWN_RATIO": ["down", "up"], "TOTAL_BATCH_SIZE": ["down", "up"],
            "WINDOW_PATTERN": ["→L", "→SL"]}),
        "some directions frozen": trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01),
                                        with_moves=True, frozen_directions={"TOTAL_BATCH_SIZE": ["up"]}),
        "no baseline score": SearchState(iteration=2, schema=SCHEMA, records=[
            {"iteration": 1, "decision": "crash", "changes": {"MATRIX_LR": 0.05}, "val_bpb": None,
             "best_before": None, "values": {}}]),
    }


@pytest.mark.parametrize("name", sorted(BUILTINS))
@pytest.mark.parametrize("case", list(awkward_states()))
def test_every_hook_tolerates_awkward_traces(name: str, case: str) -> None:
    state = awkward_states()[case]
    mechanism = builtin(name)
    assert mechanism.on_attach(state) is None
    text = mechanism.shape_prompt(state, "prompt")
    assert text is None or isinstance(text, str)
    check_local("shape_prompt", text, state.schema)  # the one contract generated mechanisms answer to
    for proposal in (propose(MATRIX_LR=0.05), propose(NOT_IN_SCHEMA=4), propose(), {"changes": None}):
        for _ in range(2):
            verdict = mechanism.review_proposal(state, proposal)
            assert verdict is None or isinstance(verdict, (Veto, Modify))
            assert check_local("review_proposal", verdict, state.schema) == verdict
    assert mechanism.decide(state, {"outcome": "ok", "val_bpb": None, "metrics": {}}, None) is None
    assert mechanism.observe(state, {"outcome": "crash", "val_bpb": None, "metrics": {}}) is None


def test_mechanisms_read_the_snapshot_the_engine_builds() -> None:
    from core.levels.trace import snapshot
    from core.record.state import IterationRecord, RunState

    def record(i: int, decision: str, changes: dict, val_bpb: float | None, values: dict) -> IterationRecord:
        return IterationRecord(iteration=i, decision=decision, changes=changes, hypothesis="", val_bpb=val_bpb,
                               best_before=None if i == 0 else 1.0, best_after=1.0, outcome="ok", reason="",
                               rule="", duration_s=1.0, source="offline", mechanisms={}, values=values)

    base = {n: s["value"] for n, s in SCHEMA.items()}
    run = RunState(baseline_val_bpb=1.0, best_val_bpb=1.0, best_values=dict(base), records=[
        record(0, "baseline", {}, 1.0, dict(base)),
        record(1, "discard", {"MATRIX_LR": 0.05}, 1.01, {**base, "MATRIX_LR": 0.05})])
    state = snapshot(run, SCHEMA)
    assert isinstance(Tabu().review_proposal(state, propose(MATRIX_LR=0.05)), Veto)
    assert Bandit().choose(state) == "WARMDOWN_RATIO"
    assert Orthogonal().next_dimensions(state) == ["WARMDOWN_RATIO", "TOTAL_BATCH_SIZE"]


def test_the_engine_snapshot_offers_only_moves_the_proposer_can_make() -> None:
    from core.levels.trace import snapshot
    from core.record.state import RunState

    base = {n: s["value"] for n, s in SCHEMA.items()}
    run = RunState(baseline_val_bpb=1.0, best_val_bpb=1.0, best_values=dict(base), frozen={"MATRIX_LR"},
                   frozen_directions={"TOTAL_BATCH_SIZE": {"up"}, "WINDOW_PATTERN": {"→SL"}})
    state = snapshot(run, SCHEMA)
    assert state.moves == {"WARMDOWN_RATIO": {"down": 0.4, "up": 0.6}, "TOTAL_BATCH_SIZE": {"down": 2**18},
                           "WINDOW_PATTERN": {"→L": "L"}}
    assert state.frozen_directions == {"TOTAL_BATCH_SIZE": ["up"], "WINDOW_PATTERN": ["→SL"]}
    assert state.movable_params() == ["WARMDOWN_RATIO", "TOTAL_BATCH_SIZE", "WINDOW_PATTERN"]


def test_tabu_names_a_move_the_proposer_can_make_and_no_frozen_one() -> None:
    state = trace(({"TOTAL_BATCH_SIZE": 2**18}, 1.01), ({"MATRIX_LR": 0.05}, 1.01),
                  frozen=("WARMDOWN_RATIO",), frozen_directions={"MATRIX_LR": ["up"], "TOTAL_BATCH_SIZE": ["up"]},
                  with_moves=True)
    veto = Tabu().review_proposal(state, propose(MATRIX_LR=0.05))
    assert isinstance(veto, Veto) and "repeats iteration #2" in veto.reason
    # MATRIX_LR down to 0.02 repeats nothing; TOTAL_BATCH_SIZE down is #1 again; up and WARMDOWN_RATIO are frozen
    assert "e.g. MATRIX_LR down to 0.02" in veto.reason


def test_the_cmaes_hint_leaves_out_a_frozen_direction() -> None:
    pytest.importorskip("cmaes")
    steps = [({"MATRIX_LR": 0.04 * 1.2 ** k, "WARMDOWN_RATIO": 0.5 - 0.02 * k}, 1.0 - 0.001 * k) for k in range(8)]
    free = builtin("cmaes_hint").suggest(trace(*steps, with_moves=True))
    assert free  # it has something to say without freezes
    directions = {n: ["up" if v > trace(*steps).best_values[n] else "down"] for n, v in free.items()}
    held = builtin("cmaes_hint").suggest(trace(*steps, with_moves=True, frozen_directions=directions))
    assert held == {}


def test_selection_ignores_parameters_the_proposer_cannot_move() -> None:
    state = trace(*SPREAD[:2], with_moves=True, frozen_directions={"TOTAL_BATCH_SIZE": ["down", "up"]})
    name, reason = choose_builtin(state.records, SCHEMA, movable=state.moves)
    assert name == "orthogonal" and "TOTAL_BATCH_SIZE" not in reason and "WINDOW_PATTERN" in reason
    assert "ADAM_BETAS" not in reason  # a tuple has no direction to move in


# --- selection (offline Level 2) -------------------------------------------------------------

SPREAD = [({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), ({"TOTAL_BATCH_SIZE": 2**20}, 1.01),
          ({"WINDOW_PATTERN": "L"}, 1.01), ({"ADAM_BETAS": (0.85, 0.95)}, 1.01)]


def test_selection_picks_tabu_when_recent_proposals_repeat() -> None:
    repeats = [({"WARMDOWN_RATIO": 0.31}, 1.01), ({"MATRIX_LR": 0.072}, 1.01), ({"MATRIX_LR": 0.07}, 1.01)]
    state = trace(*SPREAD, *repeats)  # #6 repeats #2, #8 repeats #7
    name, reason = choose_builtin(state.records, SCHEMA)
    assert name == "tabu"
    assert "#6 repeats #2" in reason and "#8 repeats #7" in reason


def test_selection_needs_two_repeats_for_tabu() -> None:
    state = trace(*SPREAD, ({"WARMDOWN_RATIO": 0.31}, 1.01))
    assert choose_builtin(state.records, SCHEMA)[0] == "bandit"


def test_selection_picks_orthogonal_for_untouched_parameters() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), ({"WARMDOWN_RATIO": 0.3}, 1.01), ({"MATRIX_LR": 0.03}, 1.01))
    name, reason = choose_builtin(state.records, SCHEMA)
    assert name == "orthogonal"
    assert "TOTAL_BATCH_SIZE" in reason and "WINDOW_PATTERN" in reason and "ADAM_BETAS" in reason
    assert choose_builtin([], SCHEMA)[0] == "orthogonal"  # nothing touched yet


def test_selection_ignores_frozen_and_locked_parameters_when_looking_for_untouched_ones() -> None:
    schema = {**SCHEMA, "ADAM_BETAS": {**SCHEMA["ADAM_BETAS"], "locked": True}}
    state = trace(*SPREAD[:3], schema=schema)
    assert choose_builtin(state.records, schema)[0] == "orthogonal"
    assert choose_builtin(state.records, schema, frozen=["WINDOW_PATTERN"])[0] == "bandit"


def test_selection_picks_bandit_when_the_search_is_spread_without_repeats() -> None:
    state = trace(*SPREAD)
    assert choose_builtin(state.records, SCHEMA)[0] == "bandit"


def test_selection_never_returns_an_active_mechanism() -> None:
    repeating = trace(({"MATRIX_LR": 0.05}, 1.01), ({"MATRIX_LR": 0.051}, 1.01), ({"MATRIX_LR": 0.052}, 1.01))
    assert choose_builtin(repeating.records, SCHEMA)[0] == "tabu"
    assert choose_builtin(repeating.records, SCHEMA, active=["tabu"])[0] == "orthogonal"
    assert choose_builtin(repeating.records, SCHEMA, active={"tabu": "builtin", "orthogonal": "builtin"})[0] \
        == "bandit"
    spread = trace(*SPREAD)
    name, reason = choose_builtin(spread.records, SCHEMA, active=("bandit",))
    assert name == "tabu" and "already active" in reason
    # With nothing left, the pick is returned and flagged so the caller can decline it.
    name, reason = choose_builtin(spread.records, SCHEMA, active=list(BUILTINS))
    assert name == "bandit" and reason.startswith("every built-in mechanism is already active")


# --- the registry ----------------------------------------------------------------------------


def test_registry_names_match_each_mechanisms_own_name() -> None:
    assert set(BUILTINS) == {"tabu", "bandit", "orthogonal", "cmaes_hint"}
    for name, cls in BUILTINS.items():
        assert issubclass(cls, Mechanism) and cls.display_name() == name and cls.__doc__
        instance = builtin(name)
        assert type(instance) is cls and instance is not builtin(name)
        paper = name != "cmaes_hint"  # the paper's three steer and veto; the CMA-ES hint only adds a candidate
        hooks = {"on_attach", "shape_prompt", "review_proposal", "observe"} if paper else {"shape_prompt"}
        assert hooks <= set(cls.overridden_hooks())


def test_unknown_builtin_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="tabu, bandit, orthogonal"):
        builtin("annealing")
    with pytest.raises(KeyError):
        builtin("annealing")


def test_importing_mechanisms_does_not_import_core() -> None:
    code = ("import sys, mechanisms, mechanisms.selection\n"
            "loaded = [m for m in sys.modules if m == 'core' or m.startswith('core.')]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=patience(30))
    assert done.returncode == 0, done.stderr
    assert mechanisms.__doc__


async def test_a_builtin_returning_what_the_contract_refuses_is_deactivated_like_a_generated_one() -> None:
    from core.engine.mechanism_host import MechanismHost
    from core.record import events as ev
    from core.record.state import RunState

    class Sloppy(Tabu):
        def shape_prompt(self, state, prompt):
            return {"not": "text"}

    emitted: list = []
    host = MechanismHost(emitted.append, lambda: {}, hook_timeout_s=1.0)
    await host.attach(Sloppy(), RunState(), origin="config")
    assert await host.shape_prompt(RunState(), "prompt", iteration=1) == ""
    off = [e for e in emitted if isinstance(e, ev.MechanismDeactivated)]
    assert off and "shape_prompt returned dict" in off[0].reason and host.names == []


def test_the_contract_refuses_a_str_subclass_from_a_builtin_too() -> None:
    class Sneaky(str):
        pass

    with pytest.raises(ContractError, match="an instance of"):
        check_local("shape_prompt", Sneaky("x"))


def test_tabu_names_a_choice_by_its_value() -> None:
    schema = {"WINDOW_PATTERN": SCHEMA["WINDOW_PATTERN"], "MATRIX_LR": SCHEMA["MATRIX_LR"]}
    state = trace(({"MATRIX_LR": 0.05}, 1.01), schema=schema, frozen=("MATRIX_LR",),
                  frozen_directions={"WINDOW_PATTERN": ["→SL"]}, with_moves=True)
    assert Tabu(tenure=8).alternative(state) == "WINDOW_PATTERN to 'L'"


def test_a_modification_stays_within_max_changes() -> None:
    state = trace(({"MATRIX_LR": 0.05}, 0.99), with_moves=True)
    state.max_changes = 2
    modified = Bandit().review_proposal(state, propose(MATRIX_LR=0.06, TOTAL_BATCH_SIZE=2**18))
    assert isinstance(modified, Modify) and modified.changes.keys() == {"MATRIX_LR", "WARMDOWN_RATIO"}
    state.max_changes = None
    unbounded = Bandit().review_proposal(state, propose(MATRIX_LR=0.06, TOTAL_BATCH_SIZE=2**18))
    assert isinstance(unbounded, Modify) and len(unbounded.changes) == 3

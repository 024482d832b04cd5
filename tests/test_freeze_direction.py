"""Level 1.5's direction freeze (strategy.freeze = "direction"): three failed increases freeze
"up" and leave the decrease open; every proposer and every check respects it."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from core.levels.offline import OfflineProposer, perturb
from core.levels.reply_schemas import proposal_schema
from core.levels.strategy import apply_limits, closing_keys, direction_stats, freeze_candidates
from core.record import config
from core.record import events as ev
from core.record.session import SessionReader
from core.record.state import IterationRecord, fold
from core.services.schema import (closed, direction_of, infer_schema, narrowed, open_directions, step_toward,
                                   validate_changes)
from core.services.script import ParamSpec, ProposalError, TrainScript
from tests.conftest import llm_config, run_engine

TBS = 2**19
LOCKED = ["DEPTH", "ASPECT_RATIO"]


def surrogate_schema(**frozen_directions: tuple[str, ...]) -> dict[str, ParamSpec]:
    script = TrainScript.parse(config.SURROGATE_SCRIPT.read_text())
    schema = infer_schema(script, locked=LOCKED, bounds=config.SURROGATE_BOUNDS)
    return {n: replace(s, frozen_directions=frozen_directions.get(n, ())) for n, s in schema.items()}


def rec(i: int, decision: str, changes: dict, val: float | None, values: dict, best_before: float = 1.0):
    return IterationRecord(iteration=i, decision=decision, changes=changes, hypothesis="", val_bpb=val,
                           best_before=best_before, best_after=None, outcome="ok", reason="", rule="",
                           duration_s=1.0, source="offline", mechanisms={}, values=values)


# --- what a direction is ---------------------------------------------------------------------


def test_numbers_powers_of_two_and_choices_each_have_their_directions():
    schema = surrogate_schema()
    assert direction_of(schema["TOTAL_BATCH_SIZE"], TBS, TBS * 2) == "up"
    assert direction_of(schema["TOTAL_BATCH_SIZE"], TBS, TBS // 2) == "down"
    assert direction_of(schema["MATRIX_LR"], 0.04, 0.03) == "down"
    assert direction_of(schema["WINDOW_PATTERN"], "SSSL", "SL") == "→SL"
    assert direction_of(schema["COMPILE"], True, False) == "→False"
    assert direction_of(schema["ADAM_BETAS"], (0.8, 0.95), (0.9, 0.95)) == ""  # a tuple: no direction
    assert open_directions(schema["TOTAL_BATCH_SIZE"]) == ["up", "down"]
    assert "→SSSL" not in open_directions(schema["WINDOW_PATTERN"])  # the current value is no move


def test_a_frozen_direction_narrows_the_bound_to_the_current_value_and_drops_the_choice():
    schema = surrogate_schema(TOTAL_BATCH_SIZE=("up",), WINDOW_PATTERN=("→SL",))
    tbs = narrowed(schema["TOTAL_BATCH_SIZE"])
    assert (tbs.minimum, tbs.maximum) == (2**16, TBS)
    assert "SL" not in narrowed(schema["WINDOW_PATTERN"]).choices
    assert "SSSL" in narrowed(schema["WINDOW_PATTERN"]).choices
    assert open_directions(schema["TOTAL_BATCH_SIZE"]) == ["down"]
    assert step_toward(schema["TOTAL_BATCH_SIZE"], "down") == TBS // 2
    assert step_toward(schema["TOTAL_BATCH_SIZE"], "up") is None
    at_floor = replace(schema["TOTAL_BATCH_SIZE"], value=2**16)
    assert closed(at_floor)  # "up" frozen and no room down


def test_validation_refuses_a_frozen_direction_with_the_reason_and_allows_the_other():
    schema = surrogate_schema(TOTAL_BATCH_SIZE=("up",), WINDOW_PATTERN=("→SL",))
    with pytest.raises(ProposalError) as exc:
        validate_changes({"TOTAL_BATCH_SIZE": TBS * 2, "WINDOW_PATTERN": "SL"}, schema)
    up, sl = exc.value.errors
    assert "TOTAL_BATCH_SIZE: increase" in up and "frozen by the search strategy" in up and "still open: decrease" in up
    assert "WINDOW_PATTERN: moving to SL" in sl and "frozen" in sl
    assert validate_changes({"TOTAL_BATCH_SIZE": TBS // 2, "WINDOW_PATTERN": "SSL"}, schema) == {
        "TOTAL_BATCH_SIZE": TBS // 2, "WINDOW_PATTERN": "SSL"}


def test_level1_schema_bounds_the_frozen_side_at_the_current_value_and_drops_frozen_choices():
    schema = surrogate_schema(TOTAL_BATCH_SIZE=("up",), WINDOW_PATTERN=("→SL",), MATRIX_LR=("up", "down"),
                              WARMDOWN_RATIO=("up",))
    props = value_schemas(proposal_schema(schema, frozen=()))
    assert props["TOTAL_BATCH_SIZE"]["enum"] == [2**16, 2**17, 2**18]  # only the halvings are left
    assert props["WARMDOWN_RATIO"]["maximum"] == 0.5 and props["WARMDOWN_RATIO"]["minimum"] == 0.2
    assert "SL" not in props["WINDOW_PATTERN"]["enum"] and "L" in props["WINDOW_PATTERN"]["enum"]
    assert "MATRIX_LR" not in props  # both directions frozen: nothing left to propose
    assert "frozen direction(s): up" in schema["TOTAL_BATCH_SIZE"].describe()


def value_schemas(reply_schema: dict) -> dict[str, dict]:
    """Each parameter's value schema in Level 1's reply schema (a list of name/value items)."""
    items = reply_schema["properties"]["changes"]["items"].get("anyOf", [])
    return {i["properties"]["name"]["enum"][0]: i["properties"]["value"] for i in items}


def test_the_offline_proposer_never_proposes_a_frozen_direction():
    schema = surrogate_schema(TOTAL_BATCH_SIZE=("up",), MATRIX_LR=("down",), WINDOW_PATTERN=("→SL", "→L"))
    rng = random.Random(0)
    tbs = [perturb(schema["TOTAL_BATCH_SIZE"], TBS, rng) for _ in range(200)]
    assert set(tbs) == {TBS // 2}  # mirrored away from the frozen increase, never dropped
    lrs = [perturb(schema["MATRIX_LR"], 0.04, rng) for _ in range(200)]
    assert all(v is None or v > 0.04 for v in lrs) and sum(v is not None for v in lrs) > 150
    patterns = {perturb(schema["WINDOW_PATTERN"], "SSSL", rng) for _ in range(200)}
    assert patterns == {"SSSSL", "SSSSSL", "SSL"}
    values = {n: s.value for n, s in schema.items()}
    proposer = OfflineProposer(seed=3)
    for i in range(1, 60):
        changes, _ = proposer.propose(schema, values, set(), i, 1)
        validate_changes(changes, schema)  # never in a frozen direction


def test_classical_clips_a_sampled_frozen_direction_to_the_current_value():
    pytest.importorskip("optuna")
    from core.levels.classical import ClassicalProposer

    schema = surrogate_schema(TOTAL_BATCH_SIZE=("down",), WINDOW_PATTERN=("→L",))
    values = {n: s.value for n, s in schema.items()}
    proposer = ClassicalProposer("sobol", 0)
    seen = set()
    for i in range(1, 25):
        changes, _ = proposer.propose(schema, values, set(), i, 1, [])
        validate_changes(changes, schema)
        seen.add(changes.get("TOTAL_BATCH_SIZE", TBS))
    assert max(seen) > TBS and min(seen) == TBS  # increases sampled, decreases clipped to the current value


# --- the rule -----------------------------------------------------------------------------------


def increases(n: int = 3) -> list[IterationRecord]:
    base = {n: s.value for n, s in surrogate_schema().items()}
    out = [rec(0, "baseline", {}, 1.0, base)]
    for i, size in enumerate((TBS * 2, TBS * 4, TBS * 2)[:n], start=1):
        other = {"MATRIX_LR": 0.05} if i == 3 else {}
        out.append(rec(i, "discard", {"TOTAL_BATCH_SIZE": size, **other}, 1.01, {**base, "TOTAL_BATCH_SIZE": size, **other}))
    return out


def test_three_failed_increases_make_the_increase_a_candidate_not_the_parameter():
    stats = direction_stats(increases(), surrogate_schema())
    assert stats["TOTAL_BATCH_SIZE up"].proposed == 3 and "TOTAL_BATCH_SIZE down" not in stats
    assert stats["MATRIX_LR up"].proposed == 1
    assert freeze_candidates(stats, k=3, locked=LOCKED, frozen=[]) == ["TOTAL_BATCH_SIZE up"]
    assert freeze_candidates(direction_stats(increases(2), surrogate_schema()), k=3, locked=[], frozen=[]) == []
    # frozen already (as a direction, or the whole parameter): no candidate again
    assert freeze_candidates(stats, k=3, locked=[], frozen=["TOTAL_BATCH_SIZE up"]) == []
    assert freeze_candidates(stats, k=3, locked=[], frozen=["TOTAL_BATCH_SIZE"]) == []


def test_directions_are_read_against_the_best_each_change_was_proposed_from():
    base = {n: s.value for n, s in surrogate_schema().items()}
    halved = {**base, "TOTAL_BATCH_SIZE": TBS // 2}
    records = [rec(0, "baseline", {}, 1.0, base),
               rec(1, "keep", {"TOTAL_BATCH_SIZE": TBS // 2}, 0.99, halved),
               # back to the baseline's 2**19 from the kept 2**18: an increase, though it equals the baseline
               rec(2, "discard", {"TOTAL_BATCH_SIZE": TBS}, 1.0, base, best_before=0.99)]
    stats = direction_stats(records, surrogate_schema())
    assert stats["TOTAL_BATCH_SIZE down"].kept == 1 and stats["TOTAL_BATCH_SIZE up"].proposed == 1


def test_limits_freeze_a_direction_and_the_whole_parameter_when_it_closes_the_last_one():
    schema = surrogate_schema()
    current = {**surrogate_schema(), "TOTAL_BATCH_SIZE": replace(schema["TOTAL_BATCH_SIZE"], value=2**16)}
    assert closing_keys(["TOTAL_BATCH_SIZE up", "MATRIX_LR up"], current) == ["TOTAL_BATCH_SIZE up"]
    plan = apply_limits(want_freeze=["TOTAL_BATCH_SIZE up", "MATRIX_LR up"], want_unfreeze=["WARMDOWN_RATIO down"],
                        candidates=["TOTAL_BATCH_SIZE up", "MATRIX_LR up"], schema=schema,
                        frozen=["WARMDOWN_RATIO down"], max_new_freezes=2, min_active=3,
                        closing=["TOTAL_BATCH_SIZE up"])
    assert plan.freeze == ["TOTAL_BATCH_SIZE", "MATRIX_LR up"] and plan.unfreeze == ["WARMDOWN_RATIO down"]
    again = apply_limits(want_freeze=["MATRIX_LR up"], want_unfreeze=["MATRIX_LR down"], candidates=["MATRIX_LR up"],
                         schema=schema, frozen=["MATRIX_LR up"], max_new_freezes=2, min_active=3)
    assert again.refused == {"MATRIX_LR down": "not frozen", "MATRIX_LR up": "already frozen"}


def test_old_logs_without_a_direction_still_decode_and_fold_as_whole_freezes():
    old = b'{"type": "param_frozen", "seq": 3, "ts": 1.0, "name": "LR", "reason": "r", "source": "user"}'
    event = ev.decode(old)
    assert isinstance(event, ev.ParamFrozen) and event.direction == ""
    state = fold([event, ev.ParamFrozen(name="TOTAL_BATCH_SIZE", direction="up", source="strategy"),
                  ev.ParamFrozen(name="WINDOW_PATTERN", direction="→SL", source="strategy"),
                  ev.ParamUnfrozen(name="WINDOW_PATTERN", direction="→SL", source="strategy")])
    assert state.frozen == {"LR"} and state.frozen_directions == {"TOTAL_BATCH_SIZE": {"up"}}
    assert state.param_changes[1].direction == "up"


# --- end to end: the engine, the scripted LLM, the surrogate --------------------------------------


def proposal(changes: dict) -> str:
    return json.dumps({"changes": changes, "hypothesis": "test"})


STRATEGY_ANSWER = {"diagnosis": "larger batches lose", "freeze": [], "unfreeze": [], "keep": {},
                   "guidance": "try smaller batches", "reasoning": "three increases failed"}


async def test_three_failed_increases_freeze_up_and_level1_is_refused_then_halves(tmp_path, scripted_openai):
    inner = iter([proposal({"TOTAL_BATCH_SIZE": TBS * 2}), proposal({"TOTAL_BATCH_SIZE": TBS * 4}),
                  proposal({"TOTAL_BATCH_SIZE": TBS * 2, "MATRIX_LR": 0.05}),
                  proposal({"TOTAL_BATCH_SIZE": TBS * 4, "WARMDOWN_RATIO": 0.6}),  # refused: "up" is frozen
                  proposal({"TOTAL_BATCH_SIZE": TBS // 2})])
    scripted_openai.responder = lambda req: (json.dumps(STRATEGY_ANSWER) if "search strategy" in
                                             req["messages"][0]["content"] else next(inner))
    cfg = llm_config(tmp_path, scripted_openai, **{
        "script.path": "", "script.preset": "surrogate", "data.source": "none", "budget.time_s": 300.0,
        "search.bounds": {n: dict(b) for n, b in config.SURROGATE_BOUNDS.items()}, "search.group": "B",
        "search.outer_period": 3, "strategy.freeze": "direction", "budget.iterations": 4})
    engine, rec = await run_engine(cfg)
    frozen = rec.of(ev.ParamFrozen)
    assert [(e.name, e.direction) for e in frozen] == [("TOTAL_BATCH_SIZE", "up")]
    decision = rec.of(ev.StrategyDecision)[0]
    assert decision.candidates == ["TOTAL_BATCH_SIZE up"] and decision.freeze == ["TOTAL_BATCH_SIZE up"]
    strategy_req = next(r for r in scripted_openai.requests if "search strategy" in r["messages"][0]["content"])
    assert "TOTAL_BATCH_SIZE up" in json.dumps(strategy_req["response_format"])
    refused = [r for r in rec.of(ev.ProposalRejected) if r.iteration == 4]
    assert len(refused) == 1 and "increase from 2**19 is frozen" in refused[0].reason.replace("524288", "2**19")
    inner_reqs = [r for r in scripted_openai.requests if "ML research assistant" in r["messages"][0]["content"]]
    fourth = inner_reqs[3]
    assert "frozen direction(s): up" in fourth["messages"][-1]["content"]
    tbs = value_schemas(fourth["response_format"]["json_schema"]["schema"])["TOTAL_BATCH_SIZE"]
    assert max(tbs["enum"]) < TBS  # the increases are gone from what the model may write
    assert "frozen" in inner_reqs[4]["messages"][-1]["content"]  # the re-ask says why
    last = rec.of(ev.IterationFinished)[-1]
    assert last.iteration == 4 and last.changes.params == {"TOTAL_BATCH_SIZE": TBS // 2}
    assert engine.state.frozen == set() and engine.state.frozen_directions == {"TOTAL_BATCH_SIZE": {"up"}}
    replayed = fold(SessionReader(engine.dir).events())
    assert replayed.frozen_directions == engine.state.frozen_directions


@pytest.mark.slow  # long offline group B runs until directions freeze
async def test_offline_group_b_never_trains_a_direction_after_freezing_it(tmp_path):
    from core.record.config import demo_config
    from core.services.schema import direction_of

    cfg = demo_config(**{"script.preset": "surrogate", "run.sessions_dir": str(tmp_path / "sessions"),
                         "search.group": "B", "search.outer_period": 3, "strategy.freeze": "direction",
                         "budget.iterations": 24, "search.seed": 5})
    engine, rec = await run_engine(cfg)
    schema = surrogate_schema()
    frozen: dict[str, set[str]] = {}
    best = dict(rec.of(ev.IterationFinished)[0].values)
    checked = 0
    for e in rec.events:
        if isinstance(e, ev.ParamFrozen) and e.direction:
            frozen.setdefault(e.name, set()).add(e.direction)
        elif isinstance(e, ev.IterationFinished) and e.iteration > 0 and e.decision != "rejected":
            for name, value in e.changes.params.items():
                assert direction_of(schema[name], best[name], value) not in frozen.get(name, set()), (e.iteration, name)
                checked += frozen.get(name) is not None
            if e.decision == "keep":
                best = dict(e.values)
    assert frozen, "the rule froze no direction in 24 iterations: the test proves nothing"
    # nor did the offline proposer even propose one (validation would have refused it: a re-ask)
    assert not [r.reason for r in rec.of(ev.ProposalRejected) if "frozen by the search strategy" in r.reason]
    assert checked, "no trained change touched a parameter with a frozen direction"
    # a whole freeze under the direction rule is one that closed a parameter's last direction, or a tuple's
    for e in rec.of(ev.ParamFrozen):
        if not e.direction:
            assert "no other direction is open" in e.reason or schema[e.name].kind == "tuple", e.reason


@pytest.mark.slow  # long offline group C runs with every built-in mechanism
async def test_offline_group_c_built_ins_modify_within_open_moves_and_are_never_deactivated(tmp_path):
    from core.record.config import demo_config

    cfg = demo_config(**{"script.preset": "surrogate", "run.sessions_dir": str(tmp_path / "sessions"),
                         "search.group": "C", "strategy.freeze": "direction", "budget.iterations": 24,
                         "search.seed": 2})
    engine, rec = await run_engine(cfg)
    assert {e.name for e in rec.of(ev.MechanismActivated)} >= {"orthogonal", "bandit"}
    assert rec.of(ev.MechanismDeactivated) == []  # a Modify the engine refuses would deactivate its mechanism
    effects = [e for e in rec.of(ev.MechanismEffect) if e.hook == "review_proposal"]
    assert any(e.effect == "modified" for e in effects)
    assert all(e.name == "tabu" for e in effects if e.effect == "vetoed")  # the others ask by Modify
    assert engine.state.status == "completed"

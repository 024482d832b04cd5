"""The CMA-ES hint built-in: a deterministic next point inside the bounds, from the records alone."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("cmaes")

import mechanisms  # noqa: E402
from mechanisms.base import SearchState  # noqa: E402

SCHEMA = {
    "LR": {"kind": "float", "value": 0.04, "locked": False, "minimum": 0.005, "maximum": 0.32, "log_scale": True},
    "BATCH": {"kind": "int", "value": 2**19, "locked": False, "minimum": 2**16, "maximum": 2**21, "pow2": True},
    "WD": {"kind": "float", "value": 0.2, "locked": False, "minimum": 0.0, "maximum": 1.0},
    "DEPTH": {"kind": "int", "value": 8, "locked": True, "minimum": 1, "maximum": 32},
    "MODE": {"kind": "str", "value": "a", "locked": False, "choices": ["a", "b"]},
}
BASE = {n: s["value"] for n, s in SCHEMA.items()}


def state(records, frozen=()):
    return SearchState(iteration=len(records), records=records, schema=SCHEMA, best_values=dict(BASE),
                       best_val_bpb=1.0, baseline_val_bpb=1.0, frozen=list(frozen))


def history(n):
    records = [{"iteration": 0, "decision": "baseline", "val_bpb": 1.0, "values": dict(BASE), "changes": {}}]
    for i in range(1, n + 1):
        values = {**BASE, "LR": 0.04 * (1 + 0.1 * i), "WD": 0.2 + 0.01 * i}
        records.append({"iteration": i, "decision": "discard" if i % 3 else "crash",
                        "val_bpb": 1.0 + 0.001 * i if i % 3 else None, "values": values, "changes": {"LR": values["LR"]}})
    return records


def test_the_hint_is_inside_the_bounds_and_leaves_locked_frozen_and_choice_parameters_alone():
    hint = mechanisms.builtin("cmaes_hint")
    for n in (0, 5, 20):
        point = hint.suggest(state(history(n), frozen=["WD"]))
        assert set(point) <= {"LR", "BATCH"}
        if "LR" in point:
            assert 0.005 <= point["LR"] <= 0.32
        if "BATCH" in point:
            assert point["BATCH"] & (point["BATCH"] - 1) == 0 and 2**16 <= point["BATCH"] <= 2**21


def test_the_same_history_gives_the_same_hint_and_more_history_moves_it():
    a, b = mechanisms.builtin("cmaes_hint"), mechanisms.builtin("cmaes_hint")
    assert a.suggest(state(history(20))) == b.suggest(state(history(20)))
    assert a.suggest(state(history(20))) != a.suggest(state(history(21)))


def test_the_prompt_note_names_cmaes_and_the_point():
    note = mechanisms.builtin("cmaes_hint").shape_prompt(state(history(12)), "")
    assert note.startswith("One candidate to consider: CMA-ES") and "LR=" in note


@pytest.mark.parametrize("group", ["A+cmaes", "C+cmaes"])
def test_a_hybrid_group_whose_proposer_reads_no_prompt_is_refused_with_the_reason(group):
    from core.record import config

    with pytest.raises(config.ConfigError, match=rf"search.group: cmaes_hint only adds text to the Level 1 "
                       rf"prompt.*reads no prompt.*group '{re.escape(group)}' would run as a copy"):
        config.demo_config(**{"search.group": group, "script.preset": "surrogate"})
    with pytest.raises(config.ConfigError, match="search.mechanisms: cmaes_hint only adds text"):
        config.demo_config(**{"search.mechanisms": ["cmaes_hint"], "search.proposer": "tpe"})


async def test_the_hybrid_group_puts_cmaes_next_point_in_every_llm_prompt(tmp_path, scripted_openai):
    from core.record import events as ev
    from core.record.state import fold
    from tests.conftest import llm_config, run_engine

    rates = iter([0.03, 0.05, 0.02])
    scripted_openai.responder = lambda req: json.dumps({"changes": {"LR": next(rates)}, "hypothesis": "a rate"})
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"search.group": "A+cmaes",
                                                                          "budget.iterations": 3}))
    assert engine.state.status == "completed"
    assert any(e.name == "cmaes_hint" for e in rec.of(ev.MechanismActivated))
    hints = [e for e in rec.of(ev.MechanismEffect) if e.name == "cmaes_hint"]
    assert [e.iteration for e in hints] == [1, 2, 3] and all("CMA-ES" in e.detail for e in hints)
    prompts = [r for r in scripted_openai.requests if "ML research assistant" in r["messages"][0]["content"]]
    assert len(prompts) == 3 and all("One candidate to consider: CMA-ES" in json.dumps(r) for r in prompts)
    assert fold(rec.events).records[-1].mechanisms["cmaes_hint"]["shape_prompt"] == 1

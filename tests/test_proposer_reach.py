"""Every Level 1 proposer of the registry can move every editable constant of the workloads we ship.

A constant a proposer can never change splits a group's search space without saying so (a string
without declared choices was once out of every sampler's reach). Editable: what the engine's
schema leaves unlocked for the demo config of each preset.
"""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from core.engine.engine import PROTOCOL_PARAMS
from core.levels.offline import perturb
from core.levels.proposal import change_limit
from core.record import config, registry
from core.services import script_folder
from core.record.registry import load
from core.services.schema import infer_schema, validate_changes
from core.services.script import TrainScript
from core.services.seeds import seed_params
from tests.support.history import Record

SCRIPTS = {"surrogate": config.SURROGATE_SCRIPT, "reference": config.BASELINE_SCRIPT}
POINT_PROPOSERS = [e.name for e in registry.PROPOSERS if not e.prompted]  # the LLM reads the schema as text



def engine_schema(preset: str):
    """The schema the engine builds for ``bilevel run --demo --set script.preset=PRESET`` (Engine._build_schema)."""
    cfg = config.demo_config(**{"script.preset": preset})
    script = TrainScript.parse(SCRIPTS[preset].read_text(encoding="utf-8"))
    wanted = {*cfg.search.locked, *PROTOCOL_PARAMS, *script_folder.measurement_params(script), *seed_params(script)}
    return infer_schema(script, locked={p for p in wanted if p in script.params}, bounds=cfg.search.bounds)


@pytest.mark.parametrize("preset", sorted(SCRIPTS))
def test_every_string_constant_declares_its_choices(preset):
    params = TrainScript.parse(SCRIPTS[preset].read_text(encoding="utf-8")).params
    strings = [p for p in params.values() if p.kind == "str"]
    assert strings and all(p.choices and p.value in p.choices for p in strings), [
        p.name for p in strings if not p.choices]


@pytest.mark.parametrize("preset", sorted(SCRIPTS))
@pytest.mark.parametrize("name", POINT_PROPOSERS)
def test_every_point_proposer_moves_every_editable_constant(preset, name):
    if name != "offline":
        pytest.importorskip("optuna")
    schema = engine_schema(preset)
    editable = {n for n, s in schema.items() if not s.locked}
    assert {"WINDOW_PATTERN", "MATRIX_LR", "TOTAL_BATCH_SIZE", "ADAM_BETAS"} <= editable
    proposer = load(registry.entry("proposer", name))(seed=3)
    limit = change_limit(config.demo_config(**{"script.preset": preset, "search.proposer": name}))
    values = {n: s.value for n, s in schema.items()}
    # every proposal is scored as a discard of a made-up score: reach does not depend on the surface
    history = [Record(0, "baseline", 1.0, dict(values), "baseline")]
    rng = random.Random(0)
    moved: set[str] = set()
    for n in range(1, 61):
        changes, _ = proposer.propose(schema, values, set(), n, 1, history)
        changes = validate_changes(changes, schema, set(), max_changes=limit)  # as Level 1 validates it
        moved |= {k for k, v in changes.items() if v != values[k]}
        history.append(Record(n, "discard", 1.0 + rng.random() / 100, {**values, **changes}, name))
        if moved >= editable:
            break
    assert moved == editable, f"{name} never moved {sorted(editable - moved)} in {n} proposals"


@pytest.mark.parametrize("preset", sorted(SCRIPTS))
def test_the_offline_perturbation_has_a_move_for_every_editable_constant(preset):
    schema = engine_schema(preset)
    rng = random.Random(1)
    stuck = [n for n, s in schema.items() if not s.locked
             and all(perturb(replace(s), s.value, rng) in (None, s.value) for _ in range(20))]
    assert stuck == []

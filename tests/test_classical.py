"""Classical Level 1 proposers (TPE, CMA-ES, Sobol): the schema's bounds, scales, locks and frozen set, and seeds."""
from __future__ import annotations

from dataclasses import replace

import pytest

import baseline.surrogate as surrogate
from core.record.change import params_change
from core.levels.classical import SAMPLERS, ClassicalProposer, dimensions
from core.record import config
from core.services.schema import infer_schema, validate_changes
from core.services.script import TrainScript
from tests.support.history import Record

pytest.importorskip("optuna")

LOCKED = {"DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "DEVICE", "COMPILE",
          "NOISE_SIGMA", "SURFACE"}
BOUNDS = config.SURROGATE_BOUNDS  # WINDOW_PATTERN's choices are the script's own



def schema(**extra_bounds):
    script = TrainScript.parse(config.SURROGATE_SCRIPT.read_text())
    return infer_schema(script, locked=LOCKED, bounds={**BOUNDS, **extra_bounds})


def search(kind: str, seed: int, iterations: int, *, frozen=frozenset(), stop_after=None, proposer=None,
           history=None):
    """A greedy Level 1 loop on the surrogate, validated like the engine validates; returns (history, proposer)."""
    base_schema = schema()
    if history is None:
        values = {n: s.value for n, s in base_schema.items()}
        history = [Record(0, "baseline", surrogate.val_bpb(values, seed), dict(values), "baseline")]
    proposer = proposer or ClassicalProposer(kind, seed)
    best = next(r for r in reversed(history) if r.decision in ("baseline", "keep"))
    start = history[-1].iteration + 1
    for n in range(start, iterations + 1):
        if stop_after is not None and n > stop_after:
            break
        current = {k: replace(s, value=best.values[k]) for k, s in base_schema.items()}
        changes, _ = proposer.propose(current, best.values, set(frozen), n, 1, history)
        changes = validate_changes(changes, current, set(frozen))  # every classical proposal is valid
        candidate = {**best.values, **changes}
        try:
            score, decision = surrogate.val_bpb(candidate, seed), None
            decision = "keep" if score < best.val_bpb else "discard"
        except (surrogate.SurrogateCrash, surrogate.SurrogateConfigError):
            score, decision = None, "crash"
        history.append(Record(n, decision, score, candidate, kind, params_change(changes)))
        if decision == "keep":
            best = history[-1]
    return history, proposer


@pytest.mark.parametrize("kind", SAMPLERS)
def test_proposals_stay_inside_the_bounds_and_scales_of_the_schema(kind):
    history, _ = search(kind, seed=3, iterations=20)
    spec = schema()
    for r in history[1:]:
        assert r.changes.params, f"#{r.iteration}: an empty proposal"
        for name, value in r.changes.params.items():
            s = spec[name]
            if s.pow2:
                assert value & (value - 1) == 0 and s.minimum <= value <= s.maximum
            elif s.kind == "float":
                assert s.minimum <= value <= s.maximum
            elif s.choices:
                assert value in s.choices
    # every searchable kind is sampled: log-scale rates, powers of two, choices and the betas tuple
    touched = {k for r in history[1:] for k in r.changes.params}
    assert {"MATRIX_LR", "TOTAL_BATCH_SIZE", "WINDOW_PATTERN", "ADAM_BETAS"} <= touched


def test_log_scale_parameters_are_sampled_on_a_log_scale():
    dims = {d.param: d for d in dimensions(schema(), set())}
    assert dims["MATRIX_LR"].distribution.log and not dims["WARMDOWN_RATIO"].distribution.log
    assert dims["TOTAL_BATCH_SIZE"].how == "pow2" and (dims["TOTAL_BATCH_SIZE"].distribution.low,
                                                       dims["TOTAL_BATCH_SIZE"].distribution.high) == (16, 21)
    history, _ = search("sobol", seed=0, iterations=24)
    lrs = [r.values["MATRIX_LR"] for r in history[1:]]
    below = sum(lr < 0.04 for lr in lrs)  # the reference is the geometric midpoint of 0.005 … 0.32
    assert 6 <= below <= 18


@pytest.mark.parametrize("kind", SAMPLERS)
def test_locked_and_frozen_parameters_are_never_proposed(kind):
    frozen = {"MATRIX_LR", "TOTAL_BATCH_SIZE"}
    history, _ = search(kind, seed=1, iterations=12, frozen=frozen)
    for r in history[1:]:
        assert not (set(r.changes.params) & (frozen | LOCKED)), r.changes
        assert r.values["MATRIX_LR"] == 0.04 and r.values["TOTAL_BATCH_SIZE"] == 2**19


@pytest.mark.parametrize("kind", SAMPLERS)
def test_the_same_seed_proposes_the_same_points_and_another_seed_does_not(kind):
    a, _ = search(kind, seed=5, iterations=12)
    b, _ = search(kind, seed=5, iterations=12)
    c, _ = search(kind, seed=6, iterations=12)
    assert [r.changes for r in a] == [r.changes for r in b]
    assert [r.changes for r in a] != [r.changes for r in c]


@pytest.mark.parametrize("kind", SAMPLERS)
def test_a_rebuilt_study_continues_exactly_where_the_first_one_stopped(kind):
    whole, _ = search(kind, seed=2, iterations=14)
    first, _ = search(kind, seed=2, iterations=14, stop_after=8)
    fresh = ClassicalProposer(kind, 2)  # a resumed process: the study is rebuilt from the records
    resumed, proposer = search(kind, seed=2, iterations=14, proposer=fresh, history=first)
    assert proposer.replayed == 8 and proposer.diverged == []
    assert [r.changes for r in resumed] == [r.changes for r in whole]


def test_a_crash_is_told_as_worse_than_anything_seen():
    history, proposer = search("tpe", seed=4, iterations=10)
    told = {t.user_attrs["iteration"]: t for t in proposer.study.trials if "iteration" in t.user_attrs}
    worst = max(r.val_bpb for r in history if r.val_bpb is not None)
    for r in history[1:-1]:  # the last iteration is told when the next proposal is asked for
        if r.decision == "crash":
            assert told[r.iteration].value > worst
        else:
            assert told[r.iteration].value == r.val_bpb


def test_a_classical_group_refuses_level_2():
    with pytest.raises(config.ConfigError, match="classical sampler"):
        config.demo_config(**{"search.group": "tpe", "search.levels": ["inner", "research"]})
    assert config.demo_config(**{"search.group": "tpe"}).search.sampler == "tpe"
    assert config.canonical_group("TPE") == "tpe" and config.canonical_group("c+CMAES") == "C+cmaes"
    llm = {"endpoint.provider": "openai", "endpoint.base_url": "http://127.0.0.1:9/v1", "endpoint.model": "m"}
    assert config.demo_config(**{"search.group": "C+cmaes", **llm}).search.active_mechanisms == ("cmaes_hint",)


@pytest.mark.slow  # twenty 30-iteration searches on the surrogate
def test_on_the_surrogate_tpe_beats_quasi_random_search_at_n_10_and_30_iterations():
    """The bench discriminates: a property of the surrogate with fixed seeds (if it fails, fix the surrogate)."""
    from core.analysis.stats import permutation_pvalue

    def delta(kind: str, seed: int) -> float:
        history, _ = search(kind, seed=seed, iterations=30)
        best = min(r.val_bpb for r in history if r.decision in ("baseline", "keep"))
        return best - history[0].val_bpb

    tpe = [delta("tpe", s) for s in range(10)]
    sobol = [delta("sobol", s) for s in range(10)]
    assert sum(tpe) / 10 < sum(sobol) / 10
    assert permutation_pvalue(tpe, sobol, random_state=0) < 0.05


async def test_a_classical_group_trains_its_whole_points_on_the_surrogate(tmp_path):
    """search.max_changes is the LLM's one-hypothesis limit: a sampler's full point is trained, never refused."""
    from core.engine.engine import Engine
    from core.record import events as ev
    from tests.conftest import Recorder

    cfg = config.demo_config(**{"script.preset": "surrogate", "search.group": "tpe", "budget.iterations": 3,
                                "run.sessions_dir": str(tmp_path), "audit.enabled": False})
    engine = Engine.create(cfg)
    rec = Recorder()
    engine.subscribe(rec)
    state = await engine.run()
    assert not rec.of(ev.ProposalRejected)
    trained = [r for r in state.records if r.iteration > 0]
    assert [r.decision in ("keep", "discard", "crash") for r in trained] == [True] * 3
    assert all(len(r.changes.params) > cfg.search.max_changes for r in trained)  # whole points

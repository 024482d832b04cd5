"""The mechanism pre-screen: paired surrogate searches with and without a validated mechanism, before activation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from core.engine.paired import bootstrap_ci, paired_effect, sign_flip_p
from core.record import events as ev
from core.record.config import SURROGATE_BOUNDS, Level2Config
from core.engine.engine import Engine
from tests.conftest import Recorder, fast_config, llm_config, run_engine
from tests.support import ScriptedOpenAI
from tests.test_research import Scripted, module_reply  # noqa: F401 (the same scripted dialogue)

FIXTURES = Path(__file__).parent / "fixtures" / "mechanisms"
HARMFUL = (FIXTURES / "no_smaller_batch.py").read_text()
TABU = (FIXTURES / "tabu_memory.py").read_text()


class SurrogateScripted(Scripted):
    """The research dialogue of tests/test_research.py; Level 1 proposes a new matrix rate each time."""

    proposals = 0

    def __call__(self, req: dict):
        if "ML research assistant" in req["messages"][0]["content"]:
            self.proposals += 1
            return json.dumps({"changes": {"MATRIX_LR": round(0.03 + 0.001 * self.proposals, 4)},
                               "hypothesis": "another matrix rate"})
        return super().__call__(req)


def surrogate_research_config(tmp_path, server, **kw):
    # room for the research and its pre-screen to finish: the run is stopped once the verdict is in
    return llm_config(tmp_path, server, **{
        "script.path": "", "script.preset": "surrogate", "budget.time_s": 300.0, "search.group": "D",
        "search.outer_period": 1, "search.research_period": 1, "budget.iterations": 45,
        "search.bounds": {n: dict(b) for n, b in SURROGATE_BOUNDS.items()}, "level2.import_timeout_s": 20.0, **kw})


async def run_until_research_finished(cfg):
    """Run until the first research is finished (and one iteration after an activation), then stop."""
    engine = Engine.create(cfg)
    rec = Recorder()
    engine.subscribe(rec)
    activated = []

    def stopper(e):
        if isinstance(e, ev.ResearchFinished):
            if e.outcome != "activated":
                engine.request_stop("the test has its verdict")
            activated.append(e)
        elif isinstance(e, ev.IterationFinished) and activated:
            engine.request_stop("the test has its verdict")
    engine.subscribe(stopper)
    await engine.run()
    return engine, rec


def test_the_paired_interval_and_sign_flip_test_agree_with_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.990, 0.004, 8), rng.normal(0.986, 0.004, 8)
    diffs = list(a - b)
    exact = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                   n_resamples=np.inf, alternative="two-sided")
    assert sign_flip_p(diffs) == pytest.approx(exact.pvalue, abs=1e-9)
    ours = bootstrap_ci(diffs)
    theirs = stats.bootstrap((np.array(diffs),), np.mean, method="percentile", n_resamples=9999,
                             rng=np.random.default_rng(0)).confidence_interval
    width = theirs.high - theirs.low
    assert ours[0] == pytest.approx(theirs.low, abs=0.05 * width)
    assert ours[1] == pytest.approx(theirs.high, abs=0.05 * width)
    effect = paired_effect(a, b)
    assert effect.mean == pytest.approx(float(np.mean(a - b))) and effect.ci_low < effect.mean < effect.ci_high


def test_identical_pairs_have_no_effect_and_p_one():
    effect = paired_effect([0.99, 0.98, 0.97], [0.99, 0.98, 0.97])
    assert (effect.mean, effect.ci_low, effect.ci_high, effect.p_value) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.slow  # the default pre-screen: 10 x 20 searches each way, a sandboxed worker per search
async def test_the_gate_refuses_a_mechanism_that_vetoes_every_smaller_batch_with_its_figure(tmp_path):
    # the default size (10 x 20) and the session's seed fix every bench search: the verdict is the
    # same on every run (bench/bench_prescreen_power.py: refused on 8 of 8 session seeds; 5 x 12 on 5)
    assert (Level2Config().prescreen_repeats, Level2Config().prescreen_iterations) == (10, 20)
    with ScriptedOpenAI(responder=SurrogateScripted([HARMFUL])) as server:
        engine, rec = await run_until_research_finished(surrogate_research_config(tmp_path, server, **{
            "search.locked": ["DEPTH", "ASPECT_RATIO"], "search.seed": 0}))
    started, = rec.of(ev.PrescreenStarted)
    screened, = rec.of(ev.MechanismPrescreened)
    assert started.proposer == screened.proposer == "offline" and started.mode == "gate"
    assert screened.verdict == "harmful" and screened.name == "NoSmallerBatch"  # its class, as validated
    assert screened.ci_low > 0 and screened.effect > 0, "the whole CI is harm: worse final best with it"
    assert screened.repeats == 10 and screened.iterations == 20 and len(screened.with_best) == 10
    assert screened.side_effects["vetoed"] > 0, "its vetoes happened in the bench, in its own worker"
    assert screened.source_key and screened.workload == "surrogate h100"
    finished = [f for f in rec.of(ev.ResearchFinished) if f.name == screened.name]
    assert [f.outcome for f in finished][:1] == ["rejected"]
    assert "pre-screen" in finished[0].reason and f"{screened.ci_low:+.4f}" in finished[0].reason
    assert not rec.of(ev.MechanismActivated), "a harmful mechanism never touches the live run"
    # the bench trained nothing on the session's slots: only the session's own iterations ran
    assert len(rec.of(ev.TrainingStarted)) == len({t.iteration for t in rec.of(ev.TrainingStarted)})
    assert engine.state.prescreens[screened.research_id] == screened


async def test_report_mode_records_the_harm_and_activates_it_anyway(tmp_path):
    with ScriptedOpenAI(responder=SurrogateScripted([HARMFUL])) as server:
        _, rec = await run_until_research_finished(surrogate_research_config(tmp_path, server, **{"level2.prescreen": "report",
                                                                                 "level2.prescreen_repeats": 3,
                                                                                 "level2.prescreen_iterations": 6}))
    screened, = rec.of(ev.MechanismPrescreened)
    assert screened.mode == "report" and screened.repeats == 3
    assert [a.name for a in rec.of(ev.MechanismActivated)] == ["no_smaller_batch"]


@pytest.mark.slow  # the default pre-screen, as above
async def test_a_tabu_on_repeated_proposals_passes_the_gate_and_is_activated(tmp_path):
    with ScriptedOpenAI(responder=SurrogateScripted([TABU])) as server:
        _, rec = await run_until_research_finished(surrogate_research_config(tmp_path, server, **{"search.seed": 0}))
    screened, = rec.of(ev.MechanismPrescreened)
    assert screened.verdict == "passed" and not screened.ci_low > 0
    assert (screened.repeats, screened.iterations) == (10, 20)
    assert f"{screened.ci_low:+.4f} to {screened.ci_high:+.4f}" in screened.reason
    assert [a.name for a in rec.of(ev.MechanismActivated)] == ["tabu_memory"]
    assert [f.outcome for f in rec.of(ev.ResearchFinished)][:1] == ["activated"]


async def test_prescreen_off_records_nothing(tmp_path):
    with ScriptedOpenAI(responder=SurrogateScripted([HARMFUL])) as server:
        _, rec = await run_until_research_finished(surrogate_research_config(tmp_path, server, **{"level2.prescreen": "off"}))
    assert not rec.of(ev.MechanismPrescreened) and rec.of(ev.MechanismActivated)


async def test_a_script_the_surrogate_does_not_model_is_skipped_and_never_gated(tmp_path):
    cfg = fast_config(tmp_path, **{"search.group": "C", "search.outer_period": 1, "search.research_period": 1,
                                   "budget.iterations": 2})
    _, rec = await run_engine(cfg)
    screened = rec.of(ev.MechanismPrescreened)
    assert screened and {s.verdict for s in screened} == {"skipped"}
    assert "LR" in screened[0].unmodelled and "does not model" in screened[0].reason
    assert rec.of(ev.MechanismActivated)

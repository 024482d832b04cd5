"""Level 2 against the scripted server: generated mechanisms that really run, and every failure path."""
from __future__ import annotations

import itertools
import json
import textwrap

import pytest

from core.record import commands as cmds
from core.record import events as ev
from tests.support.patience import patience
from tests.conftest import llm_config, run_engine
from tests.support import Reply, ScriptedOpenAI

GOOD_TABU = textwrap.dedent('''
    from mechanisms.base import Mechanism, Veto


    class GeneratedTabu(Mechanism):
        """Vetoes a proposal whose changes repeat an iteration already tried."""

        name = "generated_tabu"

        def review_proposal(self, state, proposal):
            for r in state.records:
                if r["changes"] and r["changes"] == proposal["changes"]:
                    return Veto(f"iteration #{r['iteration']} already tried {proposal['changes']}")
            return None
''')


def module_reply(source: str) -> str:
    return f"Here is the mechanism.\n```python\n{source}\n```\n"


class Scripted:
    """Dispatches on the level and round of each request, like a real model would see them."""

    def __init__(self, generate: list[str], research_delay_s: float = 0.0,
                 strategy: dict | None = None) -> None:
        self.generate = list(generate)
        self.research_delay_s = research_delay_s
        self.strategy = strategy or {"diagnosis": "LR is stuck", "freeze": [], "unfreeze": [],
                                     "guidance": "try the warmdown", "reasoning": "evidence"}
        self.vetoes = 0

    def __call__(self, req: dict) -> Reply | str:
        system = req["messages"][0]["content"]
        last = req["messages"][-1]["content"]
        if "ML research assistant" in system:
            if "vetoed by" in last or "exact repeat of iteration" in last:  # it takes the feedback
                self.vetoes += 1
                return json.dumps({"changes": {"LR": round(0.02 + 0.001 * self.vetoes, 4)},
                                   "hypothesis": "a new region"})
            return json.dumps({"changes": {"LR": 0.06}, "hypothesis": "higher LR"})
        if "search strategy" in system:
            return json.dumps(self.strategy)
        delay = self.research_delay_s
        if "Critique each candidate" in last:
            return Reply(content=json.dumps({"scores": {"tabu": 9, "bandit": 5}, "selected": "tabu",
                                             "reason": "the proposer repeats itself"}), delay_s=delay)
        if "Write the mechanism" in last or "failed validation" in last:
            return Reply(content=module_reply(self.generate.pop(0)), delay_s=delay)
        if "Specify the selected" in last:
            return Reply(content="class GeneratedTabu; overrides review_proposal", delay_s=delay)
        return Reply(content="1. tabu search 2. UCB bandit 3. orthogonal arrays", delay_s=delay)


def research_config(tmp_path, server, **kw):
    return llm_config(tmp_path, server, **{"search.group": "D", "search.outer_period": 1,
                                           "search.research_period": 1, "budget.iterations": 5,
                                           "level2.import_timeout_s": 20.0, **kw})


async def test_generated_tabu_vetoes_a_repeat_and_the_next_proposal_differs(tmp_path):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        engine, rec = await run_engine(research_config(tmp_path, server))
    activated = rec.of(ev.MechanismActivated)
    assert [a.name for a in activated] == ["generated_tabu"] and activated[0].origin == "generated"
    vetoes = [e for e in rec.of(ev.MechanismEffect) if e.effect == "vetoed"]
    assert vetoes, "the active mechanism never vetoed the repeated proposal"
    veto = vetoes[0]
    same_iteration = [p for p in rec.of(ev.ProposalMade) if p.iteration == veto.iteration]
    assert same_iteration[0].changes.params == {"LR": 0.06} and same_iteration[-1].changes.params != {"LR": 0.06}
    counted = [e.mechanisms for e in rec.of(ev.IterationFinished) if e.mechanisms]
    assert counted and counted[-1]["generated_tabu"]["review_proposal"] > 0
    report = (engine.dir / rec.of(ev.MechanismValidated)[0].report).read_text()
    assert "dry" in report.lower()
    for round_ in ("explore", "critique", "specify", "generate"):
        assert round_ in [r.round for r in rec.of(ev.ResearchRound)]
    deltas = [d for d in rec.of(ev.LLMDelta) if d.level == "research"]
    assert deltas, "research rounds are streamed token by token"


async def test_without_the_mechanism_the_same_proposal_repeats_and_is_rejected_as_a_repeat(tmp_path):
    with ScriptedOpenAI(responder=Scripted([])) as server:
        _, rec = await run_engine(llm_config(tmp_path, server, **{"budget.iterations": 4}))
    made = [p.changes.params for p in rec.of(ev.ProposalMade)]
    assert made.count({"LR": 0.06}) == 4  # the model repeats itself every iteration...
    repeats = [r for r in rec.of(ev.ProposalRejected) if r.kind == "repeat"]
    assert len(repeats) == 3 and all("repeat of iteration 1" in r.reason for r in repeats)
    trained = [f.changes.params for f in rec.of(ev.IterationFinished) if f.iteration]
    assert trained.count({"LR": 0.06}) == 1  # ...but a discarded experiment is trained only once


BAD_MODULES = {
    "syntax": "class Broken(Mechanism:\n    pass\n",
    "policy": "import subprocess\nfrom mechanisms.base import Mechanism\n\nclass P(Mechanism):\n"
              "    def observe(self, state, result):\n        subprocess.run(['true'])\n",
    "missing_package": "import sklearn_not_installed_xyz\nfrom mechanisms.base import Mechanism\n\n"
                       "class M(Mechanism):\n    pass\n",
    "hook_raises": "from mechanisms.base import Mechanism\n\nclass R(Mechanism):\n"
                   "    def shape_prompt(self, state, prompt):\n        raise RuntimeError('boom')\n",
    "hook_hangs": "from mechanisms.base import Mechanism\n\nclass H(Mechanism):\n"
                  "    def observe(self, state, result):\n        while True:\n            pass\n",
    "garbage_review": "from mechanisms.base import Mechanism\n\nclass G(Mechanism):\n"
                      "    def review_proposal(self, state, proposal):\n        return 42\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_MODULES))
async def test_each_broken_mechanism_is_rejected_with_a_reason_and_the_loop_completes(tmp_path, kind):
    with ScriptedOpenAI(responder=Scripted([BAD_MODULES[kind]])) as server:
        engine, rec = await run_engine(research_config(
            tmp_path, server, **{"level2.max_repairs": 0, "level2.hook_timeout_s": 0.5,
                                 "level2.import_timeout_s": 10.0, "budget.iterations": 3}))
    validated = rec.of(ev.MechanismValidated)
    assert validated and not validated[0].ok and validated[0].failure
    if kind == "missing_package":
        assert validated[0].missing_packages == ["sklearn_not_installed_xyz"]
    finished = rec.of(ev.ResearchFinished)
    assert finished[0].outcome == "rejected" and finished[0].reason
    assert not rec.of(ev.MechanismActivated)
    assert engine.state.status == "completed" and engine.state.next_iteration == 4


async def test_a_failed_validation_goes_back_to_the_llm_for_repair(tmp_path):
    with ScriptedOpenAI(responder=Scripted([BAD_MODULES["syntax"], GOOD_TABU])) as server:
        _, rec = await run_engine(research_config(tmp_path, server))
    first = rec.of(ev.ResearchStarted)[0].research_id
    attempts = [(v.attempt, v.ok) for v in rec.of(ev.MechanismValidated) if v.research_id == first]
    assert attempts == [(1, False), (2, True)]
    rounds = [r.round for r in rec.of(ev.ResearchRound) if r.research_id == first]
    assert rounds == ["explore", "critique", "specify", "generate", "repair"]
    assert rec.of(ev.MechanismActivated)


async def test_each_repair_reply_keeps_its_own_artifact(tmp_path):
    with ScriptedOpenAI(responder=Scripted([BAD_MODULES["syntax"], BAD_MODULES["syntax"], GOOD_TABU])) as server:
        engine, rec = await run_engine(research_config(tmp_path, server, **{"level2.max_repairs": 2}))
    first = rec.of(ev.ResearchStarted)[0].research_id
    repairs = [r.artifact for r in rec.of(ev.ResearchRound) if r.research_id == first and r.round == "repair"]
    assert len(repairs) == 2 and len(set(repairs)) == 2
    assert all((engine.dir / a).read_text() for a in repairs)


class CritiqueFirstWrong(Scripted):
    """Answers the critique round first with a Level 1 proposal, then properly when told why."""

    def __call__(self, req: dict) -> Reply | str:
        last = req["messages"][-1]["content"]
        if "Critique each candidate" in last:
            return json.dumps({"changes": {"LR": 0.05}, "hypothesis": "wrong level"})
        if "could not be used" in last and "selected" in last:
            return json.dumps({"scores": {"tabu": 9}, "selected": "tabu", "reason": "repeats"})
        return super().__call__(req)


async def test_a_critique_reply_without_a_selection_is_rejected_and_reasked(tmp_path):
    with ScriptedOpenAI(responder=CritiqueFirstWrong([GOOD_TABU])) as server:
        _, rec = await run_engine(research_config(tmp_path, server))
    rejected = [r for r in rec.of(ev.ReplyRejected) if r.purpose == "critique"]
    assert rejected and "Level 1 proposal" in rejected[0].reason
    critique_calls = [r for r in server.requests if r["messages"][-1]["content"].startswith(
        ("Critique each candidate", "Your answer could not be used"))]
    assert critique_calls[0]["response_format"]["type"] == "json_schema"
    assert rec.of(ev.MechanismActivated)  # the re-asked selection went on to a mechanism


EXPLORED = ["Tabu memory", "UCB bandit", "Orthogonal sweep"]


class CritiqueOutsider(Scripted):
    """Names its candidates after exploring, then selects one it never proposed (``outsider_replies`` times)."""

    def __init__(self, generate: list[str], outsider_replies: int) -> None:
        super().__init__(generate)
        self.outsider_replies = outsider_replies

    def __call__(self, req: dict) -> Reply | str:
        last = req["messages"][-1]["content"]
        if "candidate mechanisms, each named" in last:
            return "Tabu memory vetoes repeats; a bandit spreads effort.\n**Candidates:** " + "; ".join(EXPLORED)
        if last.startswith(("Critique each candidate", "Your answer could not be used")):
            if self.outsider_replies > 0:
                self.outsider_replies -= 1
                return json.dumps({"scores": {"Simulated annealing": 9}, "selected": "Simulated annealing",
                                   "reason": "cools down"})
            return json.dumps({"scores": {"Tabu memory": 9}, "selected": "tabu  memory", "reason": "repeats"})
        return super().__call__(req)


def critique_requests(server) -> list[dict]:
    return [r for r in server.requests if r["messages"][-1]["content"].startswith(
        ("Critique each candidate", "Your answer could not be used"))]


async def test_a_critique_selecting_no_explored_candidate_is_rejected_and_reasked(tmp_path):
    with ScriptedOpenAI(responder=CritiqueOutsider([GOOD_TABU], outsider_replies=1)) as server:
        _, rec = await run_engine(research_config(tmp_path, server))
    first = rec.of(ev.ResearchStarted)[0].research_id
    calls = critique_requests(server)
    # Every critique call, the re-ask included, constrains "selected" to the explored names.
    for call in calls[:2]:
        assert call["response_format"]["type"] == "json_schema"
        assert call["response_format"]["json_schema"]["schema"]["properties"]["selected"] == {"enum": EXPLORED}
    assert "select one of: Tabu memory; UCB bandit; Orthogonal sweep" in calls[0]["messages"][-1]["content"]
    rejected = [r for r in rec.of(ev.ReplyRejected) if r.purpose == "critique"]
    assert len(rejected) >= 1 and "'Simulated annealing', which is not one of the candidates" in rejected[0].reason
    assert "Tabu memory; UCB bandit" in calls[1]["messages"][-1]["content"]  # the re-ask says which names
    specify = [r for r in server.requests if r["messages"][-1]["content"].startswith("Specify the selected")]
    assert 'mechanism "Tabu memory"' in specify[0]["messages"][-1]["content"]  # the candidate's own spelling
    assert [r.round for r in rec.of(ev.ResearchRound) if r.research_id == first][:4] == [
        "explore", "critique", "critique", "specify"]
    assert rec.of(ev.MechanismActivated)


async def test_a_critique_that_keeps_selecting_an_outsider_fails_the_research_after_its_reasks(tmp_path):
    with ScriptedOpenAI(responder=CritiqueOutsider([GOOD_TABU], outsider_replies=1000)) as server:
        engine, rec = await run_engine(research_config(tmp_path, server, **{"search.max_reasks": 1,
                                                                            "budget.iterations": 2}))
    first = rec.of(ev.ResearchStarted)[0].research_id
    rounds = [r.round for r in rec.of(ev.ResearchRound) if r.research_id == first]
    assert rounds == ["explore", "critique", "critique"]  # one re-ask, then it stops
    finished = [f for f in rec.of(ev.ResearchFinished) if f.research_id == first]
    assert finished[0].outcome == "failed" and "after 2 attempt(s)" in finished[0].reason
    assert "not one of the candidates" in finished[0].reason
    assert not rec.of(ev.MechanismActivated) and engine.state.status == "completed"


RUNTIME_FAILURES = {
    # Each passes the dry run on the short trace it sees, then fails later in the real run:
    # (hook, body, what the deactivation reason must say).
    "raises": ("observe", "    def observe(self, state, result):\n"
                          "        if len(state.records) >= 4:\n            raise ValueError('late failure')\n",
               "ValueError: late failure"),
    "hangs": ("review_proposal", "    def review_proposal(self, state, proposal):\n"
                                 "        while len(state.records) >= 4:\n            pass\n        return None\n",
                "did not finish within 0.5 s; the worker was killed"),
    "garbage": ("review_proposal", "    def review_proposal(self, state, proposal):\n"
                                   "        return None if len(state.records) < 4 else 'yes'\n",
                 "it must return None, Veto(reason) or Modify(changes)"),
}


@pytest.mark.parametrize("kind", sorted(RUNTIME_FAILURES))
async def test_a_mechanism_failing_at_run_time_is_deactivated_and_the_loop_goes_on(tmp_path, kind):
    hook, body, said = RUNTIME_FAILURES[kind]
    source = f"from mechanisms.base import Mechanism\n\nclass Late(Mechanism):\n{body}"
    with ScriptedOpenAI(responder=Scripted([source])) as server:
        engine, rec = await run_engine(research_config(
            tmp_path, server, **{"level2.hook_timeout_s": 0.5, "budget.iterations": 7}))
    assert rec.of(ev.MechanismActivated), [e.failure for e in rec.of(ev.MechanismValidated)]
    off = rec.of(ev.MechanismDeactivated)
    assert off and off[0].name == "Late" and off[0].hook == hook and said in off[0].reason
    assert engine.state.status == "completed" and engine.state.mechanisms == {}


async def test_level2_runs_concurrently_without_delaying_inner_iterations(tmp_path):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU], research_delay_s=2.0)) as server:
        _, rec = await run_engine(research_config(tmp_path, server, **{"budget.iterations": 12}))
    started = rec.of(ev.ResearchStarted)[0]
    done = [e for e in rec.of(ev.ResearchFinished)][0]
    assert done.ts - started.ts >= 8.0  # four rounds of at least 2 s each
    starts = [e.ts for e in rec.of(ev.IterationStarted)]
    during = [b - a for a, b in zip(starts, starts[1:]) if started.ts <= a <= done.ts]
    assert len(during) >= 3, "the inner loop should have kept iterating while research ran"
    assert max(during) < 1.5, f"an inner iteration waited for Level 2: gaps {during}"


@pytest.mark.slow
async def test_full_group_c_run_on_the_cpu_preset(tmp_path):
    """Baseline + 10 iterations on the real workload: Level 1.5 twice, Level 2 once."""
    from core.record import config

    scripted = Scripted([GOOD_TABU])
    # Cycled: frozen parameters and exact repeats are rejected and re-asked, which takes more replies.
    proposals = itertools.cycle([{"MATRIX_LR": 0.05}, {"WARMDOWN_RATIO": 0.4}, {"MATRIX_LR": 0.03}, {"SCALAR_LR": 0.4},
                      {"MATRIX_LR": 0.06}, {"WINDOW_PATTERN": "SL"}, {"MATRIX_LR": 0.035}, {"EMBEDDING_LR": 0.5},
                      {"MATRIX_LR": 0.045}, {"WARMUP_RATIO": 0.05}, {"FINAL_LR_FRAC": 0.1}, {"SCALAR_LR": 0.6}])

    def responder(req: dict):
        if "ML research assistant" in req["messages"][0]["content"]:
            return json.dumps({"changes": next(proposals), "hypothesis": "scripted"})
        return scripted(req)

    with ScriptedOpenAI(responder=responder) as server:
        cfg = config.demo_config(**{
            "endpoint.provider": "openai", "endpoint.base_url": server.base_url, "endpoint.model": "test-model",
            # Level 2 at cycle 1 (after #5); cycle 2 ends the run, where a new mechanism could not run.
            "search.group": "C", "search.outer_period": 5, "search.research_period": 1,
            "strategy.freeze_after": 2, "budget.iterations": 10, "budget.time_s": 1.0,
            "run.sessions_dir": str(tmp_path / "sessions")})
        engine, rec = await run_engine(cfg)
    assert engine.state.status == "completed"
    assert [e.iteration for e in rec.of(ev.IterationFinished)] == list(range(11))
    assert [d.cycle for d in rec.of(ev.StrategyDecision)] == [1, 2]
    assert [r.after_iteration for r in rec.of(ev.ResearchStarted)] == [5]
    assert rec.of(ev.ResearchFinished)[0].outcome == "activated"
    assert rec.of(ev.MechanismValidated)[0].ok
    ran = [e.mechanisms for e in rec.of(ev.IterationFinished) if e.mechanisms]
    assert ran and ran[-1]["generated_tabu"]["review_proposal"] >= 1  # the mechanism ran in later iterations


async def _approval_run(tmp_path, decision: type[cmds.Command]):
    import asyncio

    from core.engine.engine import Engine
    from tests.conftest import Recorder

    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        cfg = research_config(tmp_path, server, **{"level2.approval": "manual", "budget.iterations": 8})
        engine = Engine.create(cfg)
        rec = Recorder()

        def on_event(e):
            rec(e)
            if isinstance(e, ev.MechanismPending):
                engine.submit(decision(research_id=e.research_id), source="test")
        engine.subscribe(on_event)
        await asyncio.wait_for(engine.run(), patience(120))
    return engine, rec


async def test_manual_approval_waits_for_the_user_then_activates(tmp_path):
    engine, rec = await _approval_run(tmp_path, cmds.ApproveMechanism)
    pending = rec.of(ev.MechanismPending)[0]
    activated = rec.of(ev.MechanismActivated)[0]
    ack = [c for c in rec.of(ev.CommandReceived) if c.command == "approve_mechanism"][0]
    assert ack.ok and pending.seq < ack.seq < activated.seq
    assert (engine.dir / pending.diff).read_text().startswith("---")


async def test_rejected_mechanism_changes_nothing(tmp_path):
    engine, rec = await _approval_run(tmp_path, cmds.RejectMechanism)
    assert rec.of(ev.MechanismPending) and not rec.of(ev.MechanismActivated)
    assert rec.of(ev.ResearchFinished)[0].outcome == "declined"


async def test_builtin_mechanisms_can_be_enabled_from_the_config(tmp_path):
    from tests.conftest import fast_config

    engine, rec = await run_engine(fast_config(tmp_path, **{"search.mechanisms": ["bandit", "tabu"],
                                                            "budget.iterations": 3}))
    assert [(a.name, a.origin) for a in rec.of(ev.MechanismActivated)] == [("bandit", "config"), ("tabu", "config")]
    counts = rec.of(ev.IterationFinished)[-1].mechanisms
    assert counts["bandit"]["shape_prompt"] >= 1 and counts["tabu"]["review_proposal"] >= 1


async def test_offline_manual_approval_shows_the_builtin_and_waits(tmp_path):
    import asyncio

    from core.engine.engine import Engine
    from tests.conftest import Recorder, fast_config

    cfg = fast_config(tmp_path, **{"search.group": "D", "search.outer_period": 1, "search.research_period": 1,
                                   "level2.approval": "manual", "budget.iterations": 4})
    engine = Engine.create(cfg)
    rec = Recorder()

    def on_event(e):
        rec(e)
        if isinstance(e, ev.MechanismPending):
            engine.submit(cmds.ApproveMechanism(research_id=e.research_id))
    engine.subscribe(on_event)
    await asyncio.wait_for(engine.run(), patience(60))
    pending = rec.of(ev.MechanismPending)[0]
    assert (engine.dir / pending.source).read_text() and (engine.dir / pending.report).read_text()
    assert rec.of(ev.MechanismActivated)[0].origin == "builtin"


async def test_set_budget_extends_the_run_and_survives_resume(tmp_path):
    import asyncio

    from core.engine.engine import Engine
    from tests.conftest import Recorder, fast_config

    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 2}))
    rec = Recorder()

    def on_event(e):
        rec(e)
        if isinstance(e, ev.IterationStarted) and e.iteration == 1:
            engine.submit(cmds.SetBudget(iterations=3))
            engine.submit(cmds.SetBudget(time_s=99.0))
    engine.subscribe(on_event)
    await asyncio.wait_for(engine.run(), patience(60))
    acks = [c for c in rec.of(ev.CommandReceived) if c.command == "set_budget"]
    assert acks[0].ok and not acks[1].ok and "measurement" in acks[1].error
    assert engine.state.next_iteration == 4
    again = Engine.resume(engine.dir)
    assert again.cfg.budget.iterations == 3


async def test_a_stream_retried_midway_tells_viewers_to_start_that_call_over(tmp_path):
    from tui.model import ViewModel

    class DropsOnce(Scripted):
        dropped = False

        def __call__(self, req: dict):
            reply = super().__call__(req)
            if not self.dropped and "mechanism interface" in req["messages"][-1]["content"]:
                self.dropped = True
                return Reply(content="half of an explore round that never", drop_after_chunks=3)
            return reply

    with ScriptedOpenAI(responder=DropsOnce([GOOD_TABU])) as server:
        cfg = research_config(tmp_path, server, **{"endpoint.max_retries": 2})
        engine, rec = await run_engine(cfg)
    explore = [r for r in rec.of(ev.ResearchRound) if r.round == "explore"][0]
    deltas = [d for d in rec.of(ev.LLMDelta) if d.call_id == explore.call_id]
    assert [d.kind for d in deltas].count("reset") == 1
    model = ViewModel()
    for e in rec.events:
        model.apply(e)
    shown = "".join(model.calls[explore.call_id].chunks)
    assert shown == (engine.dir / explore.artifact).read_text()  # not the dropped half plus the retry


async def _resume(session, server, iterations: int):
    import asyncio

    from core.engine.engine import Engine
    from tests.conftest import Recorder

    engine = Engine.resume(session, {"budget.iterations": iterations, "endpoint.base_url": server.base_url})
    rec = Recorder()
    engine.subscribe(rec)
    await asyncio.wait_for(engine.run(), patience(120))
    return engine, rec


async def test_an_active_generated_mechanism_is_reattached_on_resume_in_a_new_worker(tmp_path):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        engine, rec = await run_engine(research_config(tmp_path, server))
        assert "generated_tabu" in engine.state.mechanisms
        again, rec2 = await _resume(engine.dir, server, 7)
    back = [a for a in rec2.of(ev.MechanismActivated) if a.name == "generated_tabu"]
    assert back and back[0].description == "re-attached on resume" and back[0].origin == "generated"
    counted = [e.mechanisms.get("generated_tabu", {}) for e in rec2.of(ev.IterationFinished)]
    assert any(c.get("review_proposal") for c in counted), "the re-attached mechanism never ran"


async def test_a_deactivated_mechanism_is_never_reattached_on_resume(tmp_path):
    hook, body, _ = RUNTIME_FAILURES["garbage"]
    source = f"from mechanisms.base import Mechanism\n\nclass Late(Mechanism):\n{body}"
    with ScriptedOpenAI(responder=Scripted([source])) as server:
        engine, rec = await run_engine(research_config(tmp_path, server, **{"budget.iterations": 7}))
        assert rec.of(ev.MechanismDeactivated) and engine.state.mechanisms == {}
        again, rec2 = await _resume(engine.dir, server, 9)
    assert not [a for a in rec2.of(ev.MechanismActivated) if a.name == "Late"]
    assert again.state.status == "completed"


async def test_a_mechanism_validated_but_not_activated_when_the_engine_died_is_recorded_as_dropped(tmp_path):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        engine, _ = await run_engine(research_config(tmp_path, server))
        log = engine.dir / "events.jsonl"
        lines = log.read_text().splitlines(keepends=True)
        cut = next(i for i, line in enumerate(lines)
                   if json.loads(line)["type"] == "mechanism_validated" and json.loads(line)["ok"])
        research_id = json.loads(lines[cut])["research_id"]
        log.write_text("".join(lines[:cut + 1]))  # the engine died right after validating it
        again, rec2 = await _resume(engine.dir, server, 5)
    dropped = [f for f in rec2.of(ev.ResearchFinished) if f.research_id == research_id]
    assert [f.outcome for f in dropped] == ["dropped"] and "not activated" in dropped[0].reason
    assert again.state.research[research_id] == "dropped"
    assert again.state.status == "completed"


async def test_a_mechanism_that_no_longer_loads_on_resume_is_deactivated_under_its_name(tmp_path):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        engine, _ = await run_engine(research_config(tmp_path, server))
        module = engine.dir / engine.state.mechanisms["generated_tabu"].artifact
        module.write_text("raise RuntimeError('changed on disk')\n" + module.read_text())
        again, rec2 = await _resume(engine.dir, server, 7)
    off = [d for d in rec2.of(ev.MechanismDeactivated) if d.name == "generated_tabu"]
    assert off and "changed on disk" in off[0].reason
    assert "generated_tabu" not in again.state.mechanisms

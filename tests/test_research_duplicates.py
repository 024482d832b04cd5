"""Level 2 never offers a mechanism already active: a copy (other comments, docstrings, formatting) or a
refactor that behaves the same is refused with the reason, and the model is asked for something different."""
from __future__ import annotations

import ast
import inspect
import textwrap

import mechanisms.tabu
from core.record import events as ev
from tests.conftest import Recorder, run_engine
from tests.support import Reply, ScriptedOpenAI
from tests.test_mechanism_fingerprint import EXACT_TABU_REFACTORED
from tests.test_research import GOOD_TABU, Scripted, _resume, module_reply, research_config

# The built-in tabu module as a model might hand it back: comments dropped, docstrings reworded, reformatted.
TABU_COPY = "# A tabu search of my own design.\n" + ast.unparse(ast.parse(inspect.getsource(mechanisms.tabu))).replace(
    "Tabu search: veto proposals", "Forbid proposals", 1)

# GOOD_TABU's behaviour in other words: a helper, other names, another class name and `name`.
TABU_REFACTOR = EXACT_TABU_REFACTORED

# Genuinely different: it only adds a note to the prompt.
PROMPT_NOTE = textwrap.dedent('''
    from mechanisms.base import Mechanism


    class TrialCounter(Mechanism):
        """Tells the proposer how many iterations were trained so far."""

        name = "trial_counter"

        def shape_prompt(self, state, prompt):
            return f"{len(state.records)} iterations are recorded so far."
''')


class ToldItIsADuplicate(Scripted):
    """Scripted, and when told its module copies an active one, it answers with the next module."""

    def __init__(self, generate: list[str]) -> None:
        super().__init__(generate)
        self.told: list[str] = []

    def __call__(self, req: dict) -> Reply | str:
        last = req["messages"][-1]["content"]
        if "which is already active" in last:
            self.told.append(last)
            return Reply(content=module_reply(self.generate.pop(0)))
        return super().__call__(req)


def slow_config(tmp_path, server, monkeypatch, **kw):
    """research_config with iterations of about a second, so a research session finishes inside the run."""
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    return research_config(tmp_path, server, **{"run.pass_env": ["FAKE_STEP_S"], **kw})


def validations(rec: Recorder, research_id: str) -> list[ev.MechanismValidated]:
    return [v for v in rec.of(ev.MechanismValidated) if v.research_id == research_id]


def novelty(v: ev.MechanismValidated) -> dict:
    return next(s for s in v.steps if s["name"] == "novelty")


async def test_a_reworded_copy_of_an_active_builtin_is_not_offered_and_the_model_is_reasked(tmp_path, monkeypatch):
    scripted = ToldItIsADuplicate([TABU_COPY, GOOD_TABU])
    with ScriptedOpenAI(responder=scripted) as server:
        engine, rec = await run_engine(slow_config(tmp_path, server, monkeypatch, **{"search.mechanisms": ["tabu"],
                                                                                     "budget.iterations": 8}))
    first = rec.of(ev.ResearchStarted)[0].research_id
    copy, other = validations(rec, first)[:2]
    assert not copy.ok and copy.duplicate_of == "tabu"
    assert [s["ok"] for s in copy.steps] == [True, True, True, True, False]  # it passed everything else
    assert "identical in source to active mechanism `tabu`" in novelty(copy)["detail"]
    report = (engine.dir / copy.report).read_text()
    assert "| novelty | failed |" in report and "identical in source to active mechanism `tabu`" in report
    # the repair round tells the model, in its terms, what it did and what to do
    assert len(scripted.told) == 1
    assert "is the same as `tabu`, which is already active" in scripted.told[0]
    assert "identical in source" in scripted.told[0] and "Propose something different" in scripted.told[0]
    assert [r.round for r in rec.of(ev.ResearchRound) if r.research_id == first][-1] == "repair"
    # the different module that followed is offered and runs
    assert other.ok and other.duplicate_of == "" and "differs from every active mechanism (tabu)" in \
        novelty(other)["detail"]
    assert [(a.name, a.origin) for a in rec.of(ev.MechanismActivated)] == [("tabu", "config"),
                                                                          ("generated_tabu", "generated")]
    assert not [p for p in rec.of(ev.MechanismPending)]


async def test_a_copy_refused_on_every_attempt_is_rejected_saying_which_mechanism_it_copies(tmp_path, monkeypatch):
    with ScriptedOpenAI(responder=ToldItIsADuplicate([TABU_COPY, TABU_COPY])) as server:
        engine, rec = await run_engine(slow_config(tmp_path, server, monkeypatch, **{
            "search.mechanisms": ["tabu"], "level2.max_repairs": 1, "budget.iterations": 4}))
    first = rec.of(ev.ResearchStarted)[0].research_id
    assert [v.duplicate_of for v in validations(rec, first)] == ["tabu", "tabu"]
    finished = next(f for f in rec.of(ev.ResearchFinished) if f.research_id == first)
    assert finished.outcome == "rejected" and "identical in source to active mechanism `tabu`" in finished.reason
    assert [a.name for a in rec.of(ev.MechanismActivated)] == ["tabu"]
    assert engine.state.status == "completed"


async def test_a_refactor_that_behaves_like_the_active_mechanism_is_not_offered_and_a_different_one_is(
        tmp_path, monkeypatch):
    with ScriptedOpenAI(responder=Scripted([GOOD_TABU])) as server:
        engine, _ = await run_engine(slow_config(tmp_path, server, monkeypatch, **{"budget.iterations": 4}))
    assert "generated_tabu" in engine.state.mechanisms
    scripted = ToldItIsADuplicate([TABU_REFACTOR, PROMPT_NOTE])
    with ScriptedOpenAI(responder=scripted) as server:
        _, rec = await _resume(engine.dir, server, 9)
    first = rec.of(ev.ResearchStarted)[0].research_id
    refactor, different = validations(rec, first)[:2]
    assert not refactor.ok and refactor.duplicate_of == "generated_tabu"
    detail = novelty(refactor)["detail"]
    assert "identical in behaviour to active mechanism `generated_tabu`" in detail and "on all 6 probes" in detail
    assert "is the same as `generated_tabu`, which is already active" in scripted.told[0]
    assert different.ok and different.name == "TrialCounter"
    assert "differs from every active mechanism (generated_tabu) in source and behaviour on 6 probes" in \
        novelty(different)["detail"]
    activated = [a.name for a in rec.of(ev.MechanismActivated)]
    assert "repeat_guard" not in activated and "trial_counter" in activated


async def test_the_app_shows_why_a_duplicate_was_not_offered(tmp_path, monkeypatch):
    from tui.app import BilevelApp
    from tui.model import ViewModel
    from tui.sources import ReplaySource
    from tests.test_tui_patches import select

    with ScriptedOpenAI(responder=ToldItIsADuplicate([TABU_COPY, GOOD_TABU])) as server:
        engine, rec = await run_engine(slow_config(tmp_path, server, monkeypatch, **{"search.mechanisms": ["tabu"],
                                                                                    "budget.iterations": 4}))
    first = rec.of(ev.ResearchStarted)[0].research_id
    model = ViewModel()
    for e in rec.events:
        model.apply(e)
    shown = "".join(text for _, text in model.research[first].segments)
    assert "✗ novelty: identical in source to active mechanism `tabu`" in shown
    assert "FAILED — The mechanism failed the novelty check: identical in source" in shown
    app = BilevelApp(ReplaySource(engine.dir, follow=False), deterministic=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.caught_up()
        await pilot.press("4", "z")
        pane = await select(app, pilot, f"mech-{first}-1")
        pane.query_one("#patch-report-scroll").scroll_end(animate=False)
        await pilot.pause()
        await pilot.pause()
        text = app.screen_text()
    assert pane._shown[0] == f"mech-{first}-1"
    assert "novelty  failed" in text and "identical in source to active mechanism tabu" in text

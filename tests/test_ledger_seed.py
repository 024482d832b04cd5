"""level2.seed: a session starts with mechanisms from the ledger, validated again through Level 2's normal path."""
from __future__ import annotations

from pathlib import Path

from core.record import events as ev
from core.record.ledger import Ledger, MechanismRow
from tests.conftest import fast_config, run_engine

TABU = (Path(__file__).parent / "fixtures" / "mechanisms" / "tabu_memory.py").read_text()
# it passed once (say, under an older contract); today's validator refuses a mechanism that hooks nothing
DOES_NOTHING = "from mechanisms.base import Mechanism\n\n\nclass Sneaky(Mechanism):\n    name = 'sneaky'\n"


def seeded(tmp_path, monkeypatch, names, rows):
    monkeypatch.setenv("BILEVEL_LEDGER", str(tmp_path / "ledger.sqlite"))
    with Ledger() as ledger:
        ledger.record(rows)
    return fast_config(tmp_path, **{"search.group": "A", "budget.iterations": 2, "level2.seed": names})


async def test_a_session_starts_with_the_named_ledger_mechanisms_validated_again(tmp_path, monkeypatch):
    cfg = seeded(tmp_path, monkeypatch, ["tabu_memory", "bandit", "nowhere"], [
        MechanismRow("a" * 16, "tabu_memory", "generated", "earlier-session", TABU),
        MechanismRow("b" * 16, "bandit", "builtin", "earlier-session", "# the shipped module\n")])
    engine, rec = await run_engine(cfg)
    started = rec.of(ev.ResearchStarted)
    assert [s.source for s in started] == ["ledger"] * 3 and all(s.research_id.startswith("seed") for s in started)
    validated = rec.of(ev.MechanismValidated)
    assert [(v.name, v.ok) for v in validated] == [("TabuMemory", True)], "the generated one is validated again"
    assert (engine.dir / validated[0].source).read_text() == TABU
    finished = {f.research_id: f for f in rec.of(ev.ResearchFinished)}
    outcomes = [(finished[s.research_id].outcome, finished[s.research_id].name) for s in started]
    assert outcomes == [("activated", "TabuMemory"), ("activated", "bandit"), ("failed", "nowhere")]
    assert "not in the mechanism ledger" in finished[started[2].research_id].reason
    assert "earlier-session" in finished[started[0].research_id].reason
    activated = rec.of(ev.MechanismActivated)
    assert [(a.name, a.origin) for a in activated] == [("tabu_memory", "generated"), ("bandit", "builtin")]
    # the normal path: the pre-screen ran for each (skipped: this script is not the surrogate's), and
    # both hooks ran from the first search iteration on
    assert [p.verdict for p in rec.of(ev.MechanismPrescreened)] == ["skipped", "skipped"]
    first = next(e for e in rec.events if isinstance(e, ev.IterationStarted) and e.iteration == 1)
    assert all(a.seq < first.seq for a in activated)
    assert set(engine.state.mechanisms) == {"tabu_memory", "bandit"}


async def test_a_ledger_source_that_no_longer_validates_is_rejected_with_the_reason(tmp_path, monkeypatch):
    cfg = seeded(tmp_path, monkeypatch, ["sneaky"], [MechanismRow("c" * 16, "sneaky", "generated", "old", DOES_NOTHING)])
    _, rec = await run_engine(cfg)
    validated, = rec.of(ev.MechanismValidated)
    assert not validated.ok and "overrides none of the hooks" in validated.failure
    finished, = rec.of(ev.ResearchFinished)
    assert finished.outcome == "rejected" and "failed validation in this session" in finished.reason
    assert not rec.of(ev.MechanismActivated)


async def test_seeds_run_only_when_a_session_begins_not_on_resume(tmp_path, monkeypatch):
    from core.engine.engine import Engine

    cfg = seeded(tmp_path, monkeypatch, ["bandit"], [MechanismRow("b" * 16, "bandit", "builtin", "x", "#\n")])
    engine, rec = await run_engine(cfg)
    assert [s.source for s in rec.of(ev.ResearchStarted)] == ["ledger"]
    resumed = Engine.resume(engine.dir, {"budget.iterations": 3})
    events = []
    resumed.subscribe(events.append)
    await resumed.run()
    assert not [e for e in events if isinstance(e, ev.ResearchStarted)]
    assert "bandit" in resumed.state.mechanisms, "re-attached on resume, not seeded again"

"""The mechanism pre-screen on screen: its line in the research pane and in the approval screen.

The scripted engine's research waits for approval; the test records the pre-screen of that very
research through the engine's own event path (writer, fold, subscribers), as the real engine does
between validation and the approval it asks for.
"""
from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from core.record import events as ev
from tui.screens.approval import ApprovalScreen
from tui.model import RESEARCH
from tui.widgets.research import ResearchPane
from tests.support.scripted_engine import Plan
from tests.test_tui_app import live_app, on_screen, press, until

PLAN = dict(iterations=60, step_s=0.004, progress_per_run=4, approval="manual", outer_period=2, crash_at=None)


def screened(rid: str, name: str, *, verdict: str = "passed", mode: str = "gate", effect: float = -0.0021,
             low: float = -0.0043, high: float = 0.0002) -> ev.MechanismPrescreened:
    return ev.MechanismPrescreened(
        research_id=rid, name=name, source_key="k" * 16, mode=mode, verdict=verdict, workload="surrogate h100",
        repeats=10, iterations=20, seeds=list(range(10)), effect=effect, ci_low=low, ci_high=high, p_value=0.084,
        side_effects={"vetoed": 37, "modified": 4, "rejected": 2, "crashes": 1},
        baseline_side_effects={"rejected": 3, "crashes": 1},
        reason=f"final best {effect:+.4f} val_bpb with it (95% CI {low:+.4f} to {high:+.4f})")


def pane_line(app) -> str:
    return str(app.base.query_one(ResearchPane).query_one("#research-prescreen", Static).render())


def show_research(app, rid: str) -> None:
    """Keep the pane on ``rid`` (as ``[`` would): the scripted run starts the next research meanwhile."""
    app.base.query_one(ResearchPane).selected = rid
    app.model.dirty.add(RESEARCH)


async def test_the_prescreen_is_shown_in_the_research_pane_and_the_approval_screen(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**PLAN)) as (app, pilot, engine):
        await until(pilot, lambda: bool(app.model.pending), what="a pending mechanism")
        rid, pending = next(iter(app.model.pending.items()))
        show_research(app, rid)
        assert pane_line(app) == "" and not app.base.query_one("#research-prescreen").has_class("-present")
        engine.emit(ev.PrescreenStarted(research_id=rid, name=pending.name, repeats=10, iterations=20))
        await until(pilot, lambda: "running" in pane_line(app), what="the running pre-screen in the pane")
        assert "10×20" in pane_line(app)
        engine.emit(screened(rid, pending.name))
        await until(pilot, lambda: "gate: passed" in pane_line(app), what="the pre-screen's result in the pane")
        line = pane_line(app)
        assert "-0.0021" in line and "95% CI -0.0043 to +0.0002" in line and "p 0.084" in line
        assert "vetoed 37" in line and "modified 4" in line and "rejected 2 (3 without)" in line
        assert "crashes 1 (1 without)" in line
        await press(app, "3")  # the research pane, whatever the layout
        await until(pilot, lambda: "gate: passed" in app.screen_text(), what="the line on screen")
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await pilot.pause(0.1)
        shown = app.screen_text()
        assert "pre-screen 10×20 on the surrogate h100: gate: passed" in shown
        assert "95% CI -0.0043 to +0.0002" in shown
        await press(app, "escape")


async def test_a_refused_mechanism_shows_the_gates_verdict_with_its_figure(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**PLAN)) as (app, pilot, engine):
        await until(pilot, lambda: bool(app.model.pending), what="a pending mechanism")
        rid, pending = next(iter(app.model.pending.items()))
        show_research(app, rid)
        engine.emit(screened(rid, pending.name, verdict="harmful", effect=0.0065, low=0.0031, high=0.0098))
        await until(pilot, lambda: "REFUSED" in pane_line(app), what="the refusal in the pane")
        assert "gate: REFUSED (harmful)" in pane_line(app) and "+0.0065" in pane_line(app)
        assert "95% CI +0.0031 to +0.0098" in pane_line(app)


async def test_a_report_only_prescreen_and_no_prescreen_say_so_in_the_approval_screen(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**PLAN)) as (app, pilot, engine):
        await until(pilot, lambda: bool(app.model.pending), what="a pending mechanism")
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await pilot.pause(0.1)
        assert "pre-screen: none" in app.screen_text()
        await press(app, "escape")
        await until(pilot, lambda: not isinstance(app.screen, ApprovalScreen), what="the screen closed")
        rid, pending = next(iter(app.model.pending.items()))
        show_research(app, rid)
        engine.emit(screened(rid, pending.name, verdict="harmful", mode="report", effect=0.004, low=0.001, high=0.007))
        await until(pilot, lambda: "report only" in pane_line(app), what="the report-only line")
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await pilot.pause(0.1)
        assert "harmful (report only: activation not gated)" in app.screen_text()

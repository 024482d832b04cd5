"""The Patches viewer: a diff opens at its first change, source wraps, the report sits below, outcomes are named."""
from __future__ import annotations

from pathlib import Path

from textual.containers import ScrollableContainer
from textual.widgets import OptionList

from core.record import events as ev
from tui.app import BilevelApp
from tui.screens.approval import ApprovalScreen
from tui.sources import ReplaySource
from tui.widgets.patches import PatchPane
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import live_app, logged, on_screen, press, until


def long_diff(change_at: int) -> str:
    lines = ["--- a/train.py", "+++ b/train.py", f"@@ -1,{change_at + 31} +1,{change_at + 31} @@"]
    lines += [f" CONSTANT_{i} = {i}" for i in range(change_at)]
    lines += ["-MATRIX_LR = 0.04", "+MATRIX_LR = 0.06"] + [f" TAIL_{i} = {i}" for i in range(30)]
    return "\n".join(lines) + "\n"


async def select(app: BilevelApp, pilot, key: str) -> PatchPane:
    pane = app.base.query_one(PatchPane)
    options = pane.query_one(OptionList)
    options.highlighted = options.get_option_index(key)
    await pilot.pause()
    await pilot.pause()
    return pane


async def test_a_long_diff_opens_at_its_first_change(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=3))
    (tmp_path / "s" / "artifacts" / "iterations" / "0003" / "diff.patch").write_text(long_diff(30))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(140, 45)) as pilot:
        await app.caught_up()
        pane = await select(app, pilot, "it-00003")
        await until(pilot, lambda: pane.query_one("#patch-code-scroll").scroll_y > 0, what="the jump")
        scroll = pane.query_one("#patch-code-scroll", ScrollableContainer)
        assert scroll.scroll_y == 3 + 30 - PatchPane.CONTEXT_ABOVE  # header lines, then the context above
        text = app.screen_text()
    assert "- MATRIX_LR = 0.04" in text and "+ MATRIX_LR = 0.06" in text
    assert "CONSTANT_27" not in text and "CONSTANT_28 = 28" in text


async def test_mechanism_source_wraps_with_the_validation_report_below_it(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up()
        await pilot.press("4", "z")
        await pilot.pause()
        pane = app.base.query_one(PatchPane)
        code = pane.query_one("#patch-code-scroll")
        report = pane.query_one("#patch-report-scroll")
        assert pane.has_class("-mechanism") and pane.has_class("-wrap")
        assert report.region.y >= code.region.bottom and report.region.width == code.region.width
        assert code.max_scroll_x == 0  # wrapped: nothing is off to the right
        text = app.screen_text()
    assert 'return Verdict.veto(f"{key}={value} is within 5% of' in text  # a long line, whole
    assert "✓ dry run" in text


async def test_d_flips_every_mechanism_and_says_what_it_does_on_an_iteration(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3, outer_period=2))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=(140, 45)) as pilot:
        await app.caught_up()
        await pilot.press("4")
        pane = app.base.query_one(PatchPane)
        mechanisms = [k for k, e in pane._entries.items() if e.kind == "mechanism"]
        assert mechanisms
        for key in mechanisms:
            await select(app, pilot, key)
            await pilot.press("d")
            await pilot.pause()
            assert pane._shown == (key, True) and "(d: source)" in str(pane.query_one("#patch-title").render())
            await pilot.press("d")
            await pilot.pause()
        await select(app, pilot, "it-00001")
        await pilot.press("d")
        await pilot.pause()
        assert not pane.show_diff
        assert any("an iteration shows its diff" in str(n.message) for n in app._notifications)


async def test_a_declined_mechanism_is_listed_as_declined_never_with_a_check(tmp_path: Path):
    plan = Plan(iterations=40, step_s=0.002, progress_per_run=4, approval="manual", outer_period=2, crash_at=None)
    async with live_app(tmp_path / "s", plan) as (app, pilot, engine):
        await until(pilot, lambda: bool(app.model.pending), what="a pending mechanism")
        rid = next(iter(app.model.pending))
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await press(app, "r")
        await until(pilot, lambda: app.model.research[rid].finished is not None, what="declined")
        await app._repaint()
        pane = app.base.query_one(PatchPane)
        options = pane.query_one(OptionList)
        key = next(k for k, e in app.model.patches.items() if e.research_id == rid)
        prompt = str(options.get_option(key).prompt)
    assert "declined" in prompt and "✓" not in prompt
    assert [e.outcome for e in logged(engine, ev.ResearchFinished) if e.research_id == rid] == ["declined"]

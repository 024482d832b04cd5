"""The iteration detail view: Enter on a trace row says why the iteration happened and how it was judged."""
from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from core.record import layout
from core.record.session import SessionReader
from tui.app import BilevelApp
from tui.detail import iteration_detail
from tui.model import ViewModel
from tui.screens.detail import IterationDetailScreen
from tui.sources import ReplaySource
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import SIZE, on_screen, until

PARALLEL = dict(iterations=8, slots=4, gpus=True, progress_per_run=6, outer_period=3)


def folded(path: Path) -> ViewModel:
    model = ViewModel()
    for event in SessionReader(path).events():
        model.apply(event)
    return model


def detail(path: Path, n: int) -> str:
    return iteration_detail(folded(path), n, lambda rel: layout.read_artifact(path, rel)).plain


async def test_detail_says_what_the_proposer_saw_while_others_ran(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**PARALLEL))
    text = detail(tmp_path / "s", 4)
    assert "Changes\n  DEVICE_BATCH_SIZE = 512   (was 128)" in text  # the best it was proposed against: the baseline
    assert "A bigger device batch should raise throughput." in text
    assert "results of    #0  (1 finished)" in text
    assert "running       #1 #2 #3  (result unknown" in text
    assert "guidance      Start with the learning rates" in text and "[config]" in text
    assert "slot gpu3" in text


async def test_detail_of_a_reasked_proposal_shows_the_rejection(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**PARALLEL))
    text = detail(tmp_path / "s", 2)
    assert "source        offline, attempt 2" in text
    assert "attempt 1     repeat: the same change is running as #1" in text


async def test_detail_of_a_crash_shows_the_log_tail_and_reason(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**PARALLEL))
    text = detail(tmp_path / "s", 4)
    assert "decision      crash — CUDA out of memory" in text
    assert "outcome       oom — CUDA out of memory [script]" in text
    log = text.split("Training log (last lines)\n", 1)[1].split("\nDiff", 1)[0]
    assert "torch.OutOfMemoryError: CUDA out of memory" in log and "step 00025" in log


async def test_detail_gives_the_rule_the_margin_and_the_diff(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**PARALLEL))
    model = folded(tmp_path / "s")
    scored = [n for n, t in model.trials.trials.items() if n and t.verdict and t.verdict.val_bpb is not None]
    n = scored[0]
    verdict = model.trial(n).verdict
    text = detail(tmp_path / "s", n)
    margin = verdict.best_before - verdict.val_bpb
    assert f"margin        {abs(margin):.6f} {'better' if margin > 0 else 'worse'} than the best" in text
    assert "rule          min_delta: keep if val_bpb < best - 0" in text
    diff = text.split("\nDiff\n", 1)[1]
    assert verdict.changes.params and all(f"+{name} = {value!r}" in diff for name, value in verdict.changes.params.items())


async def test_detail_of_the_mechanism_effects_and_active_mechanisms(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(**PARALLEL))
    model = folded(tmp_path / "s")
    late = max(n for n, t in model.trials.trials.items() if t.effects)
    text = detail(tmp_path / "s", late)
    assert "mechanisms    TabuMemory1" in text
    assert "TabuMemory1   shape_prompt → prompt: listed 3 discarded values" in text


async def test_enter_on_a_row_opens_the_detail_and_escape_closes_it(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=4, progress_per_run=3))
    app = BilevelApp(ReplaySource(tmp_path / "s", follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        table = app.base.query_one("#trace-table", DataTable)
        table.focus()
        table.move_cursor(row=2, animate=False)
        await pilot.press("enter")
        await until(pilot, on_screen(app, IterationDetailScreen), what="the detail view")
        assert app.screen.iteration == 2
        text = app.screen_text()
        assert "Iteration #2" in text and "What the proposer saw" in text and "Verdict" in text
        await pilot.press("end")
        await pilot.pause()
        assert "Diff" in app.screen_text()  # scrolled to the end: the diff
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, IterationDetailScreen), what="the detail to close")

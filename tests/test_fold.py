"""One fold: the app, the report and resume read the run from RunState, never from a fold of their own."""
from __future__ import annotations

from pathlib import Path

from core.analysis.report import load_session, render_markdown, build_report, collect
from core.engine.engine import Engine
from core.record import commands as cmds
from core.record import events as ev
from core.record.session import SessionReader
from core.record.state import fold
from tests.conftest import fast_config, run_engine
from tests.support.cli import start_bilevel, write_fast_config
from tests.support.scripted_engine import Plan, record_session
from tests.support.patience import patience
from tui.app import BilevelApp
from tui.sources import ReplaySource
from tui.widgets.header import StatusHeader

SIZE = (140, 44)


def _events(path: Path) -> list[ev.Event]:
    return list(SessionReader(path).events())


def _header(app: BilevelApp) -> str:
    return app.query_one(StatusHeader).render().plain


async def test_app_and_report_agree_with_the_fold_on_a_scripted_session(tmp_path: Path):
    """Tokens, mechanisms, budget and verdicts: the app and the report show what RunState holds."""
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=6, progress_per_run=3, outer_period=2, research_period=1))
    state = fold(_events(path))
    assert state.usage and state.mechanism_history  # the session has LLM calls and a mechanism

    data = load_session(path)
    assert data.tokens == {k: (u.prompt_tokens, u.completion_tokens, u.calls) for k, u in state.usage.items()}
    assert data.mechanisms == state.mechanism_history
    assert data.device_seconds == state.device.seconds and data.train_runs == state.device.runs
    assert data.delta == state.best_val_bpb - state.baseline_val_bpb
    use = next(iter(state.mechanism_history.values()))
    assert use.iterations and use.activated_after is not None
    markdown = render_markdown(build_report(collect([path])))
    assert f"after #{use.activated_after}" in markdown

    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await pilot.pause()
        m = app.model
        assert m.iterations_done == state.iterations_done == 6
        assert m.iterations_total == state.iterations_budget
        assert m.tokens_by_level == {k: u.prompt_tokens + u.completion_tokens for k, u in state.usage.items()}
        assert m.active_mechanisms == {n: e.origin for n, e in state.mechanisms.items()}
        assert [(r.iteration, r.phase, r.val_bpb) for r in m.rows.values() if r.final] == \
            [(r.iteration, r.decision, r.val_bpb) for r in state.records]
        await app._repaint()
        assert f"iter {state.iterations_done}/{state.iterations_budget}" in _header(app)


async def test_resume_and_the_report_agree_with_the_fold_on_a_real_session(tmp_path: Path):
    cfg = fast_config(tmp_path, **{"budget.iterations": 3, "search.group": "D", "search.outer_period": 1,
                                   "search.research_period": 1})
    engine, _ = await run_engine(cfg)
    path = engine.dir
    state = fold(_events(path))
    assert state.status == "completed" and state.mechanism_history

    resumed = Engine.resume(path)
    for name in ("records", "best_val_bpb", "best_values", "best_script", "frozen", "mechanisms",
                 "mechanism_history", "usage", "budget_changes", "iterations"):
        assert getattr(resumed.state, name) == getattr(state, name), name
    assert resumed.cfg.budget.iterations == state.iterations_budget == 3
    # the engine's own live state folded the same events
    assert engine.state.records == state.records and engine.state.mechanism_history == state.mechanism_history

    data = load_session(path)
    assert data.state.records == state.records and data.mechanisms == state.mechanism_history
    assert data.seed == state.seed and data.acceptance == state.acceptance


def test_a_failed_runs_error_tail_is_in_the_fold(tmp_path: Path):
    e = [ev.SessionStarted(seq=1, session="s"), ev.IterationStarted(seq=2, iteration=1),
         ev.TrainingFinished(seq=3, iteration=1, outcome="crash", error_tail="Traceback: boom"),
         ev.IterationFinished(seq=4, iteration=1, decision="crash")]
    state = fold(e)
    assert state.last_error_tail == "Traceback: boom" and state.iterations[1].error_tail == "Traceback: boom"


def test_resume_with_iterations_then_a_plain_resume_keeps_the_new_budget(tmp_path: Path):
    cfg = write_fast_config(tmp_path, name="budget", iterations=1)
    run = start_bilevel("run", str(cfg), "--headless", cwd=tmp_path)
    run.communicate(timeout=patience(120))
    assert run.returncode == 0
    session = next((tmp_path / "sessions").iterdir())
    more = start_bilevel("resume", str(session), "--headless", "--iterations", "2", cwd=tmp_path)
    more.communicate(timeout=patience(120))
    assert more.returncode == 0
    changes = [e for e in _events(session) if isinstance(e, ev.BudgetChanged)]
    assert [(c.iterations, c.source) for c in changes] == [(2, "resume")]
    assert fold(_events(session)).iterations_budget == 2
    # a plain resume remembers 2: the session is complete at 2 iterations, not at the config's 1
    again = start_bilevel("resume", str(session), "--headless", cwd=tmp_path)
    _, err = again.communicate(timeout=patience(120))
    assert again.returncode == 2 and "complete (2 iterations)" in err
    assert Engine.resume(session).cfg.budget.iterations == 2


async def test_the_header_shows_the_budget_a_resume_changed(tmp_path: Path):
    engine, _ = await run_engine(fast_config(tmp_path, **{"budget.iterations": 1}))
    resumed = Engine.resume(engine.dir, {"budget.iterations": 3})
    await resumed.run()
    app = BilevelApp(ReplaySource(engine.dir, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await pilot.pause()
        await app._repaint()
        assert app.model.iterations_total == 3
        assert "iter 3/3" in _header(app)


async def test_the_header_shows_a_budget_set_while_running(tmp_path: Path):
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 2}))
    engine.submit(cmds.SetBudget(iterations=1), source="test")
    await engine.run()
    assert engine.state.iterations_budget == 1 and engine.state.iterations_done == 1
    app = BilevelApp(ReplaySource(engine.dir, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await pilot.pause()
        await app._repaint()
        assert "iter 1/1" in _header(app)

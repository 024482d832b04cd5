"""The app at the edges of a run, on the product's engine: approvals that come late, commands after
the end, a budget changed mid-run. Each test checks the log and what the screen says."""
from __future__ import annotations

import asyncio
from pathlib import Path

from core.record import commands as cmds
from core.record import events as ev
from core.record.session import SessionReader
from tui.app import BilevelApp
from tui.screens.approval import ApprovalScreen
from tui.sources import ReplaySource
from tests.conftest import fast_config
from tests.test_tui_app import SIZE, on_screen, press, real_engine_app, until
from tests.support.patience import patience


def manual_l2(tmp_path: Path, iterations: int) -> object:
    """Offline Level 2 after every iteration, each mechanism waiting for the user's approval."""
    return fast_config(tmp_path, **{"search.group": "D", "search.outer_period": 1, "search.research_period": 1,
                                    "level2.approval": "manual", "budget.iterations": iterations})


def log_of(engine: object) -> list[ev.Event]:
    return list(SessionReader(engine.dir).events())  # type: ignore[attr-defined]


async def test_a_timely_approval_shows_approved_then_active(tmp_path: Path):
    # 4 iterations: the pause lands before #3 or, on a slow machine, #4; either leaves one to run in
    async with real_engine_app(manual_l2(tmp_path, 4)) as (app, pilot, engine, task):
        await until(pilot, lambda: bool(app.model.pending), timeout=60, what="a pending mechanism")
        rid = next(iter(app.model.pending))
        await press(app, "space")  # hold the run at the next boundary: the approval cannot come too late
        await until(pilot, lambda: app.model.status == "paused", timeout=60, what="paused")
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await press(app, "a")
        await until(pilot, lambda: app.model.state.research.get(rid) == "approved", what="MechanismApproved")
        await until(pilot, lambda: "approved" in app.screen_text(), what="approved on screen")
        await until(pilot, lambda: "to approve" not in app.screen_text().splitlines()[0],
                    what="the header without a count to approve")  # drawn in its own frame
        await press(app, "space")
        await until(pilot, lambda: app.model.state.research.get(rid) == "activated", timeout=60, what="activated")
        await asyncio.wait_for(task, patience(60))
    events = log_of(engine)
    approved = [e for e in events if isinstance(e, ev.MechanismApproved)]
    assert [a.research_id for a in approved] == [rid]
    activation = next(i for i, e in enumerate(events) if isinstance(e, ev.MechanismActivated))
    starts = [e.iteration for e in events[activation:] if isinstance(e, ev.IterationStarted)]
    assert starts and starts[0] == approved[0].activates_at  # it ran from the iteration it promised


async def test_an_approval_too_late_expires_and_is_refused_with_a_reason(tmp_path: Path):
    async with real_engine_app(manual_l2(tmp_path, 3)) as (app, pilot, engine, task):
        await until(pilot, lambda: bool(app.model.pending), timeout=60, what="a pending mechanism")
        rid = next(iter(app.model.pending))
        await until(pilot, lambda: app.model.state.research.get(rid) == "expired", timeout=60,
                    what="expiry when the last iteration starts")
        await until(pilot, lambda: "expired" in app.screen_text(), what="expired on screen")
        await until(pilot, lambda: "to approve" not in app.screen_text().splitlines()[0],
                    what="the header without a count to approve")  # drawn in its own frame
        await app.send(cmds.ApproveMechanism(research_id=rid))
        await until(pilot, lambda: any(n.title == "Command refused" for n in app._notifications),
                    what="the refusal toast")
        await asyncio.wait_for(task, patience(60))
        await until(pilot, lambda: "completed" in app.screen_text().splitlines()[0], what="the end on screen")
        screen = app.screen_text()
        assert "to approve" not in screen.splitlines()[0] and "expired" in screen
    events = log_of(engine)
    expired = [e for e in events if isinstance(e, ev.ResearchFinished) and e.research_id == rid]
    assert [e.outcome for e in expired] == ["expired"] and "no iteration is left" in expired[0].reason
    refused = [e for e in events if isinstance(e, ev.CommandReceived) and e.command == "approve_mechanism"]
    assert [e.ok for e in refused] == [False] and "no mechanism waits" in refused[0].error
    assert not [e for e in events if isinstance(e, ev.MechanismActivated)]

    replay = BilevelApp(ReplaySource(engine.dir, follow=False), deterministic=True)
    async with replay.run_test(size=SIZE):
        await replay.caught_up()
        assert not replay.model.pending
        assert "to approve" not in replay.screen_text().splitlines()[0]


def test_a_replayed_log_without_expiry_shows_nothing_pending_after_the_end():
    """Logs written before approvals expired: the end of the run ends the wait."""
    from core.record.state import fold

    state = fold([ev.SessionStarted(session="s"), ev.ResearchStarted(research_id="r1"),
                  ev.MechanismPending(research_id="r1", name="m"), ev.RunFinished(status="completed")])
    assert not state.awaiting and state.research["r1"] == "expired"


async def test_a_budget_change_moves_the_headers_total_and_commands_after_the_end_are_refused(tmp_path: Path):
    async with real_engine_app(fast_config(tmp_path, **{"budget.iterations": 6})) as (app, pilot, engine, task):
        await until(pilot, lambda: app.model.state.session != "", timeout=60, what="the session")
        await until(pilot, lambda: "iter 0/6" in app.screen_text(), what="the configured total")
        await app.send(cmds.SetBudget(iterations=2))
        await until(pilot, lambda: "/2" in app.screen_text().splitlines()[1], what="the new total in the header")
        await asyncio.wait_for(task, patience(120))
        await until(pilot, lambda: "completed" in app.screen_text().splitlines()[0], what="the end on screen")
        header = app.screen_text().splitlines()
        assert "iter 2/2" in header[1] and "controls off" in header[0]
        for action in ("edit_guidance", "freeze", "stop", "toggle_pause"):
            assert app.check_action(action, ()) is False, action  # not offered: nothing left to change
        await app.send(cmds.SetGuidance(guidance="too late"))
        await until(pilot, lambda: any("the run is over" in str(n.message) for n in app._notifications),
                    what="the refusal toast")
        assert any(n.title == "Command refused" for n in app._notifications)
    events = log_of(engine)
    assert [e.iterations for e in events if isinstance(e, ev.BudgetChanged)] == [2]
    assert [e.iteration for e in events if isinstance(e, ev.IterationFinished)] == [0, 1, 2]
    assert not [e for e in events if isinstance(e, ev.GuidanceChanged)]


async def test_an_attached_viewer_of_an_ended_run_says_the_engine_is_gone(tmp_path: Path):
    from core.record import layout
    from tests.support.scripted_engine import Plan, record_session
    from tui.sources import TailSource

    path = tmp_path / "s"
    await record_session(path, Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(TailSource(path, poll_s=0.02), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model.finished is not None, what="the recorded end")
        assert not await app.send(cmds.Pause())
        await until(pilot, lambda: any("the run is over" in str(n.message) for n in app._notifications),
                    what="the refusal toast")
    channel = layout.commands_dir(path)
    assert not channel.exists() or not any(channel.iterdir())  # no command file left for nobody to read


async def test_the_palettes_quit_asks_first_on_a_live_run_and_has_no_duplicates(tmp_path: Path):
    from textual.command import CommandPalette

    from tests.test_tui_app import type_text
    from tui.screens.confirm import ConfirmScreen

    async with real_engine_app(fast_config(tmp_path, **{"budget.iterations": 50})) as (app, pilot, engine, task):
        await until(pilot, lambda: app.model.state.session != "", timeout=60, what="the session")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert titles.count("Quit") == 1 and "Keys" not in titles and "Maximize" not in titles
        assert len(titles) == len(set(titles)), titles
        await press(app, "ctrl+p")
        await until(pilot, on_screen(app, CommandPalette), what="the palette")
        await type_text(app, "Quit")
        await pilot.pause(0.3)
        await press(app, "enter")
        await until(pilot, on_screen(app, ConfirmScreen), what="the app's own question")
        assert app.is_running and not task.done()
        await press(app, "escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert not task.done()
        await press(app, "ctrl+c")
        await until(pilot, lambda: any(n.title == "ctrl+c does not quit" and "Press q" in str(n.message)
                                       for n in app._notifications), what="the ctrl+c hint")
        assert app.is_running and not task.done()
    assert not [e for e in log_of(engine) if isinstance(e, ev.CommandReceived) and e.command == "stop"
                and e.args.get("reason") != "test over"]


async def _replay_screen(path: Path) -> tuple[BilevelApp, str]:
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await until(pilot, lambda: bool(app._replay_notice) or app.model.state.session != "", what="the reading")
        await pilot.pause(0.2)
        return app, app.screen_text()


async def test_a_corrupt_log_is_replayed_with_the_readers_warnings_on_screen(tmp_path: Path):
    from core.record import layout
    from tests.support.scripted_engine import Plan, record_session

    path = tmp_path / "s"
    await record_session(path, Plan(iterations=2, progress_per_run=2))
    log = layout.events_path(path)
    lines = log.read_bytes().splitlines(keepends=True)
    damaged = lines[:3] + [b"\x8b\x1f\x00 random bytes\n"] + lines[3:5] + [b"{not json\n"] + lines[5:]
    log.write_bytes(b"".join(damaged) + b'{"type": "iteration_finished"}\n')
    app, screen = await _replay_screen(path)
    header = screen.splitlines()[0]
    assert "3 unreadable lines skipped (line 4, 7, 38)" in header, header
    assert any("line 4:" in str(n.message) and "line 7:" in str(n.message) for n in app._notifications)
    baseline = app.model.state.records[0]
    assert baseline.iteration == 0 and baseline.val_bpb is not None  # the bare verdict did not blank it
    assert [r.iteration for r in app.model.state.records] == [0, 1, 2]


async def test_an_empty_log_says_empty_session_instead_of_waiting(tmp_path: Path):
    from core.record import layout

    path = tmp_path / "s"
    path.mkdir()
    layout.events_path(path).write_bytes(b"")
    app, screen = await _replay_screen(path)
    header = screen.splitlines()[0]
    assert "empty session" in header and "no session" in header and "waiting" not in header, header


def test_a_bare_iteration_finished_does_not_blank_the_baseline():
    from core.record.state import fold

    state = fold([ev.SessionStarted(session="s"), ev.IterationStarted(iteration=0),
                  ev.IterationFinished(iteration=0, decision="baseline", val_bpb=1.5), ev.IterationFinished()])
    assert [r.val_bpb for r in state.records] == [1.5] and state.baseline_val_bpb == 1.5


async def test_the_editor_file_ends_with_a_newline(tmp_path: Path, monkeypatch):
    import sys

    seen = tmp_path / "seen.txt"
    script = f"import sys, shutil; shutil.copy(sys.argv[1], {str(seen)!r})"
    monkeypatch.setenv("EDITOR", f"{sys.executable} -c \"{script}\"")
    monkeypatch.delenv("VISUAL", raising=False)
    from tests.support.scripted_engine import Plan
    from tests.test_tui_app import live_app

    async with live_app(tmp_path / "s", Plan(iterations=0)) as (app, pilot, engine):
        assert app.edit_in_editor("Keep the batch size.") == "Keep the batch size.\n"
    assert seen.read_bytes() == b"Keep the batch size.\n"


async def test_d_shows_a_builtin_mechanisms_diff(tmp_path: Path):
    """Offline Level 2 activates a built-in: d flips its source to the diff that adds it."""
    from tui.widgets.patches import PatchPane

    cfg = fast_config(tmp_path, **{"search.group": "D", "search.outer_period": 1, "search.research_period": 1,
                                   "budget.iterations": 3})
    async with real_engine_app(cfg) as (app, pilot, engine, task):
        await until(pilot, lambda: bool(app.model.active_mechanisms), timeout=60, what="an active built-in")
        await asyncio.wait_for(task, patience(60))
        await press(app, "4")
        pane = app.base.query_one(PatchPane)
        options = pane.options
        key = next(k for k, p in app.model.patches.items() if p.kind == "mechanism")
        options.highlighted = list(app.model.patches).index(key)
        await pilot.pause(0.2)
        before = app.screen_text()
        await press(app, "d")
        await until(pilot, lambda: "--- /dev/null" in app.screen_text(), what="the diff of the built-in")
        after = app.screen_text()
    assert before != after and "+++" in after and "@@ -0,0 +1," in after


async def test_stop_shows_stopping_until_the_run_has_stopped(tmp_path: Path):
    from tests.support.scripted_engine import Plan
    from tests.test_tui_app import SLOW, live_app
    from tui.screens.confirm import ConfirmScreen

    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.training_iteration is not None, what="a training run")
        seen: list[str] = []
        await press(app, "s")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "enter")  # after this iteration

        def header_status() -> str:
            seen.append(app.screen_text().splitlines()[0].rsplit("●", 1)[-1].strip())
            return seen[-1]

        await until(pilot, lambda: header_status() == "stopped", timeout=30, what="stopped")
    assert "stopping…" in seen and seen.index("stopping…") < seen.index("stopped")
    assert [e.ok for e in received(engine, "stop")] == [True]


def received(engine, command):
    return [e for e in log_of(engine) if isinstance(e, ev.CommandReceived) and e.command == command]

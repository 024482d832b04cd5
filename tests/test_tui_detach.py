"""Detaching a foreground run: the engine in the app's process stops cleanly, a background
``bilevel resume`` takes the session over (as ``bilevel run --detach`` starts one), and the app
leaves saying how to attach. On the product's engine: the offline demo training tiny CPU models."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from core.record import events as ev
from core.record import layout
from core.record.config import demo_config
from core.run.drive import BackgroundStartError, resume_in_background
from tests.support.processes import alive
from tests.test_tui_app import on_screen, press, real_engine_app, until
from tests.test_tui_attach import attached, read_events, wait
from tui.app import BilevelApp
from tui.screens.confirm import ConfirmScreen


def demo(tmp_path: Path) -> Any:
    return demo_config(**{"run.sessions_dir": str(tmp_path / "sessions"), "budget.iterations": 30,
                          "budget.time_s": 2.0})


def since_resume(session: Path, pid: int) -> list[ev.Event]:
    """The events the engine with ``pid`` wrote: everything after its run_resumed."""
    events = read_events(session)
    start = next((i for i, e in enumerate(events) if isinstance(e, ev.RunResumed) and e.pid == pid), None)
    return [] if start is None else events[start:]


async def test_detach_leaves_a_background_engine_running_the_session(tmp_path: Path):
    pid = None
    try:
        async with real_engine_app(demo(tmp_path), background=resume_in_background) as (app, pilot, engine, task):
            session = Path(engine.dir)
            await until(pilot, lambda: (app.model.training_iteration or 0) >= 1, timeout=120, what="a training run")
            await press(app, "q")
            await until(pilot, on_screen(app, ConfirmScreen), what="the quit question")
            assert "restarts there" in app.screen_text()  # the dialog says the iteration starts over
            await press(app, "tab", "enter")  # the second answer: Detach
            await until(pilot, lambda: not app.is_running, timeout=180, what="the app to leave after detaching")
            pid = app.background_pid
        assert task.done() and engine.state.status == "stopped"  # the in-process engine ended cleanly
        interrupted = [e.iteration for e in read_events(session) if isinstance(e, ev.IterationInterrupted)]
        assert pid is not None and pid == int(layout.engine_pid_path(session).read_text())
        assert alive(pid) and os.getpgid(pid) == pid != os.getpgid(0)  # its own group: the shell's signals miss it

        def finished_there() -> list[int]:
            return [e.iteration for e in since_resume(session, pid) if isinstance(e, ev.IterationFinished)]

        wait(lambda: len(finished_there()) >= 2, 180, "iterations finished by the background engine")
        started = [e.iteration for e in since_resume(session, pid) if isinstance(e, ev.IterationStarted)]
        assert started[0] == interrupted[-1]  # the interrupted iteration is run again from its start
        assert "resum" in layout.engine_log_path(session).read_text().lower()

        async def watch_then_stop(viewer: BilevelApp, vpilot: Any) -> None:
            assert viewer.source.engine_running()
            seen = len(viewer.model.state.records)
            await until(vpilot, lambda: len(viewer.model.state.records) > seen, timeout=120,
                        what="the attached viewer to see a new iteration")
            await press(viewer, "q")
            await until(vpilot, on_screen(viewer, ConfirmScreen), what="the viewer's question")
            assert "Leave this viewer?" in viewer.screen_text()
            await press(viewer, "tab", "enter")  # stop the engine
            await until(vpilot, lambda: not viewer.is_running, timeout=120, what="the viewer to close")

        await attached(session, watch_then_stop)
        wait(lambda: not alive(pid), 120, "the background engine to stop")
        events = read_events(session)
        assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["stopped", "stopped"]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # one writer at a time, nothing torn
    finally:
        if pid is not None and alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_a_background_engine_that_cannot_take_the_session_is_reported(tmp_path: Path):
    session = tmp_path / "not-a-session"
    session.mkdir()
    layout.events_path(session).write_text("")
    try:
        resume_in_background(session)
    except BackgroundStartError as exc:
        message = str(exc)
    else:
        raise AssertionError("resume_in_background returned for a folder nothing can resume")
    assert "exited with status 2" in message and "bilevel" in message
    pid = int(layout.engine_pid_path(session).read_text())
    assert not alive(pid)


def test_bilevel_run_in_a_terminal_detaches_and_prints_how_to_attach(tmp_path: Path):
    from tests.support.terminal import Terminal

    args = ["run", "--demo", "--iterations", "30", "--budget", "2", "--sessions-dir", str(tmp_path / "sessions")]
    term = Terminal(args, tmp_path)
    pid = None
    try:
        wait(lambda: b"LIVE" in term.output, 60, "the app to draw")
        sessions = tmp_path / "sessions"
        session = wait(lambda: next(sessions.iterdir(), None) if sessions.is_dir() else None, 60, "the session")
        wait(lambda: any(isinstance(e, ev.TrainingProgress) for e in read_events(session)), 120, "a training run")
        term.type(b"q", settle=0.5)
        term.type(b"\t", settle=0.3)
        term.type(b"\r")  # Detach
        assert term.proc.wait(180) == 0
        pid = int(layout.engine_pid_path(session).read_text())
        assert alive(pid) and pid != term.proc.pid
        assert f"bilevel attach {session}".encode() in bytes(term.output).replace(b"\r\n", b"")
        wait(lambda: any(isinstance(e, ev.IterationFinished) for e in since_resume(session, pid)), 180,
             "an iteration finished by the background engine")
    finally:
        term.close()
        if pid is not None and alive(pid):
            os.killpg(pid, signal.SIGKILL)


async def test_a_detach_whose_background_engine_fails_keeps_the_app_open_and_the_session_resumable(tmp_path: Path):
    from tests.support.scripted_engine import Plan
    from tests.test_tui_app import SLOW, live_app, logged

    asked: list[Path] = []

    def background_that_fails(session: Path) -> int:
        asked.append(session)
        raise BackgroundStartError("the background engine (pid 4242) exited with status 2; no output")

    async with live_app(tmp_path / "s", Plan(**SLOW), background=background_that_fails) as (app, pilot, engine):
        await until(pilot, lambda: (app.model.training_iteration or 0) >= 1, what="a training run")
        await press(app, "q")
        await until(pilot, on_screen(app, ConfirmScreen), what="the quit question")
        await press(app, "tab", "enter")  # Detach
        await until(pilot, lambda: any(n.title == "The background engine did not start" for n in app._notifications),
                    what="the failure toast")
        assert app.is_running and app.background_pid is None
        toast = next(n for n in app._notifications if n.title == "The background engine did not start")
        assert "exited with status 2" in str(toast.message) and "bilevel resume" in str(toast.message)
        await until(pilot, lambda: "not detached" in app.screen_text().splitlines()[0], what="the header's word")
        await press(app, "q")  # nothing runs any more: q leaves at once
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert asked == [tmp_path / "s"]
    assert [f.status for f in logged(engine, ev.RunFinished)] == ["stopped"]  # resumable: stopped, not failed
    assert logged(engine, ev.IterationInterrupted)

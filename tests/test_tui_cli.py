"""The app as the command line starts it, on a real pseudo-terminal: `bilevel run` and `bilevel replay`."""
from __future__ import annotations

import asyncio
from pathlib import Path

from core.record import events as ev
from core.record.state import fold
from core.run.drive import EXIT_UNFINISHED
from tests.support.terminal import Terminal
from tests.test_tui_attach import read_events, wait
from tests.support.scripted_engine import Plan, record_session


def test_run_in_a_terminal_pauses_then_quit_stops_cleanly_and_leaves_a_resumable_session(tmp_path: Path):
    args = ["run", "--demo", "--iterations", "20", "--budget", "2", "--sessions-dir", str(tmp_path / "sessions")]
    term = Terminal(args, tmp_path)
    try:
        wait(lambda: b"LIVE" in term.output, 60, "the app to draw")

        def session() -> Path | None:
            return next((tmp_path / "sessions").iterdir(), None) if (tmp_path / "sessions").is_dir() else None

        wait(lambda: session() and any(isinstance(e, ev.TrainingProgress) for e in read_events(session())), 120,
             "a training run")
        term.type(b" ", settle=0.3)
        wait(lambda: any(isinstance(e, ev.PauseRequested) for e in read_events(session())), 30, "the pause")
        term.type(b"q", settle=0.3)  # a run is active: the app asks first
        term.type(b"\r", settle=0.3)  # Stop & quit
        assert term.proc.wait(60) == EXIT_UNFINISHED  # stopped with iterations left: resume continues it
    finally:
        term.close()
    events = read_events(session())
    assert [e.source for e in events if isinstance(e, ev.CommandReceived)] == ["tui", "tui"]
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["stopped"]
    state = fold(events)
    assert state.status == "stopped" and state.running is None  # `bilevel resume` re-runs the interrupted one
    assert b"bilevel resume" in term.output


def test_replay_in_a_terminal_opens_the_session_and_quits_at_once(tmp_path: Path):
    path = tmp_path / "recorded"
    asyncio.run(record_session(path, Plan(iterations=3, progress_per_run=3)))
    term = Terminal(["replay", str(path), "--speed", "instant"], tmp_path, size=(80, 24))
    try:
        wait(lambda: b"REPLAY" in term.output and b"completed" in term.output, 30, "the replay to draw")
        term.type(b"q", settle=0.3)
        assert term.proc.wait(30) == 0
    finally:
        term.close()

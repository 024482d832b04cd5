"""The log, the lock and the command files are the session's own regular files: a symbolic
link in their place is refused with a clear message, never followed (the audit: resume
appended a whole run to another session's log through a linked events.jsonl).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import channel, commands as cmds, layout
from core.record import events as ev
from core.record.session import SessionError, SessionReader, SessionWriter
from core.record.session_lock import LOCK_FILE, SessionLock
from tests.conftest import fast_config
from tests.support.cli import run_bilevel


def _finished_session(tmp_path: Path, name: str = "t") -> Path:
    engine = Engine.create(fast_config(tmp_path, name=name, **{"budget.iterations": 1}))
    asyncio.run(engine.run())
    return engine.dir


@pytest.fixture
def two_sessions(tmp_path) -> tuple[Path, Path]:
    """A session whose files the tests replace by links, and another session they point into."""
    return _finished_session(tmp_path, "mine"), _finished_session(tmp_path, "other")


def _link_log(mine: Path, other: Path) -> bytes:
    log = layout.events_path(mine)
    log.unlink()
    log.symlink_to(layout.events_path(other))
    return layout.events_path(other).read_bytes()


def _assert_refused(done, path: Path, what: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"bilevel: {path}: the {what} is a symbolic link"), done.stderr


@pytest.mark.parametrize("command", [["resume", "--iterations", "3", "--headless"], ["replay", "--headless"],
                                     ["attach"]])
def test_a_linked_event_log_is_refused_by_resume_replay_and_attach(two_sessions, tmp_path, command) -> None:
    mine, other = two_sessions
    before = _link_log(mine, other)
    done = run_bilevel(command[0], str(mine), *command[1:], cwd=tmp_path)
    _assert_refused(done, layout.events_path(mine), "event log")
    assert layout.events_path(other).read_bytes() == before  # the other session's log is untouched


def test_the_writer_never_appends_through_a_linked_log(two_sessions) -> None:
    mine, other = two_sessions
    before = _link_log(mine, other)
    with pytest.raises(SessionError, match="event log is a symbolic link"):
        SessionWriter(mine)
    assert layout.events_path(other).read_bytes() == before


def test_a_linked_lock_is_refused_and_its_target_untouched(two_sessions, tmp_path) -> None:
    mine, other = two_sessions
    target = tmp_path / "precious.txt"
    target.write_text("not a lock\n")
    (mine / LOCK_FILE).unlink()
    (mine / LOCK_FILE).symlink_to(target)
    with pytest.raises(SessionError, match="session lock is a symbolic link"):
        SessionLock.acquire(mine)
    for command in (["resume", "--iterations", "3", "--headless"], ["attach"]):
        done = run_bilevel(command[0], str(mine), *command[1:], cwd=tmp_path)
        _assert_refused(done, mine / LOCK_FILE, "session lock")
    assert target.read_text() == "not a lock\n"  # never truncated into a pid


def test_a_linked_command_folder_is_refused(two_sessions, tmp_path) -> None:
    mine, other = two_sessions
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = layout.commands_dir(mine)
    if folder.exists():
        folder.rmdir()
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SessionError, match="command folder is a symbolic link"):
        channel.write_command(mine, cmds.Pause())
    for command in (["resume", "--iterations", "3", "--headless"], ["attach"]):
        done = run_bilevel(command[0], str(mine), *command[1:], cwd=tmp_path)
        _assert_refused(done, folder, "command folder")
    assert list(elsewhere.iterdir()) == []


def test_a_linked_command_file_is_refused_and_its_target_neither_run_nor_deleted(tmp_path) -> None:
    session = tmp_path / "s"
    channel.write_command(session, cmds.SetGuidance(guidance="honest"))
    target = tmp_path / "stop.json"  # a valid command somewhere else
    target.write_text('{"command": "stop", "args": {}}')
    (layout.commands_dir(session) / "00000000000000000000-1-aaaaaa.json").symlink_to(target)
    got: list = []
    assert channel.take_pending(session, lambda c, source: got.append(c)) == 2
    refused, honest = got
    assert isinstance(refused, cmds.Unreadable) and "symbolic link" in refused.error
    assert refused.name == "" and refused.args == {}  # nothing was read through the link
    assert isinstance(honest, cmds.SetGuidance)
    assert target.read_text() == '{"command": "stop", "args": {}}'
    kept = [p.name for p in layout.commands_dir(session).iterdir()]
    assert kept == ["00000000000000000000-1-aaaaaa.invalid"]
    assert os.path.islink(layout.commands_dir(session) / kept[0])


async def test_a_linked_command_file_reaches_the_engine_as_a_refusal(tmp_path) -> None:
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 1}))
    target = tmp_path / "stop.json"
    target.write_text('{"command": "stop", "args": {"reason": "through a link"}}')
    folder = layout.commands_dir(engine.dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "00000000000000000000-1-aaaaaa.json").symlink_to(target)
    state = await engine.run()
    assert state.status == "completed"  # the linked stop never ran
    received = [e for e in SessionReader(engine.dir).events() if isinstance(e, ev.CommandReceived)]
    assert len(received) == 1 and not received[0].ok and "symbolic link" in received[0].error

"""Detach and attach: viewers come and go through the session folder; the engine never notices.

The engine runs in its own process (its own process group) and takes commands from the
session's command channel. Viewers attach by following ``events.jsonl``: one is a real
``bilevel attach`` process on a pseudo-terminal that is killed with SIGKILL mid-session,
the others run in-process under Pilot and send every command there is.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import core.engine.engine
from core.record import commands as cmds
from core.record import events as ev
from core.record.channel import pending_commands
from tests.support.patience import patience
from tests.support.terminal import ROOT, Terminal
from tui.app import BilevelApp
from tui.screens.approval import ApprovalScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.guidance import GuidanceScreen
from tui.screens.params import FreezeScreen
from tui.sources import TailSource


_READ: dict[Path, tuple[int, list[ev.Event]]] = {}


def read_events(session: Path) -> list[ev.Event]:
    """Every whole line so far, read on from where the last call stopped (a wait polls this while the
    engine writes ~250 progress events a second: re-reading the whole log each time starves the viewer)."""
    path = session / "events.jsonl"
    if not path.exists():
        return []
    offset, seen = _READ.get(session, (0, []))
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    whole = chunk[:chunk.rfind(b"\n") + 1]
    seen = seen + [ev.decode(line) for line in whole.splitlines() if line.strip()]
    _READ[session] = (offset + len(whole), seen)
    return seen


def acks(session: Path, command: str | None = None) -> list[ev.CommandReceived]:
    return [e for e in read_events(session) if isinstance(e, ev.CommandReceived)
            and (command is None or e.command == command)]


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + patience(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def until(pilot: Any, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience(timeout)
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.03)


async def press(app: BilevelApp, *keys: str) -> None:
    """Keys as a terminal sends them (Pilot.press waits for an idle process, which a busy viewer never is)."""
    from textual import events as tx_events
    from textual.keys import _character_to_key

    for key in keys:
        char = key if len(key) == 1 else {"space": " ", "enter": "\r", "tab": "\t"}.get(key)
        name = _character_to_key(key) if len(key) == 1 else key
        app._driver.send_message(tx_events.Key(name, char))
        await asyncio.sleep(0.05)


def nothing_to_abort(app: BilevelApp) -> bool:
    return any("nothing to abort" in str(n.message) for n in app._notifications)


def on_screen(app: BilevelApp, kind: type) -> Callable[[], bool]:
    return lambda: isinstance(app.screen, kind) and app.screen.is_mounted and bool(app.screen.query("*"))


def attach_on_a_terminal(session: Path) -> Terminal:
    """``bilevel attach SESSION`` on a pseudo-terminal."""
    return Terminal(["attach", str(session)], ROOT, env={"COLORTERM": "", "BILEVEL_TUI_DETERMINISTIC": "1"})


def start_scripted_engine(session: Path, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "engine.out", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.scripted_engine", str(session), "--iterations", "400", "--step", "0.004",
         "--progress", "250", "--approval", "manual", "--outer-period", "2"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def attached(session: Path, body: Callable[[BilevelApp, Any], Any]) -> BilevelApp:
    app = BilevelApp(TailSource(session, poll_s=0.02), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.caught_up(20)
        await body(app, pilot)
    return app


async def test_viewers_come_and_go_and_send_every_command_while_the_engine_runs_on(tmp_path: Path):
    session = tmp_path / "sessions" / "detached"
    engine = start_scripted_engine(session, tmp_path)
    try:
        wait(lambda: read_events(session), 15, "the engine's first events")

        # 1. a real viewer on a terminal pauses the run, then is killed -9
        viewer = attach_on_a_terminal(session)
        wait(lambda: b"ATTACHED" in viewer.output, 30, "the attached viewer to draw")
        viewer.type(b" ")
        wait(lambda: acks(session, "pause"), 15, "the pause to reach the engine")
        viewer.close()
        assert engine.poll() is None
        wait(lambda: any(isinstance(e, ev.Paused) for e in read_events(session)), 15, "the engine to pause")

        # 2. a second viewer sees the pause, resumes, and sends every other command
        async def every_command(app: BilevelApp, pilot: Any) -> None:
            await until(pilot, lambda: app.model.status == "paused", what="the paused state from the log")
            await press(app, "space")
            await until(pilot, lambda: app.model.status == "running", what="resumed")
            await press(app, "g")
            await until(pilot, on_screen(app, GuidanceScreen))
            app.screen.query_one("TextArea").text = "guidance from an attached viewer"
            await press(app, "ctrl+s")
            await until(pilot, lambda: app.model.state.guidance == "guidance from an attached viewer")
            for want_frozen in (True, False):
                await press(app, "f")
                await until(pilot, on_screen(app, FreezeScreen))
                options = app.screen.query_one("OptionList")
                options.highlighted = options.get_option_index("MATRIX_LR")
                await press(app, "enter")
                await until(pilot, lambda: ("MATRIX_LR" in app.model.state.frozen) is want_frozen)
            await until(pilot, lambda: bool(app.model.pending), what="a mechanism to approve")
            first = next(iter(app.model.pending))
            await press(app, "v")
            await until(pilot, on_screen(app, ApprovalScreen))
            await press(app, "a")
            await until(pilot, lambda: app.model.research[first].finished is not None, what="approval")
            await until(pilot, lambda: bool(app.model.pending), what="a mechanism to reject")
            second = next(iter(app.model.pending))
            await press(app, "v")
            await until(pilot, on_screen(app, ApprovalScreen))
            await press(app, "r")
            await until(pilot, lambda: app.model.research[second].finished is not None, what="rejection")
            # The abort names the run the viewer showed: if that run ended before the command got
            # there (a busy machine), the engine refuses it rather than cancel the next run.
            def answered(it: int) -> list[ev.CommandReceived]:
                return [a for a in acks(session, "abort_training") if a.args.get("iteration") == it]

            for _ in range(10):
                await until(pilot, lambda: app.model.training_iteration is not None, what="a training run")
                aborted = app.model.training_iteration
                app.clear_notifications()  # so "nothing to abort" below is this key's answer
                await press(app, "x")
                # the run may have ended before the key got there: then there is nothing to confirm
                await until(pilot, lambda: on_screen(app, ConfirmScreen)() or nothing_to_abort(app),
                            what="the abort dialog or the note that nothing runs")
                if not on_screen(app, ConfirmScreen)():
                    continue
                await press(app, "enter")
                await until(pilot, lambda: answered(aborted), what="the abort's answer")
                if answered(aborted)[0].ok:
                    break
                # refused: that run ended first (and maybe the next had not started yet)
                assert "no longer in progress" in answered(aborted)[0].error \
                    or "no training run is in progress" in answered(aborted)[0].error
            await until(pilot, lambda: app.model.rows[aborted].phase == "cancelled", what="the aborted run")
            # quitting a viewer asks: detach (the default) leaves the engine running
            await press(app, "q")
            await until(pilot, on_screen(app, ConfirmScreen))
            await press(app, "enter")
            await until(pilot, lambda: not app.is_running, what="the viewer to close")

        await attached(session, every_command)
        assert engine.poll() is None
        before = len(read_events(session))
        wait(lambda: len(read_events(session)) > before + 20, 15, "the engine to carry on without viewers")

        # 3. a third viewer stops the engine cleanly; the session stays resumable
        async def stop_engine(app: BilevelApp, pilot: Any) -> None:
            await press(app, "q")
            await until(pilot, on_screen(app, ConfirmScreen))
            await press(app, "tab", "enter")  # the second answer: stop the engine
            await until(pilot, lambda: not app.is_running, timeout=30, what="the viewer to close after the stop")

        await attached(session, stop_engine)
        assert engine.wait(30) == 0
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait(10)

    events = read_events(session)
    commands = [e for e in events if isinstance(e, ev.CommandReceived)]
    # an abort that reached the engine after its run had ended was refused and retried on the next run
    late = [c for c in commands if c.command == "abort_training" and not c.ok]
    assert all("in progress" in c.error for c in late)
    commands = [c for c in commands if c not in late]
    assert [c.command for c in commands] == [
        "pause", "resume", "set_guidance", "freeze", "unfreeze", "approve_mechanism", "reject_mechanism",
        "abort_training", "stop"]
    assert all(c.ok and c.source == "channel" for c in commands), [c for c in commands if not c.ok]
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["stopped"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # one writer, nothing lost or torn
    assert pending_commands(session) == [] and not list((session / "commands").glob("*.invalid"))


def test_attach_refuses_without_a_terminal_and_names_the_problem(tmp_path: Path):
    session = tmp_path / "s"
    session.mkdir()
    (session / "events.jsonl").write_text(json.dumps({"seq": 1, "ts": 1.0, "type": "session_started"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "core.cli", "attach", str(session)], cwd=ROOT,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 2
    assert "terminal" in out.stderr
    missing = subprocess.run([sys.executable, "-m", "core.cli", "attach", str(tmp_path / "nope")], cwd=ROOT,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert missing.returncode == 2 and "no session" in missing.stderr


def test_headless_paths_never_import_textual(tmp_path: Path):
    code = ("import sys; from core import cli; cli.main(['replay', '--headless', sys.argv[1]]); "
            "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))")
    session = tmp_path / "s"
    session.mkdir()
    (session / "events.jsonl").write_text(json.dumps({"seq": 1, "ts": 1.0, "type": "session_started",
                                                      "session": "s"}) + "\n")
    out = subprocess.run([sys.executable, "-c", code, str(session)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


ENGINE_WATCHES_CHANNEL = "watch_commands" in inspect.getsource(core.engine.engine)


def detach_demo(tmp_path: Path, iterations: int) -> tuple[Path, int]:
    """``bilevel run --detach --demo``: returns the session folder it printed and the engine's pid."""
    out = subprocess.run([sys.executable, "-m", "core.cli", "run", "--detach", "--demo", "--iterations",
                          str(iterations), "--budget", "2", "--sessions-dir", str(tmp_path / "sessions")], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    session = Path(out.stdout.strip().splitlines()[-1])
    assert session.is_dir() and "bilevel attach" in out.stderr
    return session, int((session / "engine.pid").read_text())


def test_detached_demo_engine_outlives_a_killed_viewer(tmp_path: Path):
    session, pid = detach_demo(tmp_path, iterations=1)
    try:
        assert os.getpgid(pid) == pid != os.getpgid(0)  # its own process group: the shell's signals miss it
        wait(lambda: any(isinstance(e, ev.SessionStarted) for e in read_events(session)), 60, "the session start")
        viewer = attach_on_a_terminal(session)
        wait(lambda: b"ATTACHED" in viewer.output, 30, "the attached viewer to draw")
        viewer.close()
        os.kill(pid, 0)  # the engine did not notice
        wait(lambda: any(isinstance(e, ev.RunFinished) for e in read_events(session)), 150, "the run to finish")
        wait(lambda: _gone(pid), 30, "the engine process to exit")
    finally:
        if not _gone(pid):
            os.killpg(pid, signal.SIGKILL)
    events = read_events(session)
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["completed"]
    assert (session / "engine.log").read_text().count("run completed") == 1


@pytest.mark.skipif(not ENGINE_WATCHES_CHANNEL, reason="core.engine.engine does not start core.record.channel.watch_commands yet")
def test_detached_demo_engine_takes_commands_from_attached_viewers(tmp_path: Path):
    session, pid = detach_demo(tmp_path, iterations=30)
    try:
        wait(lambda: any(isinstance(e, ev.IterationStarted) for e in read_events(session)), 120, "the first run")
        viewer = attach_on_a_terminal(session)
        wait(lambda: b"ATTACHED" in viewer.output, 30, "the attached viewer to draw")
        viewer.type(b" ")
        wait(lambda: acks(session, "pause"), 30, "the pause to reach the engine")
        viewer.close()
        os.kill(pid, 0)  # still running

        async def commands(app: BilevelApp, pilot: Any) -> None:
            for command in (cmds.Resume(), cmds.SetGuidance(guidance="from the attached viewer"),
                            cmds.Freeze(name="MATRIX_LR"), cmds.Unfreeze(name="MATRIX_LR")):
                await app.send(command)
            await until(pilot, lambda: app.model.state.guidance == "from the attached viewer", timeout=60)
            await until(pilot, lambda: len(acks(session)) >= 5, timeout=60, what="every acknowledgement")
            await app.send(cmds.Stop(now=True))
            await until(pilot, lambda: app.model.finished is not None, timeout=120, what="the stop")

        asyncio.run(attached(session, commands))
        wait(lambda: _gone(pid), 60, "the engine process to exit")
    finally:
        if not _gone(pid):
            os.killpg(pid, signal.SIGKILL)
    events = read_events(session)
    commands = [c for c in events if isinstance(c, ev.CommandReceived)]
    assert [c.command for c in commands] == ["pause", "resume", "set_guidance", "freeze", "unfreeze", "stop"]
    assert all(c.ok and c.source == "channel" for c in commands), [c for c in commands if not c.ok]
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["stopped"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False
    return False

"""Every control of the app, driven by key presses against a running engine.

The engine here is :class:`tests.support.scripted_engine.ScriptedEngine`: it has the engine's command
surface (``submit``/``subscribe``), writes a real session and answers commands with the
engine's events, so each test checks what the engine *received* and what it *did*.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from textual import events as tx_events
from textual.keys import _character_to_key

from core.record import commands as cmds
from core.record import events as ev
from core.record.session import SessionReader
from tui.app import BilevelApp
from tui.widgets.header import StatusHeader
from tui.screens.approval import ApprovalScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.guidance import GuidanceScreen
from tui.screens.help import HelpScreen
from tui.screens.params import FreezeScreen
from tui.sources import LiveSource, ReplaySource
from tests.support.patience import patience
from tests.support.scripted_engine import Plan, ScriptedEngine, StepClock, record_session

SIZE = (120, 40)


def on_screen(app: BilevelApp, kind: type) -> Callable[[], bool]:
    """True once a screen of ``kind`` is on top and composed."""
    return lambda: isinstance(app.screen, kind) and app.screen.is_mounted and bool(app.screen.query("*"))


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience(timeout)
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


async def press(app: BilevelApp, *keys: str, settle: float = 0.05) -> None:
    """Key presses as the terminal sends them. Unlike ``Pilot.press`` this does not wait for the
    process to go idle, which a running engine never does."""
    for key in keys:
        char = key if len(key) == 1 else {"space": " ", "enter": "\r", "full_stop": "."}.get(key)
        name = _character_to_key(key) if len(key) == 1 else key
        app._driver.send_message(tx_events.Key(name, char))
        await asyncio.sleep(settle)


async def type_text(app: BilevelApp, text: str) -> None:
    await press(app, *text, settle=0.005)
    await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def live_app(path: Path, plan: Plan, **app_kw: Any) -> AsyncIterator[tuple[BilevelApp, Any, ScriptedEngine]]:
    engine = ScriptedEngine(path, plan, clock=StepClock())
    source = LiveSource(engine)
    task = asyncio.create_task(engine.run())
    source.engine_task = task
    app = BilevelApp(source, deterministic=True, **app_kw)
    try:
        async with app.run_test(size=SIZE) as pilot:
            yield app, pilot, engine
    finally:
        if not task.done():
            engine.request_stop("test over", hard=True)
        await asyncio.wait_for(task, patience(10))


def received(engine: ScriptedEngine, command: str) -> list[ev.CommandReceived]:
    return [e for e in SessionReader(engine.dir).events() if isinstance(e, ev.CommandReceived) and e.command == command]


def logged(engine: ScriptedEngine, kind: type) -> list[Any]:
    return [e for e in SessionReader(engine.dir).events() if isinstance(e, kind)]


SLOW = dict(iterations=200, step_s=0.004, progress_per_run=150, crash_at=None)


async def test_space_pauses_showing_pausing_until_paused_and_space_resumes(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    shown: list[str] = []
    render = StatusHeader.render

    def recording_render(self: StatusHeader) -> Any:
        text = render(self)
        shown.append(text.plain.splitlines()[0].rsplit("●", 1)[-1].strip())
        return text

    monkeypatch.setattr(StatusHeader, "render", recording_render)
    async with live_app(tmp_path / "s", Plan(**{**SLOW, "progress_per_run": 300})) as (app, pilot, engine):
        await until(pilot, lambda: app.model.training_iteration not in (None, 0), what="a training run")
        await press(app, "space")
        await until(pilot, lambda: app.model.status == "paused", what="Paused")
        await app._repaint()
        paused_at = app.model.state.next_iteration
        await pilot.pause(0.3)
        assert app.model.state.running is None and app.model.state.next_iteration == paused_at  # nothing ran
        await press(app, "space")
        await until(pilot, lambda: app.model.status == "running" and app.model.state.running is not None)
        await app._repaint()
        await pilot.pause()  # the header painted since
    # the header said "pausing…" from the key press until the engine had paused, then "paused";
    # "resuming…" after the second press, if a paint falls before the engine's answer
    states = [s for i, s in enumerate(shown) if i == 0 or s != shown[i - 1]]
    after = states[states.index("pausing…"):]
    assert after[:2] == ["pausing…", "paused"]
    assert after[2:3] == ["running"] or after[2:4] == ["resuming…", "running"], after
    assert [c.source for c in received(engine, "pause")] == ["tui"]
    assert [c.ok for c in received(engine, "resume")] == [True]
    assert len(logged(engine, ev.Paused)) == 1 and len(logged(engine, ev.Unpaused)) == 1


async def test_abort_asks_then_cancels_only_the_running_training(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: (app.model.training_iteration or 0) >= 1, what="training")
        it = app.model.training_iteration
        await press(app, "x")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "enter")  # the focused first answer: abort
        await until(pilot, lambda: app.model.rows.get(it) is not None and app.model.rows[it].phase == "cancelled",
                    what="the cancelled verdict")
        await until(pilot, lambda: app.model.state.running not in (None, it), what="the next iteration")
    assert [c.ok for c in received(engine, "abort_training")] == [True]


async def test_abort_is_greyed_out_when_nothing_trains(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=SIZE):
        await app.caught_up()
        assert app.check_action("abort_training", ()) is False  # read-only
    engine = ScriptedEngine(tmp_path / "t", Plan(iterations=0))
    live = BilevelApp(LiveSource(engine), deterministic=True)
    assert live.check_action("abort_training", ()) is None
    engine.writer.close()


async def test_guidance_edited_in_the_modal_reaches_the_engine(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "", what="session start")
        await press(app, "g")
        await until(pilot, on_screen(app, GuidanceScreen))
        area = app.screen.query_one("TextArea")
        area.text = ""
        await type_text(app, "Try a longer warmdown.")
        await press(app, "ctrl+s")
        await until(pilot, lambda: app.model.state.guidance == "Try a longer warmdown.", what="GuidanceChanged")
        await press(app, "g")
        await until(pilot, on_screen(app, GuidanceScreen))
        await press(app, "escape")  # cancel sends nothing
        await pilot.pause(0.1)
    assert [c.args for c in received(engine, "set_guidance")] == [{"guidance": "Try a longer warmdown.", "pinned": False}]
    changed = logged(engine, ev.GuidanceChanged)
    assert changed[-1].source == "user" or any(e.guidance == "Try a longer warmdown." for e in changed)


async def test_guidance_can_be_edited_in_the_users_editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    script = "import sys; open(sys.argv[1], 'w').write('From the editor.\\n')"
    monkeypatch.setenv("EDITOR", f"{sys.executable} -c \"{script}\"")
    monkeypatch.delenv("VISUAL", raising=False)
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "")
        await press(app, "e")
        await until(pilot, lambda: app.model.state.guidance == "From the editor.", what="guidance from $EDITOR")
    assert [c.source for c in received(engine, "set_guidance")] == ["tui"]


async def test_a_failing_editor_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDITOR", f"{sys.executable} -c \"raise SystemExit(3)\"")
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "")
        await press(app, "e")
        await pilot.pause(0.2)
    assert received(engine, "set_guidance") == []


def param_state(app: BilevelApp, name: str) -> str:
    """The state column of a parameter's row, "" while the table has not drawn it yet."""
    table = app.query_one("#params-table")
    return str(table.get_row(name)[1]) if name in table.rows else ""


async def test_freeze_then_unfreeze_a_parameter_by_hand(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**SLOW, group="A")) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.schema != {})
        await press(app, "f")
        await until(pilot, on_screen(app, FreezeScreen))
        screen = app.screen
        options = screen.query_one("OptionList")
        assert options.get_option("DEPTH").disabled  # locked by the configuration
        options.highlighted = options.get_option_index("MATRIX_LR")
        await press(app, "enter")
        await until(pilot, lambda: "MATRIX_LR" in app.model.state.frozen, what="ParamFrozen")
        await until(pilot, lambda: "frozen" in param_state(app, "MATRIX_LR"), what="the frozen row on screen")
        await press(app, "f")
        await until(pilot, on_screen(app, FreezeScreen))
        options = app.screen.query_one("OptionList")
        options.highlighted = options.get_option_index("MATRIX_LR")
        await press(app, "enter")
        await until(pilot, lambda: "MATRIX_LR" not in app.model.state.frozen, what="ParamUnfrozen")
    assert [(c.command, c.args["name"], c.ok) for c in received(engine, "freeze") + received(engine, "unfreeze")] == [
        ("freeze", "MATRIX_LR", True), ("unfreeze", "MATRIX_LR", True)]
    assert [e.source for e in logged(engine, ev.ParamFrozen)] == ["user"]


async def test_pending_mechanism_is_approved_or_rejected_with_code_and_report_on_screen(tmp_path: Path):
    plan = Plan(iterations=40, step_s=0.002, progress_per_run=4, approval="manual", outer_period=2, crash_at=None)
    async with live_app(tmp_path / "s", plan) as (app, pilot, engine):
        await until(pilot, lambda: bool(app.model.pending), what="a pending mechanism")
        await app._repaint()
        assert "to approve (v)" in app.screen_text().splitlines()[0]
        first = next(iter(app.model.pending))
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await pilot.pause(0.1)
        shown = app.screen_text()
        assert "class TabuMemory1(Mechanism)" in shown and "dry run" in shown
        await press(app, "a")
        await until(pilot, lambda: "TabuMemory1" in app.model.active_mechanisms, what="activation")
        await until(pilot, lambda: bool(app.model.pending) and first not in app.model.pending, what="second")
        second = next(iter(app.model.pending))
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await press(app, "r")
        await until(pilot, lambda: app.model.research[second].finished is not None, what="declined")
        assert app.model.research[second].finished.outcome == "declined"
    assert [c.args["research_id"] for c in received(engine, "approve_mechanism")] == [first]
    assert [c.args["research_id"] for c in received(engine, "reject_mechanism")] == [second]


async def test_quit_while_running_asks_then_stops_cleanly_and_the_session_stays_resumable(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: (app.model.training_iteration or 0) >= 1)
        await press(app, "q")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "escape")  # cancelled: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the dialog to close")
        assert received(engine, "stop") == []
        await press(app, "q", "enter")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    finished = logged(engine, ev.RunFinished)
    assert [f.status for f in finished] == ["stopped"]
    assert [c.args.get("now") for c in received(engine, "stop")] == [True]
    assert logged(engine, ev.IterationInterrupted)  # the cut-short iteration is re-run on resume


async def test_quit_after_the_run_finished_does_not_ask(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(iterations=1, progress_per_run=2)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.finished is not None)
        await press(app, "q")
        await until(pilot, lambda: not app.is_running)


async def test_replay_is_read_only_and_space_pauses_the_replay(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=3, progress_per_run=3))
    source = ReplaySource(path, speed=1.0, follow=False)
    app = BilevelApp(source, deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        for key in ("g", "f", "x", "e", "v"):
            await pilot.press(key)
            assert app.screen is app.screen_stack[0], key
        await pilot.press("space")
        assert source.paused
        assert "⏸" in app.screen_text().splitlines()[0]
        await pilot.press("space")
        assert not source.paused


async def test_replay_speed_step_and_seek_keys(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=6, progress_per_run=3))
    # The replay's clock stands still: at any speed only what is due at its start is handed over, so
    # what a step or a seek shows depends on the keys alone, never on how fast the machine pressed them
    clock = StepClock(start=0.0)
    source = ReplaySource(path, speed=1.0, follow=False, clock=clock)
    app = BilevelApp(source, deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("plus", "plus")
        assert source.speed == 100.0
        await pilot.press("minus")
        assert source.speed == 10.0
        await pilot.press("full_stop")  # step: pauses at the end of the next iteration
        await until(pilot, lambda: app.model.rows.get(0) is not None and app.model.rows[0].final)
        assert source.paused and 1 not in app.model.rows
        await pilot.press("full_stop")
        await until(pilot, lambda: 1 in app.model.rows and app.model.rows[1].final)
        await pilot.press("i", "5", "enter")  # seek forward
        await until(pilot, lambda: 5 in app.model.rows and app.model.rows[5].final)
        await pilot.press("i", "2", "enter")  # seek back: the screen starts over and stops at #2
        await until(pilot, lambda: max(app.model.rows, default=-1) == 2 and app.model.rows[2].final)
        await app.caught_up()
        assert app.query_one("#trace-table").row_count == 3


async def settled_screen(app: BilevelApp, pilot: Any, quiet_s: float = 0.3) -> str:
    """The screen once it stops changing: scrolling to the end of a pane happens after a refresh,
    later on a busy machine than any fixed pause."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience(60)
    screen = app.screen_text()
    while loop.time() < deadline:
        await pilot.pause(quiet_s)
        again = app.screen_text()
        if again == screen:
            return screen
        screen = again
    raise AssertionError("the screen never settled")


async def test_replay_reaches_the_same_final_screen_as_the_live_run(tmp_path: Path):
    path = tmp_path / "same"
    plan = Plan(iterations=8, step_s=0.001, progress_per_run=5, outer_period=3)
    async with live_app(path, plan) as (app, pilot, engine):
        await until(pilot, lambda: app.model.finished is not None, what="the run's end")
        await app.caught_up()
        live_screen = (await settled_screen(app, pilot)).splitlines()
    replay = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with replay.run_test(size=SIZE) as pilot:
        await replay.caught_up()
        replay_screen = (await settled_screen(replay, pilot)).splitlines()
    # the first line names the mode (LIVE / REPLAY) and the footer lists each mode's keys
    assert live_screen[1:-1] == replay_screen[1:-1]
    assert "LIVE" in live_screen[0] and "REPLAY" in replay_screen[0]


async def test_config_change_is_offered_and_applied_on_reload(tmp_path: Path):
    config = tmp_path / "exp.toml"
    config.write_text('[search]\nguidance = "first"\n[budget]\niterations = 200\ntime_s = 300\n')
    async with live_app(tmp_path / "s", Plan(**SLOW), config_path=config) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "")
        assert app.check_action("reload_config", ()) is False
        await pilot.pause(0.3)
        config.write_text('[search]\nguidance = "edited in the file"\n[budget]\niterations = 200\ntime_s = 300\n')
        await until(pilot, lambda: app.config_change is not None, timeout=10, what="the config watcher")
        assert app.config_change == {"guidance": "edited in the file"}
        await press(app, "r")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "enter")
        await until(pilot, lambda: app.model.state.guidance == "edited in the file", what="GuidanceChanged")
        assert app.config_change is None


async def test_maximise_focus_and_help(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        await pilot.press("3", "z")
        assert app.screen.maximized is app.query_one("#research")
        await pilot.press("z")
        assert app.screen.maximized is None
        await pilot.press("4", "z", "escape")
        assert app.screen.maximized is None
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        ids = {bid for _, _, bid in app.screen.keys}
        assert {"pause", "replay.step", "maximize", "help", "quit"}.issubset(ids)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_panes_resize_by_dragging_the_bars_and_by_keys(tmp_path: Path):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=2, progress_per_run=2))
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.caught_up()
        left = app.base.query_one("#left-col")
        trace = app.base.query_one("#trace")
        width, height = left.outer_size.width, trace.outer_size.height
        bar = app.base.query_one("#split-main").region
        target = (bar.x - 30, bar.y + 5)  # screen coordinates: the bar moves with the drag
        await pilot.mouse_down("#split-main")
        await pilot.hover(None, offset=target)
        await pilot.mouse_up(None, offset=target)
        await pilot.pause()
        assert left.outer_size.width == pytest.approx(width - 30, abs=2)
        await pilot.press("1", "ctrl+right", "ctrl+right")
        await pilot.pause()
        assert left.outer_size.width == pytest.approx(width - 30 + 8, abs=2)
        await pilot.press("ctrl+down")
        await pilot.pause()
        assert trace.outer_size.height == pytest.approx(height + 2, abs=1)
        await pilot.press("l")  # the event log gives its rows to the panes
        await pilot.pause()
        assert not app.base.query_one("#events").display and trace.outer_size.height > height + 2


async def test_every_action_is_in_the_command_palette(tmp_path: Path):
    engine = ScriptedEngine(tmp_path / "live", Plan(iterations=0))
    live = BilevelApp(LiveSource(engine), deterministic=True)
    async with live.run_test(size=SIZE):
        live.config_change = {"guidance": "x"}
        live.model.apply(ev.MechanismPending(research_id="r1", name="M"))  # one waits for approval
        live.model.apply(ev.TrainingStarted(iteration=1))  # and a run trains
        titles = {c.title for c in live.get_system_commands(live.screen)}
    engine.writer.close()
    for title in ("Pause / resume", "Abort the training run", "Stop the run", "Edit guidance",
                  "Edit guidance in $EDITOR", "Freeze / unfreeze a parameter", "Review pending mechanism",
                  "Reload config", "Maximise / restore pane", "Help", "Quit"):
        assert title in titles
    assert "Replay: step" not in titles
    path = tmp_path / "rec"
    await record_session(path, Plan(iterations=1, progress_per_run=2))
    replay = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with replay.run_test(size=SIZE):
        titles = {c.title for c in replay.get_system_commands(replay.screen)}
    assert {"Replay: step", "Replay: faster", "Replay: seek to iteration"}.issubset(titles)
    assert "Edit guidance" not in titles and "Freeze / unfreeze a parameter" not in titles


async def test_a_users_keymap_remaps_a_binding_by_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('[keymap]\npause = "p"\n')
    monkeypatch.setenv("BILEVEL_KEYMAP", str(keymap))
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "")
        await press(app, "p")
        await until(pilot, lambda: app.model.state.pause_requested or app.model.state.paused)
    assert len(received(engine, "pause")) == 1


async def test_refused_command_is_reported(tmp_path: Path):
    async with live_app(tmp_path / "s", Plan(**SLOW)) as (app, pilot, engine):
        await until(pilot, lambda: app.model.state.session != "")
        await app.send(cmds.Freeze(name="NOT_A_PARAM"))
        await until(pilot, lambda: bool(received(engine, "freeze")))
        await until(pilot, lambda: any(n.severity == "error" for n in app._notifications), what="an error toast")
    assert received(engine, "freeze")[0].ok is False


@contextlib.asynccontextmanager
async def real_engine_app(cfg: Any, **app_kw: Any) -> AsyncIterator[tuple[BilevelApp, Any, Any, asyncio.Task]]:
    """The app on the product's engine, in-process; the engine is stopped if the test leaves it running."""
    from core.engine.engine import Engine

    engine = Engine.create(cfg)
    source = LiveSource(engine)
    engine.log = source.log
    task = asyncio.create_task(engine.run())
    source.engine_task = task
    app = BilevelApp(source, deterministic=True, **app_kw)
    try:
        async with app.run_test(size=SIZE) as pilot:
            yield app, pilot, engine, task
    finally:
        if not task.done():
            engine.request_stop("test over", hard=True)
            await asyncio.wait_for(task, patience(60))


@pytest.mark.slow  # the demo engine trains tiny models in subprocesses
async def test_every_control_reaches_the_real_demo_engine(tmp_path: Path):
    """The same keys against the product's engine: the offline demo, training real (tiny) models on the CPU."""
    from core.record.config import demo_config

    cfg = demo_config(**{"run.sessions_dir": str(tmp_path / "sessions"), "budget.iterations": 50,
                         "budget.time_s": 2.0})
    async with real_engine_app(cfg) as (app, pilot, engine, task):
        await until(pilot, lambda: (app.model.training_iteration or 0) >= 1, timeout=120, what="iteration 1")
        await press(app, "g")
        await until(pilot, on_screen(app, GuidanceScreen))
        app.screen.query_one("TextArea").text = "Keep the batch size."
        await press(app, "ctrl+s")
        await until(pilot, lambda: app.model.state.guidance == "Keep the batch size.", what="GuidanceChanged")
        for frozen in (True, False):
            await press(app, "f")
            await until(pilot, on_screen(app, FreezeScreen))
            options = app.screen.query_one("OptionList")
            options.highlighted = options.get_option_index("MATRIX_LR")
            await press(app, "enter")
            await until(pilot, lambda: ("MATRIX_LR" in app.model.state.frozen) is frozen, what="(un)freeze")
        await until(pilot, lambda: app.model.training_iteration is not None, timeout=60, what="a training run")
        aborted = app.model.training_iteration
        await press(app, "x")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "enter")
        await until(pilot, lambda: app.model.rows[aborted].final, timeout=60, what="the aborted verdict")
        assert app.model.rows[aborted].phase == "cancelled"
        await press(app, "space")
        await until(pilot, lambda: app.model.status in ("pausing…", "paused"), what="the pause request")
        await until(pilot, lambda: app.model.status == "paused", timeout=60, what="Paused")
        await press(app, "space")
        await until(pilot, lambda: app.model.status == "running", timeout=30, what="Unpaused")
        await press(app, "q")
        await until(pilot, on_screen(app, ConfirmScreen))
        await press(app, "enter")
        await until(pilot, lambda: not app.is_running, timeout=60, what="the app to close")
        state = await asyncio.wait_for(task, patience(60))
    assert state.status == "stopped"
    acks_ = [e for e in SessionReader(engine.dir).events() if isinstance(e, ev.CommandReceived)]
    assert [a.command for a in acks_] == ["set_guidance", "freeze", "unfreeze", "abort_training", "pause", "resume",
                                         "stop"]
    assert all(a.ok and a.source == "tui" for a in acks_), [a for a in acks_ if not a.ok]


def _colours(svg: str) -> set[tuple[int, int, int]]:
    import re

    return {(int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in re.findall(r"fill: #([0-9a-f]{6})", svg)}


async def test_no_color_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "s"
    await record_session(path, Plan(iterations=3, progress_per_run=2))
    shots = {}
    for no_color in (False, True):
        if no_color:
            monkeypatch.setenv("NO_COLOR", "1")
        app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
        async with app.run_test(size=SIZE):
            await app.caught_up()
            assert app.no_color is no_color
            shots[no_color] = _colours(app.export_screenshot())

    def grey(c: tuple[int, int, int]) -> bool:
        return max(c) - min(c) <= 8

    assert not all(grey(c) for c in shots[False])  # the check can see colour
    assert all(grey(c) for c in shots[True]), sorted(c for c in shots[True] if not grey(c))


async def test_an_engine_that_crashes_is_reported_not_hidden(tmp_path: Path):
    class Broken(ScriptedEngine):
        async def run(self):  # type: ignore[override]
            self.emit(ev.SessionStarted(session="broken", levels=["inner"]))
            raise RuntimeError("a bug in the engine")

    engine = Broken(tmp_path / "s", Plan(iterations=1))
    source = LiveSource(engine)
    source.engine_task = asyncio.create_task(engine.run())
    app = BilevelApp(source, deterministic=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("a bug in the engine" in str(n.message) for n in app._notifications),
                    what="the error toast")
        assert "engine stopped with an error" in app.screen_text().splitlines()[0]
        await press(app, "q")  # nothing runs any more: no question asked
        await until(pilot, lambda: not app.is_running)
    with pytest.raises(RuntimeError):
        source.engine_task.result()
    engine.writer.close()


async def test_approve_and_reject_reach_the_real_engine(tmp_path: Path):
    """Offline Level 2 in manual mode on the product's engine: v shows the mechanism, a/r decide."""
    from tests.conftest import fast_config

    cfg = fast_config(tmp_path, **{"search.group": "D", "search.outer_period": 1, "search.research_period": 1,
                                   "level2.approval": "manual", "budget.iterations": 500})
    async with real_engine_app(cfg) as (app, pilot, engine, task):
        await until(pilot, lambda: bool(app.model.pending), timeout=60, what="a pending mechanism")
        first = next(iter(app.model.pending))
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await press(app, "a")
        await until(pilot, lambda: bool(app.model.active_mechanisms), timeout=60, what="activation")
        await until(pilot, lambda: bool(app.model.pending) and first not in app.model.pending,
                    timeout=60, what="a second pending mechanism")
        second = next(iter(app.model.pending))
        await press(app, "v")
        await until(pilot, on_screen(app, ApprovalScreen))
        await press(app, "r")
        await until(pilot, lambda: app.model.research[second].finished is not None, timeout=60, what="declined")
        engine.request_stop("test over", hard=True)
        await asyncio.wait_for(task, patience(60))
    events = list(SessionReader(engine.dir).events())
    acks = [(e.command, e.args.get("research_id"), e.ok) for e in events if isinstance(e, ev.CommandReceived)]
    assert acks == [("approve_mechanism", first, True), ("reject_mechanism", second, True)]
    outcomes = {e.research_id: e.outcome for e in events if isinstance(e, ev.ResearchFinished)}
    assert outcomes[first] == "activated" and outcomes[second] == "declined"

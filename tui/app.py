"""The bilevel terminal app: every pane is a view of the engine's event stream.

One worker consumes events from a :mod:`tui.sources` source into the view model; a timer
repaints the stale parts (:mod:`tui.repaint`: one pane or the header a tick, each ten times a
second, a key's frame first), so a flood of progress lines and tokens costs a few repaints a
second and no frame is the whole screen's. Commands go back through the source: to the engine in
this process, or through the session's command channel to a detached one. Replays are read-only.

Set ``BILEVEL_TUI_DETERMINISTIC=1`` for screenshots and snapshot tests: no wall clock
(times come from the events), no blinking cursor, no animation, no user keymap. Keys and
the command palette are :mod:`tui.keys`'s. Over ~500 lines because every action of the
app (run control, guidance, freezes, approvals, config reload, replay, layout, quitting)
is a method of the one App class, each a few lines that open a screen and send a command.
"""
from __future__ import annotations

import asyncio
import gc
import io
import os
import shlex
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import textual.screen
from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget

from core.record import commands as cmds
from core.record.safe_text import safe_block, safe_line

from .keys import BINDINGS as KEY_BINDINGS
from .keys import PALETTE, deterministic_from_env, keymap_path, load_keymap
from .detail import iteration_detail
from .model import HEADER, ViewModel
from .screens.approval import ApprovalScreen
from .screens.audit import AuditScreen
from .screens.confirm import ConfirmScreen
from .screens.detail import IterationDetailScreen
from .screens.guidance import GuidanceScreen
from .repaint import Repainter
from .settings import load_settings, remember, settings_path
from .screens.help import HelpScreen
from .screens.params import FreezeScreen
from .screens.seek import SeekScreen
from .sources import RESET, EngineGoneError, ReadOnlyError, ReplaySource, Source
from .widgets.eventlog import EventLogPane
from .widgets.header import StatusHeader
from .widgets.keybar import KeyBar
from .widgets.tabs import PaneTabs
from .widgets.pane import Pane
from .widgets.patches import PatchPane
from .widgets.research import ResearchPane
from .widgets.splitter import Splitter
from .widgets.strategy import StrategyPane, param_rows
from .widgets.trace import RunProgress, TracePane

REFRESH_HZ = 10
# Textual paints a screen on a fixed grid of 1/TEXTUAL_FPS (60) seconds: a change waits for the next
# tick, and a key whose effect takes two updates (a pane switch: the table's cursor, then the
# panes' borders) waited for two. At 120 a pane switch under a flood of events answered in ~33 ms
# (median) instead of ~50, for more paints (changes are merged less: 273 against 205 in
# bench/bench_tui.py's steady 8 s at 120×40; run it with TEXTUAL_FPS=60 to compare).
FRAME_HZ = 120
# Python's default is (700, 10, 10). Under a flood of events each repaint leaves thousands of
# Textual strips in reference cycles (a strip's caches hold the strip): at (5000, 20, 100) a
# middle-generation collection swept ~10,000 of them at once and paused the app for 40–90 ms;
# more often and smaller, the pauses stay under ~4 ms (young) and ~15 ms (middle), and full
# collections (everything since the start was frozen) come once in 1,000 middle ones
GC_THRESHOLDS = (2000, 5, 1000)
SLICE_S = 0.004  # longest stretch of event folding before the loop serves keys and repaints
LIVE_COMMANDS = ("toggle_pause", "abort_training", "stop", "edit_guidance", "edit_guidance_external", "freeze",
                 "review_mechanism", "reload_config")
REPLAY_ACTIONS = ("replay_step", "replay_faster", "replay_slower", "replay_seek")
DYNAMIC_ACTIONS = LIVE_COMMANDS
TEXTUAL_DUPLICATES = frozenset({"Quit", "Keys", "Maximize", "Minimize"})
PANE_IDS = ("trace", "strategy", "research", "patches", "events")
PANE_FOCUS = {"trace": "#trace-table", "strategy": "#params-table", "research": "#research-scroll",
              "patches": "#patch-list", "events": "#event-log"}

class PanesScreen(Screen):
    """The screen of panes. Textual's screen repaints all of itself whenever the focus moves (a
    pane switch: every pane, table and plot re-rendered, ~70 ms under a flood of events); here the
    focused and the blurred widget repaint themselves and the panes their frames, nothing else."""

    focused: Reactive[Widget | None] = Reactive(None, repaint=False)


if "TEXTUAL_FPS" not in os.environ:  # the user's setting wins
    textual.screen.UPDATE_PERIOD = 1 / FRAME_HZ  # read when a screen starts its update timer


class BilevelApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "bilevel"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    ALLOW_IN_MAXIMIZED_VIEW = "StatusHeader, KeyBar"  # a maximised pane keeps the status and key bars
    # under 100 columns one pane at a time (-compact); from 160 the trace gets the width (-broad)
    HORIZONTAL_BREAKPOINTS = [(0, "-compact"), (100, "-narrow"), (110, "-wide"), (160, "-broad")]
    BINDINGS = KEY_BINDINGS

    def __init__(self, source: Source, *, config_path: Path | None = None, deterministic: bool | None = None,
                 refresh_hz: float = REFRESH_HZ, settings_file: Path | None = None,
                 background: Callable[[Path], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``background``: continues a stopped session in a detached engine and returns its pid (raises
        with the reason when it cannot); given, a live run's quit offers Detach. ``clock``: the
        repaint scheduler's (tests stop it)."""
        super().__init__()
        self.source = source
        self.background = background
        self.background_pid: int | None = None  # the engine a Detach left running
        self.model = ViewModel()
        self.config_path = Path(config_path) if config_path else None
        self.deterministic = deterministic_from_env() if deterministic is None else deterministic
        # Snapshots and tests never read or write the user's settings unless handed a file.
        self.settings_file = settings_file or (None if self.deterministic else settings_path())
        self.refresh_hz = refresh_hz
        self.events_applied = 0
        self._applied_before = 0
        self.config_change: dict[str, Any] | None = None
        self._awaiting: dict[str, int] = {}  # commands sent and not yet acknowledged
        self._notified_pending: set[str] = set()
        self._alerts_armed = False  # no toasts for what happened before this viewer caught up
        self._exit_when_finished = False
        self._detaching = False
        self._help: HelpScreen | None = None  # built on the first `?`, then re-shown
        self._detail: IterationDetailScreen | None = None  # built on the first Enter on a row, then re-shown
        self._engine_error_shown = False
        self._replay_notice = ""
        self._panes: list[Pane] = []
        self._header: StatusHeader | None = None
        self._compact: bool | None = None  # the one-pane-at-a-time layout is on (None: not decided yet)
        self.repainter = Repainter(self, len(PANE_IDS), DYNAMIC_ACTIONS, clock=clock)
        self.current_pane = "trace"  # the pane the compact layout shows
        if self.deterministic:
            self.animation_level = "none"

    def get_default_screen(self) -> Screen:
        return PanesScreen(id="_default")

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        # Deterministic mode (snapshots): a toast stays until dismissed, so no screen depends on the machine's speed.
        # A toast often quotes text that is not ours (an error, a path): cleaned, never markup.
        super().notify(safe_block(message), title=safe_line(title), severity=severity, markup=False,
                       timeout=3600.0 if self.deterministic else timeout)

    # --- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusHeader(id="status", deterministic=self.deterministic)
        yield PaneTabs(id="tabs")
        with Horizontal(id="main"):
            with Vertical(id="left-col"):
                yield TracePane(1, id="trace")
                yield Splitter("trace", vertical=False, minimum=5, id="split-left")
                yield PatchPane(4, id="patches")
            yield Splitter("left-col", vertical=True, minimum=30, id="split-main")
            with Vertical(id="right-col"):
                yield StrategyPane(2, id="strategy")
                yield Splitter("strategy", vertical=False, minimum=5, id="split-right")
                yield ResearchPane(3, id="research", throttle=not self.deterministic)
        yield EventLogPane(5, id="events", throttle=not self.deterministic)
        yield KeyBar()

    @property
    def base(self) -> Screen:
        """The screen with the panes (queries go here even while a modal is on top)."""
        return self.screen_stack[0]

    @property
    def panes(self) -> list[Pane]:
        if not self._panes:
            self._panes = [self.base.query_one(f"#{pid}", Pane) for pid in PANE_IDS]
        return self._panes

    @property
    def header(self) -> StatusHeader:
        if self._header is None:
            self._header = self.base.query_one(StatusHeader)
        return self._header

    def on_mount(self) -> None:
        if not self.deterministic or "BILEVEL_KEYMAP" in os.environ:  # snapshots ignore a user's keymap
            keymap = load_keymap(keymap_path())
            if keymap:
                self.set_keymap(keymap)
        if self.settings_file is not None:
            self._restore_theme()
        self.header.show(self.model, self.source)
        self.title = f"bilevel — {self.source.describe()}"
        self.run_worker(self._consume(), name="events", group="events", exclusive=True)
        turns = 1 if self.deterministic else len(PANE_IDS) + 1  # one pane (or the header) a tick
        self.set_interval(1 / (self.refresh_hz * turns), self._repaint, name="flush")
        if not self.deterministic:
            self.set_interval(1.0, self._tick, name="clock")
        if self.config_path is not None and self.source.mode == "live":
            self.run_worker(self._watch_config(), name="config", group="config", exclusive=True)
        self.base.query_one("#trace-table").focus()
        self.call_after_refresh(self._sync_layout)
        self.call_after_refresh(_settle_garbage_collector)

    def on_resize(self) -> None:
        self.call_after_refresh(self._sync_layout)  # the screen's breakpoint classes are set by then

    @property
    def compact(self) -> bool:
        """Under 100 columns: one pane at a time, a pane strip, the essential keys."""
        return bool(self.screen_stack) and self.base.has_class("-compact")

    def _sync_layout(self) -> None:
        """Apply the compact layout when the terminal crossed its breakpoint."""
        if not self.is_running or not self.screen_stack:
            return
        compact = self.compact
        if compact == self._compact:
            return
        self._compact = compact
        self.base.query_one(KeyBar).narrow = compact
        if compact:
            for pane in self.panes:  # a pane shown or hidden by hand (l, a number key) follows the layout now
                pane.styles.clear_rule("display")
        self._show_pane(self.current_pane, focus=False)

    def _show_pane(self, pane_id: str, *, focus: bool = True) -> None:
        """The compact layout shows ``pane_id`` (its column, nothing else) and the strip says so."""
        self.current_pane = pane_id
        base = self.base
        for pane in self.panes:
            self._reclass(pane, pane.id == pane_id, "-current")
        column = {"trace": "#left-col", "patches": "#left-col", "strategy": "#right-col", "research": "#right-col"}
        for col in ("#left-col", "#right-col"):
            self._reclass(base.query_one(col), column.get(pane_id) == col, "-current-col")
        self._reclass(base.query_one("#main"), pane_id == "events", "-events-current")
        base.query_one(PaneTabs).show(pane_id)
        if focus:
            base.query_one(PANE_FOCUS[pane_id]).focus()

    def _reclass(self, node: Widget, on: bool, name: str) -> None:
        """Set or clear a class of the compact layout and restyle ``node`` alone: no rule keys a
        descendant's style on these classes (app.tcss), and restyling a pane's or a column's whole
        subtree made a pane switch at 80×24 wait ~45 ms under a flood of events."""
        if node.has_class(name) != on:
            node.set_class(on, name, update=False)
            self.stylesheet.update_nodes([node], animate=False)

    # --- the event stream -----------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for batch in self.source.batches():
            if batch == RESET:
                self.model.reset()
                self.repainter.reset()
                for pane in self.panes:
                    pane.reset()
                continue
            apply = self.model.apply
            clock = time.perf_counter
            i, n = 0, len(batch)
            while i < n:
                # time slices: a flood of events never keeps a key press waiting
                deadline = clock() + SLICE_S
                while i < n:
                    apply(batch[i])  # type: ignore[index]
                    i += 1
                    if not i % 64 and clock() > deadline:
                        break
                self.events_applied = self._applied_before + i
                await asyncio.sleep(0)
            self._applied_before += n
            self.events_applied = self._applied_before

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self.repainter.key_pressed()
        await super().on_event(event)

    @property
    def repaints(self) -> int:
        """Batched repaints done (the benchmark reports them)."""
        return self.repainter.repaints

    async def _repaint(self, everything: bool | None = None) -> None:
        """One repaint turn now (the timer's; tests drive it by hand): see :class:`tui.repaint.Repainter`."""
        await self.repainter.repaint(everything)

    def _refresh_footer(self) -> None:
        self.repainter.refresh_footer()

    async def caught_up(self, timeout: float = 600.0) -> None:  # a hang guard, not a target
        """Wait until every available event is applied and painted (tests, snapshots, benchmark)."""
        await asyncio.wait_for(self.source.caught_up.wait(), timeout)
        await asyncio.sleep(0)
        await self._repaint(everything=True)

    def screen_text(self) -> str:
        """The screen as plain text (tests compare screens; no styles)."""
        from rich.console import Console

        width, height = self.size
        console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                          record=True, legacy_windows=False, safe_box=False)
        # Textual's private compositor: its only public render of the screen is an SVG (export_screenshot),
        # and tests compare the screen's text
        console.print(self.screen._compositor.render_update(full=True, screen_stack=self._background_screens))
        return console.export_text()

    def _tick(self) -> None:
        if self.is_running and self.screen_stack:
            self.header.refresh()
            if self.model.training_iteration is not None:  # the run's clock moves between its progress events
                self.base.query_one(RunProgress).refresh()

    def _announce(self) -> None:
        """Toasts for acknowledgements of our commands, pending approvals and loud failures."""
        model = self.model
        for ack in model.acks:
            if self._awaiting.get(ack.command, 0) > 0 and ack.source in ("tui", "channel"):
                self._awaiting[ack.command] -= 1
                if not ack.ok:
                    self.notify(f"{ack.command}: {ack.error}", title="Command refused", severity="error")
                elif ack.command not in ("pause", "resume"):
                    self.notify(f"{ack.command} {_args_text(ack.args)}".strip(), title="Done", timeout=3)
        model.acks.clear()
        for title, text in model.limit_notices:  # spend warnings and a limit's pause, live only (not history)
            if self._alerts_armed:
                self.notify(text, title=title, severity="warning", timeout=12)
        model.limit_notices.clear()
        if self.source.caught_up.is_set() and not self._alerts_armed:
            self._alerts_armed = True
            _settle_garbage_collector()  # the history just loaded stays: out of the collector's way
        for rid, pending in model.pending.items():
            if rid not in self._notified_pending:
                self._notified_pending.add(rid)
                if self._alerts_armed and not self.source.read_only:
                    self.notify(f"{pending.name} waits for your approval — press v", title="Mechanism validated",
                                severity="warning", timeout=10)
        self._announce_replay_problems()
        error = getattr(self.source, "engine_error", lambda: None)()
        if error is not None and not self._engine_error_shown:
            self._engine_error_shown = True
            self.header.notice = "engine stopped with an error"
            self.notify(f"{type(error).__name__}: {error}", title="The engine stopped with an error",
                        severity="error", timeout=30)
        if self._exit_when_finished and (model.finished is not None or not self.source.engine_running()):
            self.exit(0)

    def _announce_replay_problems(self) -> None:
        """A damaged or empty log is said in the header and once as a toast, never skipped in silence."""
        src = self._replay()
        if src is None:
            return
        summary = src.problems_summary() or ("empty session: the log holds no events" if src.empty else "")
        if summary == self._replay_notice:
            return
        self._replay_notice = summary
        self.header.notice = summary
        self.header.refresh()
        if summary:
            detail = "\n".join(f"line {p.line}: {p.message}" for p in src.problems[:5])
            self.notify(detail or summary, title=summary if detail else "Nothing to replay", severity="warning",
                        timeout=15)

    # --- command sending ----------------------------------------------------------------------------------

    async def send(self, command: cmds.Command) -> bool:
        name = command.command
        try:
            await self.source.send(command)
        except EngineGoneError as exc:
            self.notify(str(exc), title="Command refused", severity="error")
            return False
        except ReadOnlyError as exc:
            self.notify(str(exc), severity="warning")
            return False
        except Exception as exc:  # noqa: BLE001 - a command that cannot be delivered must not end the app
            self.notify(f"could not send {name}: {exc}", title="Command not sent", severity="error")
            return False
        self._awaiting[name] = self._awaiting.get(name, 0) + 1
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        src = self.source
        if action in LIVE_COMMANDS and action != "toggle_pause" and src.read_only:
            return False
        if action in REPLAY_ACTIONS and not isinstance(src, ReplaySource):
            return False
        if action in LIVE_COMMANDS and self.model.finished is not None and not isinstance(src, ReplaySource):
            return False  # the run is over: nothing left for these to change, so they are not offered
        if action == "reload_config":
            return True if self.config_change else False
        if action == "review_mechanism":
            return True if self.model.pending else None
        if action == "abort_training":
            return True if self.model.in_flight else None
        return True

    # --- actions: the run ---------------------------------------------------------------------------------

    async def action_toggle_pause(self) -> None:
        if isinstance(self.source, ReplaySource):
            self.source.toggle_pause()
            self.header.refresh()
            self._refresh_footer()
            return
        s = self.model.state
        want_pause = not (s.paused or s.pause_requested or self.model.local_pause)
        if self.model.local_pause is False:
            want_pause = True
        if await self.send(cmds.Pause() if want_pause else cmds.Resume()):
            self.model.local_pause = want_pause
            self.model.dirty.add(HEADER)
            self.header.refresh()

    def action_abort_training(self) -> None:
        if self.model.multi_slot:
            self._abort_which()
            return
        it = self.model.training_iteration
        if it is None:
            self.notify("No training run is in progress: nothing to abort.", severity="warning")
            return

        async def answered(answer: str | None) -> None:
            if answer == "abort":
                await self.send(cmds.AbortTraining(iteration=it))

        self.push_screen(ConfirmScreen(
            f"Abort the training run of iteration #{it}?",
            "The run is cancelled now and the iteration is recorded as cancelled; the search goes on.",
            [("abort", "Abort run", "error")]), answered)

    def _abort_which(self) -> None:
        """Parallel trials: abort the highlighted row's trial when it is in flight, another, or all of them."""
        running = self.model.in_flight
        if not running:
            self.notify("No training run is in progress: nothing to abort.", severity="warning")
            return
        highlighted = self.base.query_one(TracePane).highlighted_iteration()
        first = [highlighted] if highlighted in running else []
        others = [n for n in running if n not in first]  # a button for every trial the dialog lists
        answers = [(f"it-{n}", f"#{n} {self._slot_of(n)}", "error") for n in first + others]
        answers.append(("all", f"All {len(running)}", "warning"))
        listed = ", ".join(f"#{n} on {self._slot_of(n)}" for n in running)

        async def answered(answer: str | None) -> None:
            if answer == "all":
                await self.send(cmds.AbortTraining(iteration=None))
            elif answer is not None and answer.startswith("it-"):
                await self.send(cmds.AbortTraining(iteration=int(answer.removeprefix("it-"))))

        self.push_screen(ConfirmScreen(
            "Abort which training run?",
            f"In flight: {listed}.\nAn aborted run is recorded as cancelled; the other slots go on, and the "
            "freed slot takes the next proposal.", answers), answered)

    def _slot_of(self, n: int) -> str:
        trial = self.model.trial(n)
        return trial.slot if trial is not None and trial.slot else "?"

    def action_stop(self) -> None:
        async def answered(answer: str | None) -> None:
            if answer in ("stop", "now"):
                await self.send(cmds.Stop(now=answer == "now", reason="stopped from the app"))

        self.push_screen(ConfirmScreen(
            "Stop the run?", "After this iteration: the current iteration finishes first. Now: it is interrupted "
            "and re-run on resume. Either way the session stays resumable (bilevel resume).",
            [("stop", "After this iteration", "warning"), ("now", "Now", "error")]), answered)

    def action_edit_guidance(self) -> None:
        state = self.model.state

        async def answered(answer: tuple[str, bool] | None) -> None:
            if answer is not None and answer != (state.guidance, state.guidance_pinned):
                await self.send(cmds.SetGuidance(guidance=answer[0], pinned=answer[1]))

        self.push_screen(GuidanceScreen(state.guidance, pinned=state.guidance_pinned, blink=not self.deterministic),
                         answered)

    async def action_edit_guidance_external(self) -> None:
        state = self.model.state
        text = self.edit_in_editor(state.guidance)
        if text is not None and text.strip() != state.guidance:  # the pin stays as it was
            await self.send(cmds.SetGuidance(guidance=text.strip(), pinned=state.guidance_pinned))

    def edit_in_editor(self, text: str) -> str | None:
        """Edit ``text`` in $VISUAL/$EDITOR with the app suspended; None if the editor failed."""
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        fd, name = tempfile.mkstemp(prefix="bilevel-guidance-", suffix=".md")
        path = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")  # a text file ends with a newline
            command = [*shlex.split(editor), str(path)]
            try:
                with self.suspend():
                    result = subprocess.run(command, check=False)
            except Exception as exc:  # noqa: BLE001 - SuspendNotSupported (headless) or a missing editor
                if type(exc).__name__ != "SuspendNotSupported":
                    self.notify(f"editor {editor!r} failed: {exc}", severity="error")
                    return None
                result = subprocess.run(command, check=False, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                self.notify(f"editor {editor!r} exited with {result.returncode}; guidance unchanged", severity="warning")
                return None
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            self.notify(f"editor {editor!r} failed: {exc}", severity="error")
            return None
        finally:
            path.unlink(missing_ok=True)

    def action_audit(self) -> None:
        """The keep-chain audit's verdicts (core/engine/audit.py), from the folded state."""
        self.push_screen(AuditScreen(self.model.state))

    def action_freeze(self) -> None:
        rows = param_rows(self.model)
        if not rows:
            self.notify("no parameters yet (the session has not started)", severity="warning")
            return
        params = [(name, str(cells["state"]), str(cells["value"])) for name, cells in rows.items()]
        initial = self.base.query_one(StrategyPane).selected_param()

        async def answered(choice: tuple[str, str] | None) -> None:
            if choice is not None:
                action, name = choice
                command = cmds.Freeze if action == "freeze" else cmds.Unfreeze
                await self.send(command(name=name, reason=f"{action} by the user (app)"))

        self.push_screen(FreezeScreen(params, initial), answered)

    def action_review_mechanism(self) -> None:
        if not self.model.pending:
            self.notify("no mechanism waits for approval")
            return
        rid, pending = next(iter(self.model.pending.items()))
        read = self.source.read_artifact

        async def answered(answer: str | None) -> None:
            if answer == "approve":
                await self.send(cmds.ApproveMechanism(research_id=rid))
            elif answer == "reject":
                await self.send(cmds.RejectMechanism(research_id=rid, reason="rejected by the user (app)"))

        self.push_screen(ApprovalScreen(pending.name, rid, read(pending.source), read(pending.diff),
                                        read(pending.report), read_only=self.source.read_only), answered)

    # --- config watching -----------------------------------------------------------------------------------

    async def _watch_config(self) -> None:
        from watchfiles import awatch

        path = self.config_path
        assert path is not None
        async for _ in awatch(path.parent, watch_filter=lambda _c, p: Path(p).name == path.name, debounce=300):
            self.check_config()

    def check_config(self) -> dict[str, Any] | None:
        """Compare the config file with the running session; offer what changed for reload."""
        from core.record import config as config_mod

        assert self.config_path is not None
        try:
            cfg = config_mod.load(self.config_path)
        except (config_mod.ConfigError, OSError) as exc:
            self.notify(f"{self.config_path.name}: {exc}", title="Config not reloadable", severity="error")
            return None
        change: dict[str, Any] = {}
        s = self.model.state
        if cfg.search.guidance != s.guidance:
            change["guidance"] = cfg.search.guidance
        budget = dict(s.config.get("budget", {})) if isinstance(s.config, dict) else {}
        budget["iterations"] = s.iterations_budget  # changes since the start count
        for key, value in (("iterations", cfg.budget.iterations), ("time_s", cfg.budget.time_s)):
            if budget.get(key) is not None and budget.get(key) != value:
                change[f"budget.{key}"] = value
        limits = config_mod.spend_limits(cfg)  # the caps and the stuck-loop rule: a raised cap resumes its pause
        if s.config and limits != (s.limits if s.limits is not None else _recorded_limits(s.config)):
            change["limits"] = limits
        self.config_change = change or None
        header = self.header
        header.notice = "config changed: r to reload" if change else ""
        header.refresh()
        self._refresh_footer()
        if change:
            self.notify(", ".join(change) + " changed — press r to apply", title=f"{self.config_path.name} changed",
                        timeout=8)
        return self.config_change

    def action_reload_config(self) -> None:
        change = self.config_change
        if not change:
            return
        lines = []
        if "guidance" in change:
            lines.append(f"guidance → {change['guidance'] or '(empty)'}")
        for key in ("budget.iterations", "budget.time_s"):
            if key in change:
                lines.append(f"{key} → {change[key]}")  # the engine's acknowledgement says if it refuses
        if "limits" in change:
            lines.append("limits → " + ", ".join(f"budget.{k} = {v:g}" for k, v in change["limits"].items()))

        async def answered(answer: str | None) -> None:
            if answer != "apply":
                return
            if "guidance" in change:
                await self.send(cmds.SetGuidance(guidance=change["guidance"], pinned=self.model.state.guidance_pinned))
            budget = {k.split(".", 1)[1]: v for k, v in change.items() if k.startswith("budget.")}
            if budget:
                await self.send(cmds.SetBudget(**budget))
            if "limits" in change:  # every limit named: one the file no longer sets is unset
                from core.record.config import LIMIT_NAMES

                await self.send(cmds.SetLimits(limits={k: change["limits"].get(k) for k in LIMIT_NAMES}))
            self.config_change = None
            header = self.header
            header.notice = ""
            header.refresh()
            self._refresh_footer()

        self.push_screen(ConfirmScreen("Apply the changed configuration?", "\n".join(lines),
                                       [("apply", "Apply", "primary")]), answered)

    # --- replay controls ----------------------------------------------------------------------------------------

    def _replay(self) -> ReplaySource | None:
        return self.source if isinstance(self.source, ReplaySource) else None

    def action_replay_step(self) -> None:
        if (src := self._replay()) is not None:
            src.step()
            self.header.refresh()

    def action_replay_faster(self) -> None:
        if (src := self._replay()) is not None:
            src.faster()
            self.header.refresh()

    def action_replay_slower(self) -> None:
        if (src := self._replay()) is not None:
            src.slower()
            self.header.refresh()

    def action_replay_seek(self) -> None:
        src = self._replay()
        if src is None:
            return

        def answered(iteration: int | None) -> None:
            if iteration is not None:
                src.seek(iteration)
                self.header.refresh()

        self.push_screen(SeekScreen(src.iterations(), blink=not self.deterministic), answered)

    # --- layout actions --------------------------------------------------------------------------------------------

    def _focused_pane(self) -> Pane | None:
        node: Widget | None = self.focused
        while node is not None and not isinstance(node, Pane):
            node = node.parent if isinstance(node.parent, Widget) else None
        return node

    def action_focus_pane(self, pane_id: str) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
        if self.compact:
            self._show_pane(pane_id)
            return
        pane = self.base.query_one(f"#{pane_id}", Pane)
        if not pane.display:
            pane.display = True
        self.base.query_one(PANE_FOCUS[pane_id]).focus()

    def action_toggle_maximize(self) -> None:
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
            return
        pane = self._focused_pane()
        if pane is not None:
            screen.maximize(pane, container=False)

    def action_toggle_events(self) -> None:
        if self.compact:
            self._show_pane("trace" if self.current_pane == "events" else "events")
            return
        pane = self.base.query_one("#events", Pane)
        pane.display = not pane.display

    def action_resize(self, what: str, cells: int) -> None:
        if what == "columns":
            self.base.query_one("#split-main", Splitter).nudge(cells)
            return
        pane = self._focused_pane()
        column_splitter = "#split-right" if pane is not None and pane.id in ("strategy", "research") else "#split-left"
        self.base.query_one(column_splitter, Splitter).nudge(cells)

    def _restore_theme(self) -> None:
        theme = (load_settings(self.settings_file) or {}).get("theme") if self.settings_file else None
        if isinstance(theme, str) and theme in self.available_themes:
            self.theme = theme
        self._theme_restored = True

    def _watch_theme(self, theme_name: str) -> None:
        # Textual's private watcher, not the public theme_changed_signal: the watcher runs as the theme
        # is set, so the theme _restore_theme sets is not written back; the signal comes later (call_next)
        super()._watch_theme(theme_name)
        if self.screen_stack:
            self.call_after_refresh(self._relight_panes)  # the theme's variables are in place by then
        if getattr(self, "_theme_restored", False) and self.settings_file is not None:
            why = remember(self.settings_file, "theme", theme_name)
            if why:
                self.notify(f"theme not remembered: {why}", severity="warning")

    def _relight_panes(self) -> None:
        for pane in self.base.query(Pane):  # the focused pane's border is an inline colour: the new accent
            pane.show_focus(again=True)

    def action_help(self) -> None:
        keys, pane_keys, idle = [], [], set()
        seen = set()
        focused = self.focused
        pane = next((n for n in (focused.ancestors_with_self if focused else ()) if isinstance(n, Pane)), None)
        for key, active in self.active_bindings.items():
            b = active.binding
            if b.id and b.id not in seen:
                seen.add(b.id)
                if not active.enabled:
                    idle.add(b.id)  # listed, dimmed: x between two runs is still the abort key
                # the focused pane's own keys (hidden from the key bar too) get their own section
                own = pane is not None and active.node is pane
                (pane_keys if own else keys).append((self.get_key_display(b), b.description or b.action, b.id))
        title = pane.PANE_TITLE if pane is not None else ""
        # One help screen, kept installed and re-shown: a fresh one is mounted, styled and laid out
        # from nothing, which under a flood of events kept `?` waiting for ~150 ms.
        if self._help is None:
            self._help = HelpScreen(keys, self.source.describe(), pane_keys=pane_keys, pane_title=title, idle=idle)
            self.install_screen(self._help, name="help")
        else:
            self._help.show(keys, self.source.describe(), pane_keys=pane_keys, pane_title=title, idle=idle)
        self.push_screen(self._help)

    # --- quitting ------------------------------------------------------------------------------------------------------

    def action_quit_app(self) -> None:
        src = self.source
        if self._detaching:
            self.notify("the engine is moving to the background; the app closes when it runs there",
                        title="Detaching…")
            return
        if self._exit_when_finished:  # asked twice: leave now
            self.exit(0)
            return
        if src.mode == "live" and src.engine_running() and self.background is not None:
            def answered_live(answer: str | None) -> None:
                if answer == "stop":
                    self._stop_then_exit()
                elif answer == "detach":
                    self._detach_then_exit()

            self.push_screen(ConfirmScreen(
                "Stop the run, or detach it?",
                "Stop: the run stops; continue it with\n"
                f"  bilevel resume {src.session_dir}\n"
                "Detach: the run goes on in a background engine and the current iteration restarts there "
                f"from its beginning; watch it with\n  bilevel attach {src.session_dir}\n"
                "Nothing is lost either way.",
                [("stop", "Stop & quit", "error"), ("detach", "Detach", "primary")]), answered_live)
        elif src.mode == "live" and src.engine_running():
            def answered(answer: str | None) -> None:
                if answer == "stop":
                    self._stop_then_exit()

            self.push_screen(ConfirmScreen(
                "Stop the run and quit?",
                f"The current iteration is interrupted and re-run when you continue with\n"
                f"  bilevel resume {src.session_dir}\nNothing is lost: the session stays resumable.",
                [("stop", "Stop & quit", "error")]), answered)
        elif src.mode == "attach" and src.engine_running():
            def answered_attached(answer: str | None) -> None:
                if answer == "detach":
                    self.exit(0)
                elif answer == "stop":
                    self._stop_then_exit()

            self.push_screen(ConfirmScreen(
                "Leave this viewer?", "Detach: the engine keeps running; attach again any time with\n"
                f"  bilevel attach {src.session_dir}\nStop: the engine stops cleanly and the session stays resumable.",
                [("detach", "Detach", "primary"), ("stop", "Stop engine & quit", "error")]), answered_attached)
        else:
            self.exit(0)

    def action_help_quit(self) -> None:
        """ctrl+c (Textual's copy key) quits nothing: say what does."""
        src = self.source
        quit_key = self.get_key_display(next(b for b in KEY_BINDINGS if b.id == "quit"))
        if src.mode == "attach" and src.engine_running():
            how = f"Press {quit_key} to leave: Detach keeps the engine running, or stop it"
        elif src.mode == "live" and src.engine_running() and self.background is not None:
            how = f"Press {quit_key} to stop the run, or detach it to a background engine (it asks first)"
        elif src.mode == "live" and src.engine_running():
            how = f"Press {quit_key} to stop the run and quit (it asks first; the session stays resumable)"
        else:
            how = f"Press {quit_key} to quit"
        self.notify(how, title="ctrl+c does not quit")

    @work(group="quit", exclusive=True)
    async def _stop_then_exit(self) -> None:
        header = self.header
        header.notice = "stopping… (q again to leave now)"
        header.refresh()
        self._exit_when_finished = True
        await self.send(cmds.Stop(now=True, reason="the user quit the app"))

    @work(group="quit", exclusive=True)
    async def _detach_then_exit(self) -> None:
        """Stop the engine in this process, continue the session in a background one, then leave.

        The engine lives in the app's process, so it cannot outlive it: it stops cleanly here
        (the interrupted iteration is re-run on resume) and a detached ``bilevel resume`` takes
        the session over. If that engine does not start, the app stays open and says so.
        """
        src = self.source
        assert self.background is not None and src.mode == "live"
        task = getattr(src, "engine_task", None)
        header = self.header
        self._detaching = True
        try:
            header.notice = "detaching: stopping the engine here…"
            header.refresh()
            if not await self.send(cmds.Stop(now=True, reason="detached: the run goes on in a background engine")):
                return
            if task is not None:
                await asyncio.wait({task})  # ends with its RunFinished; the session lock is free then
            status = getattr(getattr(src, "engine", None), "state", self.model.state).status
            if status != "stopped":  # it completed (or failed) first: nothing to continue
                header.notice = ""
                self.notify(f"the run ended ({status}) before it could be detached", title="Not detached",
                            severity="warning", timeout=30)
                return
            header.notice = "starting the background engine…"
            header.refresh()
            try:
                pid = await asyncio.to_thread(self.background, src.session_dir)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the session must stay usable
                header.notice = "not detached: the run is stopped and resumable"
                header.refresh()
                self.notify(f"{exc}\nNothing is lost: continue with bilevel resume {src.session_dir}",
                            title="The background engine did not start", severity="error", timeout=3600)
                return
        finally:
            self._detaching = False
        self.background_pid = pid
        self.exit(0)

    # --- the command palette --------------------------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            # Textual's Quit would leave a live run without asking; its Keys and Maximize duplicate ours
            if command.title not in TEXTUAL_DUPLICATES:
                yield command
        for action, title, help_text in PALETTE:
            if self.check_action(action, ()) is True:
                yield SystemCommand(title, help_text, partial(self.run_action, action))
        for pane_id in PANE_IDS:
            if pane_id == "events":
                continue  # "Show / hide the event log" above is the events pane's entry: no near-twin
            yield SystemCommand(f"Focus the {pane_id} pane", f"Move the focus to {pane_id}",
                                partial(self.action_focus_pane, pane_id))

    # --- messages from panes --------------------------------------------------------------------------------------------

    def on_trace_pane_iteration_chosen(self, message: TracePane.IterationChosen) -> None:
        n = message.iteration
        self.base.query_one(PatchPane).show_iteration(n)  # the patches pane points at its diff too
        text = iteration_detail(self.model, n, self.source.read_artifact)
        if self._detail is None:
            self._detail = IterationDetailScreen(n, text)
            self.install_screen(self._detail, name="detail")
        else:
            self._detail.show(n, text)
        self.push_screen(self._detail)


def _settle_garbage_collector() -> None:
    """Keep full garbage collections off the key path.

    A full collection walks every live object — thousands of widgets and the whole folded
    session — and pauses the app for up to ~100 ms. What exists once the app has started
    (and a session has been loaded) lives as long as the app, so it is moved out of the
    collector's sight; the young generations are still collected as usual.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _args_text(args: dict[str, Any]) -> str:
    shown = {k: v for k, v in args.items() if k != "reason"}
    return " ".join(f"{k}={str(v)[:40]}" for k, v in shown.items())


def _recorded_limits(config: dict[str, Any]) -> dict[str, float] | None:
    """The limits a session started with (its recorded config), None when it cannot be read."""
    from core.record import config as config_mod

    try:
        return config_mod.spend_limits(config_mod.from_dict(config))
    except config_mod.ConfigError:
        return None

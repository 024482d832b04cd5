"""The app's repaint scheduler: which pane shows the events' changes on which timer tick.

The view model marks what each event changed; a tick repaints one pane (or the header) in turn,
so a frame is one pane's renders and never the whole screen's: one frame for all of it took
40–60 ms under a flood of events, and a key pressed meanwhile waited that long. A key's frame
goes first (the turn waits until it is painted), and a history that loads quickly is painted once,
at its end. The clock is injected so tests decide when a key's head start is over.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol

from textual.app import ScreenStackError
from textual.css.query import NoMatches

from .model import HEADER
from .screens.detail import IterationDetailScreen
from .screens.help import HelpScreen


KEY_FIRST_S = 0.2  # the longest a key's effect holds the repaint back
FIRST_PAINT_WAIT_S = 1.5  # a history that loads within this is painted once, at its end


class Stale:
    """What the view model changed since each pane (and the header) last showed it."""

    def __init__(self, panes: int) -> None:
        self.parts: list[set[str]] = [set() for _ in range(panes)]
        self.rows: list[set[int]] = [set() for _ in range(panes)]
        self.params = [False] * panes
        self.header = False
        self.footer = False  # an action's availability may have changed (the key bar re-reads them)

    def add(self, parts: set[str], rows: set[int], params: bool) -> None:
        if not (parts or rows or params):
            return
        for i in range(len(self.parts)):
            self.parts[i] |= parts
            self.rows[i] |= rows
            self.params[i] = self.params[i] or params
        self.header = True
        self.footer = self.footer or HEADER in parts

    def take(self, pane: int) -> tuple[set[str], set[int], bool]:
        taken = self.parts[pane], self.rows[pane], self.params[pane]
        self.parts[pane], self.rows[pane], self.params[pane] = set(), set(), False
        return taken

    def any(self) -> bool:
        return self.header or any(self.parts) or any(self.rows) or any(self.params)



class RepaintedApp(Protocol):
    """What the scheduler reads and calls on the app (tui/app.py's BilevelApp), named here rather than
    imported: the app imports this module, and a cycle through type hints is still a cycle."""

    source: Any
    model: Any
    header: Any
    panes: Any
    deterministic: bool
    is_running: bool
    screen_stack: Any
    screen: Any
    refresh_bindings: Callable[..., Any]
    check_action: Callable[..., Any]
    call_after_refresh: Callable[..., Any]
    batch_update: Callable[..., Any]
    _announce: Callable[..., Any]
    _sync_layout: Callable[..., Any]
    _alerts_armed: bool

class Repainter:
    """Repaints ``app``'s panes and header from its view model, a turn at a time.

    The app calls :meth:`key_pressed` for every key, :meth:`repaint` on its timer (and with
    ``everything`` when waiting to catch up), :meth:`reset` when a replay starts over, and
    :meth:`refresh_footer` when an action's availability may have changed.
    """

    def __init__(self, app: RepaintedApp, panes: int, dynamic_actions: tuple[str, ...],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.panes = panes
        self.dynamic_actions = dynamic_actions  # the actions whose availability the key bar shows
        self.clock = clock
        self.repaints = 0  # batched repaints done (the benchmark reports them)
        self.key_unpainted: float | None = None  # when a key came whose effect is not painted yet
        self.started = clock()
        self._stale = Stale(panes)  # what each pane (and the header) has yet to show
        self._turn = 0  # whose turn the next repaint tick is (a pane's index; the last: the header)
        self._lock = asyncio.Lock()
        self._footer_signature: tuple = ()

    def reset(self) -> None:
        self._stale = Stale(self.panes)

    def key_pressed(self) -> None:
        """The repaint waits until this key's effect is painted (see :meth:`repaint`)."""
        if self.key_unpainted is None:
            self.key_unpainted = self.clock()
            self.app.call_after_refresh(self._key_painted)

    def _key_painted(self) -> None:
        self.key_unpainted = None

    async def repaint(self, everything: bool | None = None) -> None:
        """Repaint what the events since the last tick made stale (one batched update).

        ``everything`` (the default in deterministic mode, and when waiting for the app to catch
        up): every pane now. Otherwise one pane per tick, in turn, with the header on a turn of
        its own: a frame's cost is its dirty panes' renders and the compositing of the box around
        all of them. A pane's turn comes ``refresh_hz`` times a second, as the whole screen's did.
        """
        app = self.app
        async with self._lock:
            if not app.is_running or not app.screen_stack:
                return  # shutting down: the timer may fire once more
            if everything is None:
                everything = app.deterministic
            if not everything and self.key_unpainted is not None \
                    and self.clock() - self.key_unpainted < KEY_FIRST_S:
                return  # a key's frame first, on its own: the events' changes wait for the next turn
            if isinstance(app.screen, (HelpScreen, IterationDetailScreen)):
                return  # it hides the panes: they catch up, a turn each, when it closes
            if not app._alerts_armed and not app.source.caught_up.is_set() \
                    and self.clock() - self.started < FIRST_PAINT_WAIT_S:
                app.header.refresh()  # loading a history: one paint of where it ends, not of every step
                return
            self._stale.add(*app.model.take_dirty())
            if not self._stale.any() and not app.source.diagnostics:
                app._announce()  # nothing new to show, but an engine may have ended, a quit be due
                return
            if everything:
                turns = list(range(self.panes + 1))
            else:
                turns = [self._turn]
                if self._turn in (0, self.panes) and app.model.multi_slot:
                    # parallel trials: the trace pane (with its slots view) and the header's running list and
                    # busy count change in one frame, whichever's turn comes first; apart they disagreed
                    turns = [0, self.panes]
                self._turn = (self._turn + 1) % (self.panes + 1)
            try:
                with app.batch_update():
                    for turn in turns:
                        if turn < self.panes:
                            await self._sync_pane(turn)
                        else:
                            self._paint_header()
            except (NoMatches, ScreenStackError):
                if app.is_running:
                    raise
                return  # the app is shutting down: its widgets are going away
            app._sync_layout()
            app._announce()

    async def _sync_pane(self, index: int) -> None:
        app = self.app
        pane = app.panes[index]
        parts, rows, params = self._stale.take(index)
        if parts or rows or params or (pane.id == "events" and app.source.diagnostics):
            self.repaints += 1
            await pane.sync(app.model, parts, rows, params, app.source)

    def _paint_header(self) -> None:
        stale = self._stale
        if not stale.header:
            return
        self.repaints += 1
        self.app.header.refresh()
        if stale.footer:
            self.refresh_footer()
        stale.header = stale.footer = False

    def refresh_footer(self) -> None:
        """Tell the key bar only when an action's availability changed (it re-reads every binding)."""
        app = self.app
        signature = tuple(app.check_action(a, ()) for a in self.dynamic_actions)
        if signature != self._footer_signature:
            self._footer_signature = signature
            app.refresh_bindings()

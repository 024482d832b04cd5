"""The event log: one readable line per notable event (the headless printer's lines), newest last."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import RichLog

from ..model import LOG, LOG_LINES
from .growing import GrowingLog
from .pane import Pane

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source


MAX_WRITE = 200  # lines written in one repaint; each costs a render
WRITE_EVERY_S = 0.25  # the log is read, not watched: writing it 4× a second saves re-layouts


class EventLogPane(Pane):
    PANE_TITLE = "Events"
    DEFAULT_CSS = """
    EventLogPane RichLog { height: 1fr; background: transparent; }
    """

    def __init__(self, number: int, *, throttle: bool = True, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self.throttle = throttle  # off for snapshots: what is shown must not depend on timing
        self._last_write = 0.0

    def compose(self):
        yield GrowingLog(id="event-log", max_lines=LOG_LINES, wrap=False, markup=False, highlight=False)

    def reset(self) -> None:
        self.query_one(RichLog).clear()

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        now = time.monotonic()
        if self.throttle and now - self._last_write < WRITE_EVERY_S:
            model.dirty.add(LOG)  # not yet: keep the lines for the next repaint
            return
        self._last_write = now
        log = self.query_one(RichLog)
        notes = [Text(source.diagnostics.popleft(), style="dim italic") for _ in range(len(source.diagnostics))]
        if notes:
            log.write(Text("\n").join(notes))
        if LOG not in parts:
            return
        reset, lines = model.take_log()
        # Unthrottled (snapshots), a flood is written whole: how many lines the pane holds must not
        # depend on how the events happened to be batched.
        limit = MAX_WRITE if self.throttle else LOG_LINES
        if reset or len(lines) > limit:
            # a flood (or a seek): redraw only the newest lines; the session file keeps them all
            log.clear()
            lines = list(model.log)[-limit:]
        if lines:  # one write for them all: each write measures, renders and scrolls (~0.7 ms a line)
            log.write(Text("\n").join(Text(line, style=_style(line)) for line in lines))


def _style(line: str) -> str:
    if "DEACTIVATED" in line or " failed" in line or "refused" in line or "CRASH" in line:
        return "red"
    if " KEEP " in line or "activated" in line:
        return "green"
    if "paus" in line or "froze" in line:
        return "yellow"
    return ""

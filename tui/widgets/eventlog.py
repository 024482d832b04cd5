"""The event log: one readable line per notable event (the headless printer's lines), newest last."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text

from ..model import LOG, LOG_LINES
from .lazylog import LazyLog
from .pane import Pane

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source


WRITE_EVERY_S = 0.25  # the log is read, not watched: written 4× a second, its pane repaints 4× a second


class EventLogPane(Pane):
    PANE_TITLE = "Events"
    DEFAULT_CSS = """
    EventLogPane LazyLog { height: 1fr; background: transparent; }
    """

    def __init__(self, number: int, *, throttle: bool = True, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self.throttle = throttle  # off for snapshots: what is shown must not depend on timing
        self._last_write = 0.0

    def compose(self):
        yield LazyLog(id="event-log", max_lines=LOG_LINES)

    def reset(self) -> None:
        self.query_one(LazyLog).clear()

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        now = time.monotonic()
        if self.throttle and now - self._last_write < WRITE_EVERY_S:
            model.dirty.add(LOG)  # not yet: keep the lines for the next repaint
            return
        self._last_write = now
        log = self.query_one(LazyLog)
        log.write_lines(Text(source.diagnostics.popleft(), style="dim italic") for _ in range(len(source.diagnostics)))
        if LOG not in parts:
            return
        reset, lines = model.take_log()
        if reset or len(lines) > LOG_LINES:
            # a flood (or a seek): the newest lines the pane holds; the session file keeps them all
            log.clear()
            lines = list(model.log)[-LOG_LINES:]
        log.write_lines(Text(line, style=_style(line)) for line in lines)


def _style(line: str) -> str:
    if "DEACTIVATED" in line or " failed" in line or "refused" in line or "CRASH" in line:
        return "red"
    if " KEEP " in line or "activated" in line:
        return "green"
    if "paus" in line or "froze" in line:
        return "yellow"
    return ""

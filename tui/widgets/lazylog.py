"""An append-only log of one-line Rich texts that renders only the lines on screen.

RichLog renders every line as it is written (~0.35 ms a line: measure, render, pad); under a
flood of events the event log wrote ~75 lines four times a second into a pane that shows eight,
a 27 ms stretch that keys waited behind. Here a write appends the texts and grows the virtual
size (no re-layout); a line is rendered when it is first drawn, and then kept.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Size
from textual.reactive import Reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from .growing import grown
from .paintstyle import OneStylePerPaint

MIN_WIDTH = 78  # RichLog's min_width: the same horizontal scroll at every size as before


class LazyLog(OneStylePerPaint, ScrollView, can_focus=True):
    """Lines of text, newest last, at most ``max_lines``; a write scrolls to the end."""

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def __init__(self, *, max_lines: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self._texts: deque[Text] = deque(maxlen=max_lines)
        self._first = 0  # the absolute number of the oldest line kept (keys the rendered lines)
        self._strips: dict[int, Strip] = {}
        self._widest = 0

    @property
    def lines(self) -> list[str]:
        """The lines held, as plain text."""
        return [t.plain for t in self._texts]

    def write_lines(self, texts: Iterable[Text]) -> None:
        added = False
        for text in texts:
            for line in text.split("\n", allow_blank=True):
                if len(self._texts) == self.max_lines:
                    self._strips.pop(self._first, None)
                    self._first += 1
                self._texts.append(line)
                self._widest = max(self._widest, line.cell_len)
                added = True
        if added:
            self.virtual_size = Size(max(self._widest, MIN_WIDTH), len(self._texts))
            self.scroll_end(animate=False, immediate=True, x_axis=False)  # in this frame, not after it
            self.refresh()

    def clear(self) -> None:
        self._texts.clear()
        self._strips.clear()
        self._first = self._widest = 0
        self.virtual_size = Size(0, 0)
        self.refresh()

    def watch_virtual_size(self, size: Size) -> None:
        grown(self, size)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        index = scroll_y + y
        if not 0 <= index < len(self._texts):
            return Strip.blank(width, self.rich_style)
        key = self._first + index
        strip = self._strips.get(key)
        if strip is None:
            text, console = self._texts[index], self.app.console
            segments = text.render(console, end="")  # its spans; the base style goes under them
            if text.style:
                segments = Segment.apply_style(segments, console.get_style(text.style))
            strip = self._strips[key] = Strip(list(segments), text.cell_len)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style).apply_style(self.rich_style)

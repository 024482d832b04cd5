"""A scrolling view of text parts drawn with Textual's line API: it grows without a layout.

A VerticalScroll of Statics re-lays out the whole screen whenever a part's height changes
(a streamed research round grows four times a second, a strategy cycle adds lines), and a
layout repaints every pane: under a flood of events that was most of the app's time, and keys
waited behind it. Here each part is rendered once per width into lines, exactly as a Static of
that width would draw it, and new lines change only the view's virtual size, which repaints
the view and its scrollbar.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from rich.console import RenderableType
from textual.events import Resize
from textual.geometry import Size
from textual.reactive import Reactive
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip
from textual.visual import Visual, visualize

from .growing import grown
from .paintstyle import OneStylePerPaint
from .tables import shown_as


class PartsView(OneStylePerPaint, ScrollView, can_focus=True):
    """Shows ``set_parts``'s values one under the other, ``gap`` blank lines after each and
    ``inset`` blank columns either side (inside the scrollbar, where a part's own padding was).

    ``follow``: keep the end in view as parts grow and when the view's height changes, until the
    user scrolls up; scrolling back to the end follows again (``following`` says which).

    ``render`` turns a value into what a Static would show (a str is Markdown's source, say);
    a value equal to the one shown at the same place is not rendered again.
    """

    DEFAULT_CSS = """
    /* a fixed width (room for the scrollbar kept whether it shows or not): parts render once, and
       what is drawn never depends on whether a layout that shows the scrollbar has run yet */
    PartsView { overflow-y: scroll; overflow-x: hidden; scrollbar-gutter: stable; }
    """
    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def __init__(self, render: Callable[[Any], RenderableType] = lambda value: value, *, gap: int = 0,
                 inset: int = 0, follow: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.follows, self.following = follow, follow
        self.render_part = render
        self.gap, self.inset = gap, inset
        self._values: list[Any] = []
        self._looks: list[Any] = []  # shown_as of each value rendered
        self._rendered: list[list[Strip]] = []
        self._width = 0  # the width the parts were rendered at (0: not laid out yet)
        self._lines: list[Strip] = []
        self.pending = False  # parts left to render (set_parts ran out of its time budget)

    @property
    def text(self) -> str:
        """What the view shows, as plain text (tests, the screen's text)."""
        return "\n".join(strip.text.strip() for strip in self._lines)

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The text under a mouse selection (Textual's, as its Log gives it): the lines as drawn."""
        return selection.extract("\n".join(strip.text for strip in self._lines)), "\n"

    @property
    def line_count(self) -> int:
        return len(self._lines)

    @property
    def drawn(self) -> bool:
        """Every part is drawn at the view's laid-out width: False before the first layout and
        between a resize and its redraw (snapshots wait for this, never for time)."""
        width = self.scrollable_content_region.width - 2 * self.inset
        return not self._values or (width > 0 and width == self._width and len(self._rendered) == len(self._values))

    def set_parts(self, values: Iterable[Any], budget_s: float | None = None) -> bool:
        """Show ``values``; True when anything shown changed.

        ``budget_s``: stop rendering parts after this long (one part at least) and show those done;
        ``pending`` then says the caller should call again with the same values, which goes on from
        there. A new research session is a dozen Markdown parts (~10 ms each): drawn over a few
        repaints, no single repaint keeps a key waiting.
        """
        values = list(values)
        looks = [shown_as(v) for v in values]
        if looks == self._looks and len(self._rendered) == len(values):
            return False
        self._values = values
        self._render_parts(looks, budget_s)
        return True

    def _render_parts(self, looks: list[Any], budget_s: float | None = None) -> None:
        width = self.scrollable_content_region.width - 2 * self.inset
        if width != self._width:
            self._width, self._rendered, self._looks = width, [], []
        if width <= 0:  # not laid out yet: drawn on the first resize
            return
        kept = 0
        while kept < min(len(looks), len(self._looks), len(self._rendered)) and looks[kept] == self._looks[kept]:
            kept += 1
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        rendered = self._rendered[:kept]
        for value in self._values[kept:]:
            if deadline is not None and len(rendered) > kept and time.perf_counter() > deadline:
                break
            rendered.append(self._render_value(value, width))
        self._rendered, self._looks = rendered, looks[:len(rendered)]
        self.pending = len(rendered) < len(self._values)
        self._lines = [line for part in self._rendered for line in part]
        self.virtual_size = Size(width + self.inset, len(self._lines))
        self.refresh()
        self._stick()

    def _render_value(self, value: Any, width: int) -> list[Strip]:
        """A part's lines at ``width``, with its inset on the left and its gap below.

        (Not ``_render``: that is Widget's, which Textual's text selection calls with no arguments.)"""
        visual = visualize(self, self.render_part(value), markup=False)
        lines = Visual.to_strips(self, visual, width, None, self.visual_style) + [Strip.blank(width)] * self.gap
        if self.inset:
            margin = Strip.blank(self.inset)
            lines = [Strip.join([margin, line]) for line in lines]
        return lines

    def watch_virtual_size(self, size: Size) -> None:
        grown(self, size)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if not self.follows:
            return
        if new >= self.max_scroll_y - 1:
            self.following = True
        elif new < old:
            self.following = False  # the user scrolled up: leave the view where they put it

    def _stick(self) -> None:
        if self.following:
            self.scroll_to(y=self.max_scroll_y, animate=False)

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        changed = super()._size_updated(size, virtual_size, container_size, layout)
        self._stick()  # laid out shorter or taller: the end stays in view in the same frame
        return changed

    def on_resize(self, event: Resize) -> None:
        if self.scrollable_content_region.width - 2 * self.inset != self._width:
            self._render_parts([shown_as(v) for v in self._values])  # a resize: all of it, now

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if 0 <= index < len(self._lines):
            return self._lines[index].crop_extend(0, width, self.rich_style).apply_style(self.rich_style)
        return Strip.blank(width, self.rich_style)

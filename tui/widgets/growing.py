"""Scrolling widgets that grow without re-laying out the screen.

Textual re-lays out the whole screen whenever a widget's virtual size changes — each line
written to a log, each row added to a table — although a widget whose own size is fixed by
the layout (``1fr``) only needs its scrollbars redrawn. Under a flood of events that was a
full layout and repaint of every pane up to ten times a second, and keys waited behind it.
These keep the layout for when a scrollbar appears or goes (its space changes the widget's).
:func:`update_static` does the same for a Static whose new text takes the room the old one took
(the guidance, a patch of the same length): Textual re-lays out the screen on every update.
"""
from __future__ import annotations

from textual.geometry import Size
from textual.reactive import Reactive
from textual.scroll_view import ScrollView
from textual.visual import VisualType
from textual.widget import Widget
from textual.widgets import DataTable, OptionList, Static

from .tables import IncrementalTable


def grown(widget: ScrollView | DataTable | OptionList, size: Size) -> None:
    widget._refresh_scrollbars()  # a bar that appears or goes re-lays out (its reactive says so)
    if widget.show_vertical_scrollbar:
        widget.vertical_scrollbar.window_virtual_size = size.height
    if widget.show_horizontal_scrollbar:
        widget.horizontal_scrollbar.window_virtual_size = size.width
    widget.refresh()


class GrowingTable(IncrementalTable):
    """A DataTable whose new rows repaint it and its scrollbar only (and a focus change its cursor row)."""

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def watch_virtual_size(self, size: Size) -> None:
        grown(self, size)

    def settle(self) -> None:
        """Measure the rows added since the last frame now, not when the table is next idle.

        DataTable sizes new rows on idle, and a cursor moved before that scrolls after the next
        frame: each new row at the end drew the table twice, in two frames a few dozen ms apart.
        """
        if self._require_update_dimensions:
            self._require_update_dimensions = False
            new_rows = self._new_rows.copy()
            self._new_rows.clear()
            self._update_dimensions(new_rows)


class GrowingOptionList(OptionList):
    """An OptionList whose new options repaint it and its scrollbar only."""

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def watch_virtual_size(self, size: Size) -> None:
        grown(self, size)


def _laid_out_size(widget: Static) -> tuple[int | None, int | None]:
    """What of the content's size the layout reads at the widget's current width: only the
    dimensions styled ``auto``, the height clamped by a min- and max-height in cells (None: the
    layout does not read it)."""
    styles = widget.styles
    container = widget.parent.content_size if isinstance(widget.parent, Widget) else widget.app.size
    width = height = None
    if styles.width is not None and styles.width.is_auto:  # unset: the width fills the container
        width = widget.get_content_width(container, widget.app.size)
    if styles.height is not None and styles.height.is_auto:
        height = widget.get_content_height(container, widget.app.size, widget.content_size.width)
        height += styles.gutter.height if styles.box_sizing == "border-box" else 0
        low, high = styles.min_height, styles.max_height
        if low is not None and low.is_cells:
            height = max(height, int(low.value))
        if high is not None and high.is_cells:
            height = min(height, int(high.value))
    return width, height


def update_static(widget: Static, content: VisualType) -> None:
    """``widget.update(content)``, re-laying out the screen only when the content's size changed
    where the layout reads it (a guidance of another length in a box of fixed width, say, does not)."""
    if not widget.is_attached or not widget.content_size.width:
        widget.update(content)  # not laid out yet
        return
    before = _laid_out_size(widget)
    widget.update(content, layout=False)
    if _laid_out_size(widget) != before:
        widget.refresh(layout=True)

"""A one-cell bar between two panes; drag it with the mouse to share the space differently."""
from __future__ import annotations

from textual import events
from textual.widget import Widget


class Splitter(Widget):
    """Resizes the widget before it (``target``) by dragging; its neighbour takes the rest.

    Sizes are kept as percentages of the parent, so the layout survives a terminal resize.
    """

    DEFAULT_CSS = """
    Splitter { background: $panel; }
    Splitter.-vertical { width: 1; height: 1fr; }
    Splitter.-horizontal { height: 1; width: 1fr; }
    Splitter:hover, Splitter.-dragging { background: $accent; }
    """

    def __init__(self, target: str, *, vertical: bool, minimum: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_id = target
        self.vertical = vertical  # a vertical bar moves left/right and sets a width
        self.minimum = minimum
        self.add_class("-vertical" if vertical else "-horizontal")
        self._dragging = False

    def render(self) -> str:
        return ""

    def on_mouse_down(self, event: events.MouseDown) -> None:
        self._dragging = True
        self.add_class("-dragging")
        self.capture_mouse()
        event.stop()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._dragging:
            self._dragging = False
            self.remove_class("-dragging")
            self.release_mouse()
            event.stop()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if not self._dragging or self.parent is None:
            return
        parent = self.parent.content_region
        target = self.screen.query_one(f"#{self.target_id}")
        if self.vertical:
            pos = event.screen_x - parent.x
            self.set_share(target, pos, parent.width)
        else:
            pos = event.screen_y - parent.y
            self.set_share(target, pos, parent.height)
        event.stop()

    def set_share(self, target: Widget, cells: int, total: int) -> None:
        if total <= 0:
            return
        cells = max(self.minimum, min(total - self.minimum, cells))
        percent = round(100 * cells / total, 1)
        if self.vertical:
            target.styles.width = f"{percent}%"
        else:
            target.styles.height = f"{percent}%"

    def nudge(self, cells: int) -> None:
        """Grow (positive) or shrink the target by ``cells`` — the keyboard's way to resize."""
        if self.parent is None:
            return
        target = self.screen.query_one(f"#{self.target_id}")
        total = self.parent.content_region.width if self.vertical else self.parent.content_region.height
        current = target.outer_size.width if self.vertical else target.outer_size.height
        self.set_share(target, current + cells, total)

"""A widget's base style, worked out once a paint instead of once a line.

``Widget.rich_style`` walks every ancestor's styles (backgrounds, tints, opacity) each time it is
read, ~0.1 ms on this box, and DataTable and the line-API views read it for every line they
draw: a quarter of a table's repaint. During a paint nothing it depends on can change.
"""
from __future__ import annotations

from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip


class OneStylePerPaint:
    """Mix in before the widget class: ``rich_style`` is read once per ``render_lines``."""

    _paint_style: Style | None = None

    @property
    def rich_style(self) -> Style:
        style = self._paint_style
        return style if style is not None else super().rich_style  # type: ignore[misc]

    def render_lines(self, crop: Region) -> list[Strip]:
        self._paint_style = super().rich_style  # type: ignore[misc]
        try:
            return super().render_lines(crop)  # type: ignore[misc]
        finally:
            self._paint_style = None

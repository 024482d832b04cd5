"""Markdown drawn by Rich into one widget: cheap to re-render while tokens stream.

Textual's Markdown widget makes a widget per block; a long research dialogue becomes
hundreds of widgets and every screen switch re-lays them all out. One Static per
document part keeps the widget count flat and repaints only the part that changed.
"""
from __future__ import annotations

from typing import Any, Iterator

from rich.console import Console, ConsoleOptions
from rich.markdown import Markdown as RichMarkdown
from rich.segment import Segment
from textual.widgets import Static

CODE_THEME = "ansi_dark"  # 16 colours: right in tmux and over SSH without truecolor


class RenderedOnce:
    """A renderable that renders once per width: layout measures a part many times, code blocks are
    highlighted by pygments, and both are far too slow to repeat for text that did not change."""

    def __init__(self, renderable: Any) -> None:
        self.renderable = renderable
        self._lines: tuple[int, list[list[Segment]]] | None = None

    def _render(self, console: Console, options: ConsoleOptions) -> list[list[Segment]]:
        width = options.max_width
        if self._lines is None or self._lines[0] != width:
            self._lines = (width, console.render_lines(self.renderable, options.update(height=None), pad=False))
        return self._lines[1]

    def height(self, console: Console, width: int) -> int:
        """Lines at ``width`` (rendered now, and kept for the paint)."""
        return len(self._render(console, console.options.update_width(width)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        new_line = Segment.line()
        for line in self._render(console, options):
            yield from line
            yield new_line


class MarkdownText(Static):
    DEFAULT_CSS = """
    MarkdownText { height: auto; padding: 0 1; }
    """

    def __init__(self, markdown: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.markdown = ""
        self._height: int | None = None  # lines at the last width rendered (None: not known)
        if markdown:
            self.set_markdown(markdown)

    def set_markdown(self, markdown: str) -> bool:
        """Render ``markdown`` unless it is what is shown already; True when it changed."""
        if markdown == self.markdown and self.markdown:
            return False
        self.markdown = markdown
        rendered = RenderedOnce(RichMarkdown(markdown, code_theme=CODE_THEME, hyperlinks=False))
        height = rendered.height(self.app.console, self.content_size.width) if self.content_size.width else None
        # Streaming tokens mostly extend a line: the same height needs a repaint, not a re-layout of the screen.
        self.update(rendered, layout=height is None or height != self._height)
        self._height = height
        return True

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

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        width = options.max_width
        if self._lines is None or self._lines[0] != width:
            self._lines = (width, console.render_lines(self.renderable, options.update(height=None), pad=False))
        new_line = Segment.line()
        for line in self._lines[1]:
            yield from line
            yield new_line


class MarkdownText(Static):
    DEFAULT_CSS = """
    MarkdownText { height: auto; padding: 0 1; }
    """

    def __init__(self, markdown: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.markdown = ""
        if markdown:
            self.set_markdown(markdown)

    def set_markdown(self, markdown: str) -> bool:
        """Render ``markdown`` unless it is what is shown already; True when it changed."""
        if markdown == self.markdown and self.markdown:
            return False
        self.markdown = markdown
        self.update(RenderedOnce(RichMarkdown(markdown, code_theme=CODE_THEME, hyperlinks=False)))
        return True

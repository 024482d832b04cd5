"""The base of every pane: a bordered, maximisable container that syncs from the view model.

The focused pane's border and title take the accent colour. Textual's ``:focus-within`` would
do it, but every focus move then restyles both panes' whole subtrees (~25 ms under a flood of
events); here the pane only sets its own inline border colour, which repaints its frame and
needs no layout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events
from rich.style import Style
from textual.color import Color
from textual.containers import Vertical

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

LIT_RULES = ("border_top", "border_right", "border_bottom", "border_left", "border_title_color",
             "auto_border_title_color", "border_title_style")


class Pane(Vertical):
    """A titled region of the screen; ``z`` maximises it, ``escape`` restores the layout."""

    ALLOW_MAXIMIZE = True
    PANE_TITLE = ""
    DEFAULT_CSS = """
    Pane {
        border: round $panel-lighten-2;
        border-title-color: $text-muted;
        padding: 0 0;
        height: 1fr;
    }
    """

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.border_title = f"{number} {self.PANE_TITLE}"
        self.lit = False  # the border shows that the focus is inside

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        """Bring the pane up to date with the parts of the model that changed."""

    def reset(self) -> None:
        """Forget everything shown (a replay seeked backwards)."""

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.show_focus()

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self.show_focus()

    def show_focus(self, *, again: bool = False) -> None:
        """Light the border while the focus is inside; ``again``: re-read the theme's accent."""
        focused = self.screen.focused if self.is_attached else None
        lit = focused is not None and self in focused.ancestors_with_self
        if lit == self.lit and not again:
            return
        self.lit = lit
        # set_rule, not the style properties: those repaint every widget inside the pane too
        inline = self.styles.inline
        if lit:
            accent = Color.parse(self.app.theme_variables["accent"])
            self.styles.border = ("round", accent)  # the same edges: a repaint of the frame, no layout
            inline.set_rule("border_title_color", accent)
            inline.set_rule("auto_border_title_color", False)  # $text-muted is an "auto" colour
            inline.set_rule("border_title_style", Style(bold=True))
        else:
            for rule in LIT_RULES:
                inline.clear_rule(rule)
        self.refresh()

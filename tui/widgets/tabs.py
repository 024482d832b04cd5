"""The pane strip of the compact layout: which pane shows, and the number key of each."""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

NAMES = (("trace", "1 Trace"), ("strategy", "2 Strategy"), ("research", "3 Research"), ("patches", "4 Patches"),
         ("events", "5 Events"))


class PaneTabs(Widget):
    """One line under the header, shown only in the compact layout (one pane at a time)."""

    DEFAULT_CSS = """
    PaneTabs { height: 1; display: none; background: $panel-darken-1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = "trace"

    def show(self, current: str) -> None:
        self.current = current
        self.refresh()

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        for pane_id, label in NAMES:
            out.append(f" {label} ", style="bold reverse" if pane_id == self.current else "dim")
            out.append(" ")
        return out

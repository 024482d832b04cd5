"""The iteration detail view (Enter on a trace row): why it happened, how it was judged, its log and diff."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class IterationDetailScreen(ModalScreen[None]):
    """A scrollable page of :func:`tui.detail.iteration_detail`; escape (or q, Enter) closes it."""

    BINDINGS = [
        Binding("escape,q,enter", "dismiss(None)", "Close", id="detail.close"),
        Binding("home", "scroll('home')", "Top", id="detail.top", show=False),
        Binding("end", "scroll('end')", "Bottom", id="detail.bottom", show=False),
    ]
    DEFAULT_CSS = """
    IterationDetailScreen { align: center middle; background: $background; }  /* opaque: the panes need no repaint */
    IterationDetailScreen > VerticalScroll {
        width: 100%; max-width: 140; height: 100%; border: thick $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, iteration: int, text: Text) -> None:
        super().__init__()
        self.iteration, self.text = iteration, text

    def compose(self) -> ComposeResult:
        scroll = VerticalScroll(id="detail-scroll")
        scroll.border_title = f"Iteration #{self.iteration} — escape closes"
        with scroll:
            yield Static(self.text, id="detail-text")

    def on_mount(self) -> None:
        self.query_one("#detail-scroll").focus()

    def action_scroll(self, where: str) -> None:
        scroll = self.query_one("#detail-scroll", VerticalScroll)
        scroll.scroll_home(animate=False) if where == "home" else scroll.scroll_end(animate=False)

"""The iteration detail view (Enter on a trace row): why it happened, how it was judged, its log and diff."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen

from ..widgets.parts import PartsView


class IterationDetailScreen(ModalScreen[None]):
    """A scrollable page of :func:`tui.detail.iteration_detail`; escape (or q, Enter) closes it.

    The app builds one and re-shows it with :meth:`show`: a fresh screen per Enter was composed,
    styled and laid out from nothing, and removing it on close re-laid out the panes' screen.
    """

    BINDINGS = [
        Binding("escape,q,enter", "dismiss(None)", "Close", id="detail.close"),
        Binding("home", "scroll('home')", "Top", id="detail.top", show=False),
        Binding("end", "scroll('end')", "Bottom", id="detail.bottom", show=False),
    ]
    DEFAULT_CSS = """
    IterationDetailScreen { align: center middle; background: $background; }  /* opaque: the panes need no repaint */
    IterationDetailScreen > PartsView {
        width: 100%; max-width: 140; height: 100%; border: thick $accent; background: $surface; padding: 0 1;
        overflow-y: auto;
    }
    """

    def __init__(self, iteration: int, text: Text) -> None:
        super().__init__()
        self.iteration, self.text = iteration, text

    def compose(self) -> ComposeResult:
        yield PartsView(id="detail-scroll")

    def on_mount(self) -> None:
        self._draw()
        self.query_one("#detail-scroll").focus()

    def show(self, iteration: int, text: Text) -> None:
        """Show another iteration's page (or the same one, refreshed), from its top."""
        self.iteration, self.text = iteration, text
        if self.is_mounted:
            self._draw()

    def _draw(self) -> None:
        view = self.query_one("#detail-scroll", PartsView)
        view.border_title = f"Iteration #{self.iteration} — escape closes"
        view.set_parts([self.text])
        view.scroll_home(animate=False, immediate=True)

    def action_scroll(self, where: str) -> None:
        view = self.query_one("#detail-scroll", PartsView)
        view.scroll_home(animate=False) if where == "home" else view.scroll_end(animate=False)

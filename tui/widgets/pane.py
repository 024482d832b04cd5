"""The base of every pane: a bordered, maximisable container that syncs from the view model."""
from __future__ import annotations

from typing import TYPE_CHECKING

from textual.containers import Vertical

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source


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
    Pane:focus-within {
        border: round $accent;
        border-title-color: $accent;
        border-title-style: bold;
    }
    """

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.border_title = f"{number} {self.PANE_TITLE}"

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        """Bring the pane up to date with the parts of the model that changed."""

    def reset(self) -> None:
        """Forget everything shown (a replay seeked backwards)."""

"""Keep a scrolling view at its end while new text arrives, until the user scrolls away from it."""
from __future__ import annotations

from textual.containers import ScrollableContainer


class EndFollower:
    """Follows the end of ``view``: scrolling up stops following, scrolling back to the end resumes."""

    def __init__(self, view: ScrollableContainer) -> None:
        self.view = view
        self.following = True
        view.watch(view, "scroll_y", self._moved, init=False)
        view.watch(view, "virtual_size", self._grew, init=False)  # laid out: the end is known now

    def _moved(self, old: float, new: float) -> None:
        at_end = new >= self.view.max_scroll_y - 1
        if at_end:
            self.following = True
        elif new < old:
            self.following = False

    def _grew(self) -> None:
        if self.following:
            self.view.scroll_end(animate=False, immediate=True)

    def follow(self, on: bool = True) -> None:
        self.following = on

    def content_changed(self) -> None:
        """Call after adding content: scrolls to the new end once it is laid out."""
        if self.following:
            self.view.scroll_end(animate=False, immediate=False)

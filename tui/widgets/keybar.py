"""The key bar: Textual's footer, cut down to the keys that matter when the terminal is narrow.

At 80 columns every key does not fit, and the footer would lose its end — `? Help` and `q Quit`
first. In the compact layout only :data:`COMPACT_ACTIONS` are shown (the rest stay bound, in
the help and the command palette).
"""
from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

COMPACT_ACTIONS = frozenset({"toggle_pause", "abort_training", "edit_guidance", "review_mechanism",
                             "replay_step", "replay_seek", "help", "quit_app"})


class KeyBar(Footer):
    narrow = reactive(False, recompose=True)

    def compose(self):
        for widget in super().compose():
            if self.narrow and isinstance(widget, FooterKey) and widget.action not in COMPACT_ACTIONS \
                    and not widget.has_class("-command-palette"):
                continue
            yield widget

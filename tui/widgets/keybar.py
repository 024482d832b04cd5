"""The key bar: Textual's footer, cut down to the keys that matter when the terminal is narrow.

At 80 columns every key does not fit, and the footer would lose its end — `? Help` and `q Quit`
first. In the compact layout only :data:`COMPACT_ACTIONS` are shown (the rest stay bound, in
the help and the command palette).

Textual's footer rebuilds all its keys whenever the bindings may have changed — each screen
opened or closed, each focus move — and the new widgets re-lay out the whole screen. This one
rebuilds only when the keys shown change; a key that is only enabled or disabled (abort, every
iteration) is updated in place.
"""
from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

COMPACT_ACTIONS = frozenset({"toggle_pause", "abort_training", "edit_guidance", "review_mechanism",
                             "replay_step", "replay_seek", "help", "quit_app"})

Signature = tuple[bool, tuple[tuple[str, str, str, bool], ...]]


class KeyBar(Footer):
    narrow = reactive(False, recompose=True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shown: Signature | None = None  # what the last compose drew

    def _signature(self) -> Signature:
        keys = tuple((b.key, b.action, b.description, bool(enabled))
                     for (_node, b, enabled, _tip) in self.screen.active_bindings.values() if b.show)
        return self.narrow, keys

    def compose(self):
        if self._bindings_ready:
            self._shown = self._signature()
        for widget in super().compose():
            if self.narrow and isinstance(widget, FooterKey) and widget.action not in COMPACT_ACTIONS \
                    and not widget.has_class("-command-palette"):
                continue
            yield widget

    def bindings_changed(self, screen) -> None:
        self._bindings_ready = True
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self.call_after_refresh(self._follow_bindings)  # read them when Textual's footer would

    async def _follow_bindings(self) -> None:
        if not self.is_attached:
            return
        shown, now = self._shown, self._signature()
        if now == shown:
            return
        if shown is not None and shown[0] == now[0] and [k[:3] for k in shown[1]] == [k[:3] for k in now[1]]:
            enabled = {(key, action): on for key, action, _desc, on in now[1]}
            for widget in self.query(FooterKey):
                on = enabled.get((widget.key, widget.action))
                # FooterKey keeps its own flag (a click on a disabled key rings the bell) and dims by a class
                if on is not None and widget.has_class("-disabled") == on:
                    widget._disabled = not on
                    widget.set_class(not on, "-disabled")
            self._shown = now
            return
        await self.recompose()

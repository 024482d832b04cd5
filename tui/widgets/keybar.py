"""The key bar: the keys that fit, drawn as one line of text, with `? Help` and `q Quit` always whole.

Textual's footer is a row of widgets, one per key, rebuilt whenever the bindings may have changed
(each focus move, each screen); a pane switch re-mounted a dozen widgets and re-laid out the screen,
and the row simply ran off its end: at 120 columns with the research pane focused it showed
"? Hel" and no Quit. This bar is one widget that renders its line: a change of keys is a repaint
of one row, never a layout. It draws the same cells as the footer did (` key ` bold, `desc `,
the command palette key on the right edge), and fits them to the width: the help and quit keys
first, then the app's usable keys in order, then the focused pane's own keys, then the app's
disabled keys (`?` lists every key).
In the compact layout (under 100 columns) only :data:`COMPACT_ACTIONS` are candidates.
A click on a key presses it, as on the footer.
"""
from __future__ import annotations

from typing import NamedTuple

from rich.text import Text
from textual import events
from textual.reactive import reactive
from textual.widget import Widget

COMPACT_ACTIONS = frozenset({"toggle_pause", "abort_training", "edit_guidance", "review_mechanism",
                             "replay_step", "replay_seek", "help", "quit_app"})
KEPT_ACTIONS = ("help", "quit_app")  # shown whatever the width: the way to every other key, and out


class Key(NamedTuple):
    key: str  # the key Textual names (what a click presses)
    display: str
    description: str
    action: str
    enabled: bool
    pane: bool  # a key of the focused pane (dropped first when the width runs out)

    @property
    def width(self) -> int:
        return len(self.display) + len(self.description) + 3  # " key " + "desc "


class KeyBar(Widget, can_focus=False):
    COMPONENT_CLASSES = {"keybar--key", "keybar--description", "keybar--edge"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        width: 1fr;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
    }
    KeyBar > .keybar--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    KeyBar > .keybar--description {
        color: $footer-description-foreground;
        background: $footer-description-background;
    }
    KeyBar > .keybar--edge {
        color: $foreground 20%;
    }
    """

    narrow = reactive(False)  # the compact layout: its essential keys only

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keys: tuple[Key, ...] = ()  # every key the screen shows, in the footer's order
        self.palette: Key | None = None
        self._spans: list[tuple[int, int, Key]] = []  # x range -> key, of the last render

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self.call_after_refresh(self._read_bindings)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen) -> None:
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self._read_bindings)  # read them when Textual's footer would

    def _read_bindings(self) -> None:
        if not self.is_attached:
            return
        app, keys, seen = self.app, [], set()
        active = self.screen.active_bindings
        for node, binding, enabled, _tip in active.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)  # one cell per action, as the footer (its first key)
            from .pane import Pane  # a key of a pane, not of the app: dropped first

            keys.append(Key(binding.key, app.get_key_display(binding), binding.description, binding.action,
                            bool(enabled), isinstance(node, Pane)))
        palette = None
        if app.ENABLE_COMMAND_PALETTE and app.COMMAND_PALETTE_BINDING in active:
            _node, binding, enabled, _tip = active[app.COMMAND_PALETTE_BINDING]
            palette = Key(binding.key, app.get_key_display(binding), binding.description, binding.action,
                          bool(enabled), False)
        keys_now = tuple(keys)
        if keys_now != self.keys or palette != self.palette:
            self.keys, self.palette = keys_now, palette
            self.refresh()

    def watch_narrow(self) -> None:
        self.refresh()

    def shown(self, width: int | None = None) -> list[Key]:
        """The keys that fit in ``width`` cells (the bar's own width by default), in display order."""
        width = self.size.width if width is None else width
        room = width - (self._palette_width() if self.palette else 0)
        candidates = [k for k in self.keys if not self.narrow or k.action in COMPACT_ACTIONS]
        kept = [k for k in candidates if k.action in KEPT_ACTIONS]
        chosen = set(kept)
        room -= sum(k.width for k in kept)
        # then the app's usable keys in order, the pane's keys (all or none: "[" without "]" misleads),
        # the app's disabled keys; the first that does not fit ends the bar
        rest = [k for k in candidates if k not in chosen]
        groups = [[k] for k in rest if k.enabled and not k.pane] + [[k for k in rest if k.pane]] \
            + [[k] for k in rest if not k.enabled and not k.pane]
        for group in filter(None, groups):
            width = sum(k.width for k in group)
            if width > room:
                break
            chosen.update(group)
            room -= width
        return [k for k in candidates if k in chosen]

    def _palette_width(self) -> int:
        assert self.palette is not None
        return 1 + len(self.palette.display) + 1 + len(self.palette.description) + 1  # "▏^p palette "

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keybar--key")
        description_style = self.get_component_rich_style("keybar--description")
        edge_style = self.get_component_rich_style("keybar--edge")
        width = self.size.width
        line = Text(no_wrap=True, overflow="crop", end="")
        spans = []
        for key in self.shown(width):
            start = line.cell_len
            cell = Text.assemble((f" {key.display} ", key_style), (f"{key.description} ", description_style))
            if not key.enabled:
                cell.stylize("dim")
            line.append_text(cell)
            spans.append((start, line.cell_len, key))
        if self.palette is not None:
            palette = self.palette
            line.append(" " * max(0, width - line.cell_len - self._palette_width()))
            start = line.cell_len
            line.append("▏", edge_style)
            line.append_text(Text.assemble((palette.display, key_style), (f" {palette.description}", description_style)))
            line.append(" ")
            spans.append((start, line.cell_len, palette))
        self._spans = spans
        return line

    def text(self) -> str:
        """The bar as it reads on the screen (tests)."""
        return self.render().plain

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                if key.enabled:
                    self.app.simulate_key(key.key)
                else:
                    self.app.bell()
                return

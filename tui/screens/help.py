"""The help: what each pane shows and every key, as currently bound."""
from __future__ import annotations

from collections.abc import Collection

from textual.app import ComposeResult
from textual.binding import Binding
from rich.text import Text
from textual.screen import ModalScreen

from ..widgets.parts import PartsView


PANES = (
    ("1 Trace", "one row per iteration: changes, val_bpb, Δ against the best before it, the verdict "
     "(keep · discard · crash · rejected · interrupted · cancelled), time, the mechanisms that touched it; "
     "below, val_bpb under its running minimum and the current training run (with parallel trials: one line per "
     "slot, the trace in finish order, x asks which trial to abort). Enter on a row opens its detail: why it "
     "was proposed, what the proposer saw, the verdict with its rule and margin, the log tail, the diff."),
    ("2 Strategy", "Level 1.5: the guidance with who wrote it and when Level 1.5 next may rewrite it (g edits "
     "it, ctrl+t there pins it), every parameter's state (active · frozen · locked), each cycle's freezes and "
     "unfreezes with their reasons."),
    ("3 Research", "Level 2: the four-round dialogue as it streams, tokens per round; [ and ] move between "
     "research sessions; t opens a thinking model's reasoning."),
    ("4 Patches", "every train.py diff and every generated mechanism with its validation report; d flips a "
     "mechanism between source and diff."),
    ("5 Events", "one line per notable event."),
)


def help_text(keys: list[tuple[str, str, str]], mode: str, pane_keys: list[tuple[str, str, str]] | None = None,
              pane_title: str = "", idle: Collection[str] = ()) -> Text:
    """Plain styled text (not Markdown): the help opens instantly even while events pour in.

    ``idle``: the binding ids that do nothing right now (no run to abort, nothing to approve),
    listed dimmed: every key is in the help whatever the moment, and its lines stay put."""
    out = Text()
    out.append(f"bilevel — {mode}\n\n", style="bold")

    def key_lines(listed: list[tuple[str, str, str]]) -> None:
        for key, desc, bid in listed:
            now = bid not in idle
            out.append(f"  {key:<12}", style="bold yellow" if now else "dim")
            out.append(f"{desc:<34}", style="" if now else "dim")
            out.append(f"[{bid}]" + ("" if now else " not now") + "\n", style="dim")

    if pane_keys:
        out.append(f"Keys of the focused pane: {pane_title}\n", style="bold underline")
        key_lines(pane_keys)
        out.append("\n")
    out.append("Panes\n", style="bold underline")
    for name, what in PANES:
        out.append(f"  {name:<11}", style="bold cyan")
        out.append(f"{what}\n")
    out.append("  Drag the bars between panes with the mouse, or use ctrl+arrows, to resize; z maximises.\n")
    out.append("  Under 100 columns one pane shows at a time: 1–5 switch, l flips to the event log.\n\n")
    out.append("Keys", style="bold underline")
    out.append("   (binding ids in brackets; dimmed: nothing for it to do right now)\n", style="dim")
    key_lines(keys)
    out.append("\nEvery action is also in the command palette (ctrl+p). Remap keys by binding id in "
               "~/.config/bilevel/keymap.toml, e.g.\n  [keymap]\n  pause = \"p\"\n", style="italic")
    return out


class HelpScreen(ModalScreen[None]):
    """The help, built once per app and re-shown: :meth:`show` only redraws the text when the keys changed.

    The text is a :class:`PartsView` (drawn with the line API, no layout of its own): as a
    Static in a scroll container, the first ``?`` laid the new screen out twice, rendering the
    whole text each time, ~100 ms under a flood of events."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close", id="help.close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background; }  /* opaque: the panes need no repaint */
    HelpScreen > PartsView { width: 110; max-width: 100%; height: 100%; border: thick $accent;
                             background: $surface; padding: 0 1; overflow-y: auto; }
    """

    def __init__(self, keys: list[tuple[str, str, str]], mode: str, *,
                 pane_keys: list[tuple[str, str, str]] | None = None, pane_title: str = "",
                 idle: Collection[str] = ()) -> None:
        """``keys``: (key, description, binding id) of the bindings of this mode; ``pane_keys``:
        those of the focused pane, listed first; ``idle``: the ids of those that do nothing now."""
        super().__init__()
        self._listed: tuple = ()
        self._text = Text()
        self.show(keys, mode, pane_keys=pane_keys, pane_title=pane_title, idle=idle)

    def show(self, keys: list[tuple[str, str, str]], mode: str, *,
             pane_keys: list[tuple[str, str, str]] | None = None, pane_title: str = "",
             idle: Collection[str] = ()) -> None:
        """List these keys (a no-op when they are the ones listed already)."""
        self.keys, self.mode = keys, mode
        self.pane_keys, self.pane_title, self.idle = pane_keys or [], pane_title, frozenset(idle)
        listed = (tuple(keys), mode, tuple(self.pane_keys), pane_title, self.idle)
        if listed == self._listed:
            return
        self._listed = listed
        self._text = help_text(self.keys, self.mode, self.pane_keys, self.pane_title, self.idle)
        if self.is_mounted:
            self.query_one("#help-text", PartsView).set_parts([self._text])

    def compose(self) -> ComposeResult:
        yield PartsView(id="help-text")

    def on_mount(self) -> None:
        view = self.query_one("#help-text", PartsView)
        view.set_parts([self._text])
        view.focus()  # the arrows and page keys scroll it

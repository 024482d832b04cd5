"""The Patch viewer: every train.py diff and every generated mechanism, highlighted by pygments.

The list on the left holds one entry per iteration that trained a change and one per
mechanism validated or activated; the newest is shown unless the user picked another.
A diff opens at its first change and scrolls sideways; a mechanism's source wraps, with its
validation report below it; ``d`` flips any mechanism to its diff (a built-in: added whole).
A mechanism declined or expired after validation says so in the list, never with a ✓.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from typing import TYPE_CHECKING

from rich.syntax import Syntax
from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..model import PATCHES, PatchEntry
from .growing import GrowingOptionList, update_static
from .markdown import MarkdownText
from .pane import Pane

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

SYNTAX_THEME = "ansi_dark"  # 16-colour palette: right in tmux and over SSH without truecolor
DIFF_BACKGROUND = {"+": "on color(22)", "-": "on color(52)"}  # 256-colour greens/reds, downsampled as needed


def highlight(text: str, lexer: str) -> Syntax:
    """Source, wrapped to the pane's width (a long line is never cut off)."""
    return Syntax(text, lexer, theme=SYNTAX_THEME, background_color="default", word_wrap=True,
                  line_numbers=lexer != "diff")


def first_change(text: str) -> int:
    """The line of a unified diff where the first added or removed line is (0 when there is none)."""
    for i, line in enumerate(text.splitlines()):
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---")):
            return i
    return 0


def diff_text(text: str, lexer: str = "python") -> Text:
    """A unified diff: the code highlighted by pygments, added lines marked green, removed red."""
    lines = text.splitlines()
    is_code = [not line.startswith(("+++", "---", "@@")) and line[:1] in ("+", "-", " ") for line in lines]
    bodies = [line[1:] if code else "" for line, code in zip(lines, is_code)]
    highlighted = list(Syntax("", lexer, theme=SYNTAX_THEME).highlight("\n".join(bodies)).split("\n"))
    highlighted += [Text() for _ in range(len(lines) - len(highlighted))]
    out = Text(no_wrap=True)  # one screen line per diff line: the pane scrolls sideways instead
    for line, code, body in zip(lines, is_code, highlighted):
        if not code:
            out.append(line, style="cyan" if line.startswith("@@") else "bold")
        else:
            mark = line[0]
            style = {"+": "green", "-": "red"}.get(mark, "dim")
            out.append(mark + " ", style=f"bold {style}")
            body.stylize(DIFF_BACKGROUND.get(mark, ""))
            out.append_text(body)
        out.append("\n")
    return out


class PatchPane(Pane):
    PANE_TITLE = "Patches"
    BINDINGS = [
        Binding("d", "toggle_diff", "Source/diff", id="patches.toggle_diff"),
        Binding("n", "next_patch", "Next patch", id="patches.next", show=False),
        Binding("p", "previous_patch", "Prev patch", id="patches.previous", show=False),
    ]
    DEFAULT_CSS = """
    PatchPane > Horizontal { height: 1fr; }
    PatchPane #patch-list { width: 30; height: 1fr; border: none; border-right: vkey $panel-lighten-1; }
    PatchPane #patch-body { width: 1fr; }
    PatchPane #patch-title { height: 1; padding: 0 1; background: $boost; }
    PatchPane #patch-code-scroll { height: 1fr; overflow-x: auto; overflow-y: auto; }
    PatchPane #patch-code { width: auto; min-width: 100%; }
    PatchPane.-wrap #patch-code { width: 100%; }
    PatchPane #patch-report-scroll { height: 1fr; display: none; border-top: hkey $panel-lighten-1; }
    PatchPane.-mechanism #patch-report-scroll { display: block; }
    PatchPane.-mechanism #patch-code-scroll { height: 2fr; }
    """
    CONTEXT_ABOVE = 2  # lines shown above a diff's first change

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self.follow = True
        self.show_diff = False
        self._shown: tuple[str, bool] | None = None
        self._entries: dict[str, PatchEntry] = {}
        self._labels: dict[str, str] = {}  # what each listed entry's prompt says
        self._source: Source | None = None
        self._placeholder = False  # the "no patch yet" text is shown

    def compose(self):
        with Horizontal():
            yield GrowingOptionList(id="patch-list")
            with Vertical(id="patch-body"):
                yield Static(id="patch-title")
                with Vertical(id="patch-panes"):
                    with ScrollableContainer(id="patch-code-scroll"):
                        yield Static(id="patch-code")
                    with VerticalScroll(id="patch-report-scroll"):
                        yield MarkdownText(id="patch-report")

    @property
    def options(self) -> OptionList:
        return self.query_one("#patch-list", OptionList)

    def reset(self) -> None:
        self.options.clear_options()
        self._entries.clear()
        self._labels.clear()
        self._shown = None
        self._placeholder = False
        self.follow = True

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        self._source = source
        if PATCHES not in parts:
            if not self._placeholder and not self._entries:
                await self._show(None)
            return
        options = self.options
        new = [e for k, e in model.patches.items() if k not in self._entries]
        for entry in new:
            self._entries[entry.key] = entry
            self._labels[entry.key] = entry.label
            options.add_option(Option(self._label(entry), id=entry.key))
        for key, entry in model.patches.items():  # an outcome relabels an entry already listed
            if self._labels.get(key) != entry.label:
                self._labels[key] = entry.label
                options.replace_option_prompt(key, self._label(entry))
                if self._shown is not None and self._shown[0] == key:
                    self._shown = None  # its title names the outcome too
        if new and self.follow:
            options.highlighted = options.option_count - 1
        await self._show_highlighted()

    def _label(self, entry: PatchEntry) -> Text:
        if entry.kind == "iteration":
            return Text(entry.label)
        if entry.outcome and entry.outcome != "activated":
            return Text(entry.label, style="yellow")
        return Text(entry.label, style="green" if entry.ok else ("red" if entry.ok is False else ""))

    async def _show_highlighted(self) -> None:
        options = self.options
        if options.highlighted is None:
            await self._show(None)
            return
        option = options.get_option_at_index(options.highlighted)
        await self._show(self._entries.get(option.id or ""))

    def show_iteration(self, iteration: int) -> bool:
        """Select the diff of ``iteration``; False when it has none (the baseline, a rejected proposal)."""
        key = f"it-{iteration:05d}"
        if key not in self._entries:
            return False
        options = self.options
        options.highlighted = options.get_option_index(key)
        self.follow = options.highlighted == options.option_count - 1
        return True

    async def _show(self, entry: PatchEntry | None) -> None:
        title = self.query_one("#patch-title", Static)
        code = self.query_one("#patch-code", Static)
        self._placeholder = entry is None
        if entry is None:
            self.remove_class("-mechanism")
            title.update(Text("no patch yet", style="dim"), layout=False)
            code.update(Text("Diffs appear here as iterations train changes; generated mechanisms too.", style="dim"))
            self._shown = None
            return
        shown = (entry.key, self.show_diff)
        if shown == self._shown:
            return
        self._shown = shown
        src = self._source
        read = src.read_artifact if src is not None else (lambda rel: None)
        if entry.kind == "iteration":
            self.remove_class("-mechanism")
            title.update(Text(f"#{entry.iteration}  {entry.artifact}", no_wrap=True, overflow="ellipsis"), layout=False)
            text = read(entry.artifact)
            if text is None:
                self._set_code(Text(f"({entry.artifact} is missing)", style="red"))
            else:
                self._set_code(diff_text(text), top=first_change(text))
        else:
            self.add_class("-mechanism")
            which = entry.diff if self.show_diff and entry.diff else entry.artifact
            new_module = self.show_diff and not entry.diff  # a built-in, or one activated without a diff
            what = "diff: a new module, added whole" if new_module else which
            title.update(Text(f"{entry.label}  {what}  (d: {'source' if self.show_diff else 'diff'})",
                              no_wrap=True, overflow="ellipsis"), layout=False)
            text = read(which)
            if text is None:
                self._set_code(Text(f"({which} is missing)", style="red"))
            elif new_module:
                name = Path(entry.artifact).name
                self._set_code(diff_text("".join(difflib.unified_diff([], text.splitlines(keepends=True),
                                                                      "/dev/null", f"b/{name}"))))
            elif which.endswith((".diff", ".patch")):
                self._set_code(diff_text(text), top=first_change(text))
            else:
                self._set_code(highlight(text, "python"), wrap=True)
            report = read(entry.report) if entry.report else None
            md = self.query_one("#patch-report", MarkdownText)
            md.set_markdown(report if report is not None else "*No validation report (a built-in mechanism).*")

    def _set_code(self, renderable: Text | Syntax, *, wrap: bool = False, top: int = 0) -> None:
        """Show ``renderable`` with line ``top`` (a diff's first change) near the top of the view."""
        self.set_class(wrap, "-wrap")
        update_static(self.query_one("#patch-code", Static), renderable)  # a patch as long: no layout
        scroll = self.query_one("#patch-code-scroll", ScrollableContainer)
        y = max(0, top - self.CONTEXT_ABOVE)
        scroll.scroll_to(x=0, y=y, animate=False, immediate=True)
        self.call_after_refresh(scroll.scroll_to, x=0, y=y, animate=False)  # once the new content has its height

    async def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        options = self.options
        self.follow = options.highlighted == options.option_count - 1
        await self._show_highlighted()

    async def action_toggle_diff(self) -> None:
        entry = self._entries.get(self._shown[0]) if self._shown else None
        if entry is None or entry.kind != "mechanism":
            self.app.notify("d flips a mechanism between its source and its diff; an iteration shows its diff")
            return
        self.show_diff = not self.show_diff
        await self._show_highlighted()

    def action_next_patch(self) -> None:
        self.options.action_cursor_down()

    def action_previous_patch(self) -> None:
        self.options.action_cursor_up()

"""The Research pane (Level 2): the four-round dialogue streaming live as Markdown.

The dialogue is drawn as Markdown parts (title, each round cut at paragraphs, validation and
outcome) in one line-API view; while a round streams only its last part is re-rendered, and no
growth re-lays out the screen. Switching to another research session or a backward seek starts
the parts afresh. A thinking model's reasoning
deltas sit in a collapsed section above the dialogue (``t`` opens and closes it).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.markdown import Markdown
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static

from core.analysis.prescreen_text import research_prescreen_line

from ..model import RESEARCH
from ..render import short_count
from .markdown import CODE_THEME
from .pane import Pane
from .parts import PartsView

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

ROUND_MARKS = {"done": "✓", "streaming": "…", "failed": "✗"}
RENDER_EVERY_S = 0.25  # a streaming round is re-rendered 4× a second: tokens need no 10 Hz Markdown parse
RENDER_BUDGET_S = 0.012  # Markdown rendered per repaint; a new session's parts are drawn over a few


class ResearchPane(Pane):
    PANE_TITLE = "Mechanism research · Level 2"
    BINDINGS = [
        Binding("left_square_bracket", "previous_research", "Prev research", id="research.previous"),
        Binding("right_square_bracket", "next_research", "Next research", id="research.next"),
        Binding("t", "toggle_reasoning", "Reasoning", id="research.reasoning", show=False),  # the section says (t)
    ]
    DEFAULT_CSS = """
    ResearchPane #research-title { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap;
                                   text-overflow: ellipsis; }
    ResearchPane #research-rounds { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    ResearchPane #research-prescreen { height: auto; padding: 0 1; display: none; }
    ResearchPane #research-prescreen.-present { display: block; }
    ResearchPane #research-scroll { height: 1fr; }
    ResearchPane #research-reasoning { height: auto; max-height: 50%; display: none; padding: 0; border: none; }
    ResearchPane #research-reasoning.-present { display: block; }
    ResearchPane #reasoning-scroll { height: auto; max-height: 12; }
    ResearchPane #reasoning-text { padding: 0 1; color: $text-muted; }
    """

    def __init__(self, number: int, *, throttle: bool = False, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self.throttle = throttle  # off for snapshots: what is shown must not depend on timing
        self._last_render = 0.0
        self.selected: str | None = None  # None: follow the newest research
        self._shown_id: str | None = None
        self._model: ViewModel | None = None
        self._reasoning_shown = ""

    def compose(self):
        yield Static(id="research-title")
        yield Static(id="research-rounds")
        yield Static(id="research-prescreen", markup=False)
        with Collapsible(title="Reasoning", collapsed=True, id="research-reasoning"):
            with VerticalScroll(id="reasoning-scroll"):
                yield Static(id="reasoning-text", markup=False)
        yield PartsView(_markdown, gap=1, inset=1, follow=True, id="research-scroll")

    def reset(self) -> None:
        self._shown_id = None
        self.selected = None

    def current_id(self, model: "ViewModel") -> str | None:
        if self.selected in model.research:
            return self.selected
        return model.research_order[-1] if model.research_order else None

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        self._model = model
        if RESEARCH not in parts:
            return
        rid = self.current_id(model)
        now = time.monotonic()
        scroll = self.query_one("#research-scroll", PartsView)
        if self.throttle and rid == self._shown_id and not scroll.pending and now - self._last_render < RENDER_EVERY_S:
            model.dirty.add(RESEARCH)  # streaming: the next repaint after the interval draws it
            return
        self._last_render = now
        self._title(model, rid)
        self._prescreen(model, rid)
        self._reasoning(model.research_reasoning(rid) if rid is not None else "")
        texts = model.research_parts(rid) if rid is not None else [self._empty_text(model)]
        if rid != self._shown_id:  # another session: from its start, or following the newest
            scroll.scroll_home(animate=False, immediate=True)
            scroll.following = self.selected is None
        scroll.set_parts(texts, RENDER_BUDGET_S if self.throttle else None)
        if scroll.pending:
            model.dirty.add(RESEARCH)  # the rest of the parts at the next repaint
        self._shown_id = rid

    def _prescreen(self, model: "ViewModel", rid: str | None) -> None:
        """The pre-screen's line (effect, CI, side effects, the gate's verdict): shown once one exists."""
        line = research_prescreen_line(model.state, rid) if rid is not None else None
        target = self.query_one("#research-prescreen", Static)
        target.set_class(line is not None, "-present")
        if line is None:
            return
        done = model.state.prescreens.get(rid)
        refused = done is not None and done.mode == "gate" and done.verdict in ("harmful", "failed")
        style = "blue" if done is None else "bold red" if refused else "green" if done.verdict == "passed" else "yellow"
        target.update(Text(line, style=style))

    def _reasoning(self, text: str) -> None:
        section = self.query_one("#research-reasoning", Collapsible)
        section.set_class(bool(text), "-present")
        if text == self._reasoning_shown:  # unchanged: no re-render while the dialogue's text streams
            return
        self._reasoning_shown = text
        section.title = f"Reasoning · {short_count(len(text))} chars (t)"
        self.query_one("#reasoning-text", Static).update(text)

    def action_toggle_reasoning(self) -> None:
        section = self.query_one("#research-reasoning", Collapsible)
        if not section.has_class("-present"):
            self.app.notify("no reasoning in this research session (the model streamed none)")
            return
        section.collapsed = not section.collapsed

    def _empty_text(self, model: "ViewModel") -> str:
        if model.state.session and "research" not in model.state.levels:
            return "*Level 2 is not active in this group.*"
        return "*No mechanism research yet.*"

    def _title(self, model: "ViewModel", rid: str | None) -> None:
        title = Text(no_wrap=True, overflow="ellipsis")
        rounds = Text(no_wrap=True, overflow="ellipsis")
        if rid is None:
            title.append("no research session", style="dim")
        else:
            view = model.research[rid]
            n = model.research_order.index(rid) + 1
            title.append(f"◂ {n}/{len(model.research_order)} ▸ ", style="bold")
            # the state first: a narrow column cuts the end of the line, never what became of the mechanism
            if view.finished is not None:
                style = "green" if view.finished.outcome == "activated" else "yellow"
                title.append(view.finished.outcome, style=f"bold {style}")
            elif view.pending is not None:
                title.append("awaiting approval (v)", style="bold yellow")
            elif view.approved is not None:
                title.append(f"approved (activates at #{view.approved.activates_at})", style="bold green")
            else:
                title.append("in progress", style="bold blue")
            title.append(f"  {rid}  cycle {view.cycle} after #{view.after_iteration}")
            if self.selected is None:
                title.append("  (following)", style="dim")
            total = 0
            for name, tokens, state in model.round_counters(rid):
                total += tokens
                rounds.append(f"{ROUND_MARKS[state]} {name} ", style="green" if state == "done" else
                              ("red" if state == "failed" else "yellow"))
                rounds.append(f"{'~' if state == 'streaming' else ''}{short_count(tokens)} tok  ", style="dim")
            if total:
                rounds.append(f"Σ {short_count(total)} tok", style="bold")
        self.query_one("#research-title", Static).update(title, layout=False)  # one line each: no re-layout
        self.query_one("#research-rounds", Static).update(rounds, layout=False)

    def _select(self, step: int) -> None:
        model = self._model
        if model is None or not model.research_order:
            return
        current = self.current_id(model)
        i = model.research_order.index(current) if current in model.research_order else len(model.research_order) - 1
        j = max(0, min(len(model.research_order) - 1, i + step))
        self.selected = None if j == len(model.research_order) - 1 else model.research_order[j]
        model.dirty.add(RESEARCH)

    def action_previous_research(self) -> None:
        self._select(-1)

    def action_next_research(self) -> None:
        self._select(+1)


def _markdown(text: str) -> Markdown:
    return Markdown(text, code_theme=CODE_THEME, hyperlinks=False)

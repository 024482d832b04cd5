"""The Strategy pane (Level 1.5): current guidance, every parameter's state, each cycle's decisions."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import DataTable, Static

from core.levels.trace import fmt_value, param_stats

from ..model import PARAMS, STRATEGY
from .growing import GrowingTable, update_static
from .pane import Pane
from .parts import PartsView
from .tables import KeyedRows, shown_as

if TYPE_CHECKING:
    from ..model import StrategyCycle, ViewModel
    from ..sources import Source

# Narrow enough that tried/kept/net gain fit a 140-column terminal's right column with no scroll;
# no cell padding, so each width holds its own one-column gap.
PARAM_COLUMNS = (("name", "parameter", 15), ("state", "state", 7), ("value", "best", 9),
                 ("tried", "tried", 6), ("kept", "kept", 5), ("gain", "net gain", 8))
NAME_WIDTH = PARAM_COLUMNS[0][2]
STATE_STYLES = {"active": "green", "frozen": "bold cyan", "locked": "dim"}
STATE_ORDER = {"active": 0, "frozen": 0, "locked": 1}  # what the search can move first; the fixed ones last
GUIDANCE_SOURCES = {"user": "you", "config": "the configuration"}


def next_strategy_cycle(model: "ViewModel") -> int | None:
    """The iteration after which Level 1.5 next runs (and may rewrite the guidance); None: it will not."""
    s = model.state
    if "strategy" not in s.levels:
        return None
    search = s.config.get("search", {}) if isinstance(s.config, dict) else {}
    period = search.get("outer_period", 5) if isinstance(search, dict) else 5
    if not isinstance(period, int) or period < 1:
        return None
    last = max((r.iteration for r in s.records), default=0)
    upcoming = (last // period + 1) * period
    budget = s.iterations_budget
    return None if budget is not None and upcoming > budget else upcoming


def guidance_text(model: "ViewModel") -> Text:
    """The guidance in force, who wrote it, and whether (and when) Level 1.5 will rewrite it."""
    s = model.state
    out = Text("guidance: ", style="bold")
    out.append(s.guidance or "(none)", style="" if s.guidance else "dim")
    source = (f"Level 1.5 cycle {s.guidance_cycle}" if s.guidance_source == "strategy"
              else GUIDANCE_SOURCES.get(s.guidance_source, s.guidance_source))
    out.append(f"\n  from {source}", style="dim")
    if s.guidance_pinned:
        out.append(" · 📌 pinned: Level 1.5 keeps it", style="bold magenta")
    elif "strategy" not in s.levels:
        out.append(" · Level 1.5 is off in this group: nothing rewrites it", style="dim")
    elif model.cycles and model.cycles[-1].decision is None:
        out.append(" · Level 1.5 is rewriting it now (g, pin to keep yours)", style="yellow")
    elif (upcoming := next_strategy_cycle(model)) is not None and s.finished is None:
        out.append(f" · Level 1.5 may rewrite it after #{upcoming} (g, pin to keep it)", style="dim")
    elif s.finished is None:
        out.append(" · no Level 1.5 cycle is left to rewrite it", style="dim")
    if s.guidance_unread:
        out.append(f"\n  ⚠ {s.guidance_unread}", style="yellow")
    return out


def direction_state(directions: set[str]) -> str:
    """The state cell of a parameter with frozen directions: ``↑frozen`` (increase), ``↓frozen``, ``→frozen`` (a choice)."""
    marks = "".join(sorted({"up": "↑", "down": "↓"}.get(d, "→") for d in directions))
    return f"{marks}frozen"


def param_rows(model: "ViewModel") -> dict[str, dict[str, object]]:
    s = model.state
    stats = param_stats(s.records)
    out: dict[str, dict[str, object]] = {}
    # Locked last; otherwise the script's order, so a freeze never makes rows jump.
    for name, spec in sorted(s.schema.items(), key=lambda item: STATE_ORDER["locked" if item[1].get("locked") else "active"]):
        state = "locked" if spec.get("locked") else ("frozen" if name in s.frozen else "active")
        style = STATE_STYLES[state]
        if state == "active" and s.frozen_directions.get(name):
            state, style = direction_state(s.frozen_directions[name]), "cyan"
        st = stats.get(name)
        value = s.best_values.get(name, spec.get("value"))
        out[name] = {
            "name": _fit(name, NAME_WIDTH),
            "state": Text(state, style=style),
            "value": _fit(fmt_value(value), PARAM_COLUMNS[2][2]),
            "tried": str(st.proposed) if st else "",
            "kept": str(st.kept) if st else "",
            "gain": f"{st.net_improvement:+.4f}" if st and st.kept else "",
        }
    return out


def _fit(text: str, width: int) -> str:
    """``text`` in ``width`` cells less the gap, cut with an ellipsis: a cut tuple must not read as another value."""
    return text if len(text) < width else text[:width - 2] + "…"


def cycles_parts(model: "ViewModel") -> list[Text]:
    """Each cycle's decisions as a part of its own (a new cycle renders only itself), then the changes by hand."""
    if not model.cycles and not model.param_changes:
        out = Text("No strategy cycle yet.", style="dim")
        if "strategy" not in model.state.levels and model.state.session:
            out.append(" Level 1.5 is not active in this group.", style="dim")
        return [out]
    parts = [_cycle_text(c) for c in model.cycles]
    manual = [c for c in model.param_changes if c.source != "strategy"]
    if manual:
        out = Text("By hand\n", style="bold")
        for ch in manual:
            verb = "❄ froze" if ch.action == "freeze" else "☀ unfroze"
            out.append(f"  {verb} {ch.name} ({ch.source}) — {ch.reason}\n")
        parts.append(out)
    for part in parts:
        part.rstrip()
    return parts


def _cycle_text(c: "StrategyCycle") -> Text:
    out = Text()
    d = c.decision
    out.append(f"Cycle {c.cycle}", style="bold")
    out.append(f" after #{c.after_iteration}")
    if d is None:
        out.append("  running…\n", style="yellow")
        return out
    out.append(f"  ({'offline rule' if d.source == 'offline' else 'LLM'})\n", style="dim")
    if d.error:
        out.append(f"  error: {d.error}\n", style="red")
    if d.diagnosis:
        out.append(f"  {d.diagnosis}\n", style="italic")
    reasons = {name: reason for _, name, reason in c.actions}
    for name in d.freeze:
        out.append("  ❄ froze ", style="cyan")
        out.append(name, style="bold")
        out.append(f" — {reasons.get(name, '')}\n", style="dim")
    for name in d.unfreeze:
        out.append("  ☀ unfroze ", style="green")
        out.append(name, style="bold")
        out.append(f" — {reasons.get(name, '')}\n", style="dim")
    if not d.freeze and not d.unfreeze:
        out.append("  no freeze or unfreeze\n", style="dim")
    for name, why in d.refused.items():
        out.append(f"  refused {name}: {why}\n", style="yellow")
    if d.candidates:
        out.append(f"  rule candidates: {', '.join(d.candidates)}\n", style="dim")
    if c.guidance_not_applied is not None:
        out.append(f"  guidance not applied ({c.guidance_not_applied.reason}): ", style="magenta")
        out.append(f"{c.guidance_not_applied.guidance}\n", style="dim")
    return out


class StrategyPane(Pane):
    PANE_TITLE = "Strategy · Level 1.5"
    DEFAULT_CSS = """
    StrategyPane #guidance { height: auto; max-height: 3; padding: 0 1; color: $text; background: $boost; }
    StrategyPane.-maximized #guidance { max-height: 12; }
    /* a header, six rows and the horizontal scrollbar a narrow column needs */
    StrategyPane #params-table { height: 3fr; min-height: 8; overflow-y: scroll; }
    StrategyPane #cycles-scroll { height: 1fr; min-height: 2; padding: 0 1; overflow-y: auto; }
    """

    def compose(self):
        yield Static(id="guidance")
        table: DataTable = GrowingTable(id="params-table", cursor_type="row", zebra_stripes=True,
                                        cell_padding=0)  # its height is the layout's: rows need no re-layout
        for key, label, width in PARAM_COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield PartsView(follow=True, id="cycles-scroll")  # the newest cycle in view; grows with no re-layout

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self._rows = KeyedRows([c[0] for c in PARAM_COLUMNS])

    def reset(self) -> None:
        self.query_one("#params-table", DataTable).clear()
        self._rows.clear()

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        if STRATEGY in parts:
            self._update(self.query_one("#guidance", Static), guidance_text(model))
            self.query_one("#cycles-scroll", PartsView).set_parts(cycles_parts(model))
        if params or PARAMS in parts:
            self._update(self.query_one("#guidance", Static), guidance_text(model))  # "after #N" moves on
            table = self.query_one("#params-table", DataTable)
            for name, cells in param_rows(model).items():
                self._rows.set(table, name, cells)

    @staticmethod
    def _update(widget: Static, text: Text) -> bool:
        looks = shown_as(text)
        if getattr(widget, "_shown_text", None) == looks:  # an unchanged text costs no re-layout
            return False
        widget._shown_text = looks  # type: ignore[attr-defined]
        update_static(widget, text)
        return True

    def selected_param(self) -> str | None:
        table = self.query_one("#params-table", DataTable)
        if not table.row_count:
            return None
        try:
            key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        except Exception:  # noqa: BLE001 - no cursor row
            return None
        return key.value

"""The Strategy pane (Level 1.5): current guidance, every parameter's state, each cycle's decisions."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from core.levels.trace import fmt_value, param_stats

from ..model import PARAMS, STRATEGY
from .follow import EndFollower
from .pane import Pane
from .tables import KeyedRows

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

PARAM_COLUMNS = (("name", "parameter", 18), ("state", "state", 8), ("value", "best value", 11),
                 ("tried", "tried", 5), ("kept", "kept", 4), ("gain", "net gain", 9))
STATE_STYLES = {"active": "green", "frozen": "bold cyan", "locked": "dim"}


def param_rows(model: "ViewModel") -> dict[str, dict[str, object]]:
    s = model.state
    stats = param_stats(s.records)
    out: dict[str, dict[str, object]] = {}
    for name, spec in s.schema.items():
        state = "locked" if spec.get("locked") else ("frozen" if name in s.frozen else "active")
        st = stats.get(name)
        value = s.best_values.get(name, spec.get("value"))
        out[name] = {
            "name": name,
            "state": Text(state, style=STATE_STYLES[state]),
            "value": fmt_value(value),
            "tried": str(st.proposed) if st else "",
            "kept": str(st.kept) if st else "",
            "gain": f"{st.net_improvement:+.4f}" if st and st.kept else "",
        }
    return out


def cycles_text(model: "ViewModel") -> Text:
    out = Text()
    if not model.cycles and not model.param_changes:
        out.append("No strategy cycle yet.", style="dim")
        if "strategy" not in model.state.levels and model.state.session:
            out.append(" Level 1.5 is not active in this group.", style="dim")
        return out
    manual = [c for c in model.param_changes if c.source != "strategy"]
    for c in model.cycles:
        d = c.decision
        out.append(f"Cycle {c.cycle}", style="bold")
        out.append(f" after #{c.after_iteration}")
        if d is None:
            out.append("  running…\n", style="yellow")
            continue
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
    if manual:
        out.append("By hand\n", style="bold")
        for ch in manual:
            verb = "❄ froze" if ch.action == "freeze" else "☀ unfroze"
            out.append(f"  {verb} {ch.name} ({ch.source}) — {ch.reason}\n")
    out.rstrip()
    return out


class StrategyPane(Pane):
    PANE_TITLE = "Strategy · Level 1.5"
    DEFAULT_CSS = """
    StrategyPane #guidance { height: auto; max-height: 5; padding: 0 1; color: $text; background: $boost; }
    StrategyPane #params-table { height: 1fr; min-height: 4; overflow-y: scroll; }
    StrategyPane #cycles-scroll { height: 1fr; padding: 0 1; }
    """

    def compose(self):
        yield Static(id="guidance")
        table: DataTable = DataTable(id="params-table", cursor_type="row", zebra_stripes=True)
        for key, label, width in PARAM_COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        with VerticalScroll(id="cycles-scroll"):
            yield Static(id="cycles")

    def on_mount(self) -> None:
        self._follower = EndFollower(self.query_one("#cycles-scroll", VerticalScroll))  # the newest cycle in view

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self._rows = KeyedRows([c[0] for c in PARAM_COLUMNS])

    def reset(self) -> None:
        self.query_one("#params-table", DataTable).clear()
        self._rows.clear()

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        if STRATEGY in parts:
            g = Text("guidance: ", style="bold")
            g.append(model.state.guidance or "(none)", style="" if model.state.guidance else "dim")
            self._update(self.query_one("#guidance", Static), g)
            if self._update(self.query_one("#cycles", Static), cycles_text(model)):
                self._follower.content_changed()
        if params or PARAMS in parts:
            table = self.query_one("#params-table", DataTable)
            for name, cells in param_rows(model).items():
                self._rows.set(table, name, cells)

    @staticmethod
    def _update(widget: Static, text: Text) -> bool:
        if getattr(widget, "_shown_text", None) == text:  # an unchanged text costs no re-layout
            return False
        widget._shown_text = text  # type: ignore[attr-defined]
        widget.update(text)
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

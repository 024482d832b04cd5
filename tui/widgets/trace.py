"""The Trace pane: one table row per iteration, the running-best plot, the live training bar."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable

from core.record.state import IterationTrace

from ..model import PLOT, PROGRESS
from ..render import best_plot, changes_text, clock, decision_text, delta_text, progress_text
from .pane import Pane
from .tables import KeyedRows

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

# (key, label, width)
COLUMNS = (
    ("it", "#", 4),
    ("outcome", "outcome", 10),
    ("bpb", "val_bpb", 9),
    ("delta", "Δ best", 8),
    ("changes", "changes", 26),
    ("dur", "time", 6),
    ("mech", "mechanisms", 16),
    ("hyp", "hypothesis", 60),
)


def row_cells(row: IterationTrace) -> dict[str, object]:
    changes = "(baseline)" if row.iteration == 0 else (changes_text(row.changes) or ("…" if not row.final else "—"))
    mech = ", ".join(f"{n}:{e}" if e else n for n, e in row.mechanisms.items())
    outcome = decision_text(row.phase)
    if row.attempts > 1 and not row.final:
        outcome.append(f" ({row.attempts})", style="dim")
    return {
        "it": Text(str(row.iteration), style="bold" if row.phase == "keep" else ""),
        "changes": changes,
        "bpb": f"{row.val_bpb:.6f}" if row.val_bpb is not None else "",
        "delta": delta_text(row.delta, row.phase),
        "outcome": outcome,
        "dur": clock(row.duration_s) if row.duration_s else "",
        "mech": mech,
        "hyp": row.hypothesis or row.reason,
    }


class BestPlot(Widget):
    """val_bpb per iteration under its running minimum, drawn to the widget's size."""

    DEFAULT_CSS = """
    BestPlot { height: 6; width: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.points: list[tuple[int, float, str]] = []
        self._drawn: tuple[object, Text] | None = None

    def render(self) -> Text:
        key = (len(self.points), self.points[-1] if self.points else None, self.size)
        if self._drawn is None or self._drawn[0] != key:  # repaints of an unchanged plot are free
            self._drawn = (key, best_plot(self.points, self.size.width, self.size.height))
        return self._drawn[1]


class RunProgress(Widget):
    """The current training run: step, percent, loss, tokens/s, time left, slot."""

    DEFAULT_CSS = """
    RunProgress { height: 1; width: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.values: tuple = (None, None, None, None, None, None, "")

    def render(self) -> Text:
        return progress_text(*self.values, width=self.size.width)


class TracePane(Pane):
    PANE_TITLE = "Trace"
    DEFAULT_CSS = """
    TracePane #trace-table { height: 1fr; overflow-y: scroll; }
    TracePane BestPlot { border-top: hkey $panel-lighten-1; height: 7; }
    """

    class IterationChosen(Message):
        def __init__(self, iteration: int) -> None:
            super().__init__()
            self.iteration = iteration

    def compose(self):
        table: DataTable = DataTable(id="trace-table", cursor_type="row", zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield BestPlot(id="best-plot")
        yield RunProgress(id="run-progress")

    @property
    def table(self) -> DataTable:
        return self.query_one("#trace-table", DataTable)

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self._rows = KeyedRows([c[0] for c in COLUMNS])

    def reset(self) -> None:
        self.table.clear()
        self._rows.clear()
        self.query_one(BestPlot).points = []

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        table = self.table
        if rows:
            follow = table.row_count == 0 or table.cursor_row >= table.row_count - 1
            added = False
            for it in sorted(rows):
                row = model.rows.get(it)
                if row is not None:
                    added = self._rows.set(table, str(it), row_cells(row)) or added
            if added and follow:
                table.move_cursor(row=table.row_count - 1, animate=False)
        if PLOT in parts:
            plot = self.query_one(BestPlot)
            plot.points = model.best_points()
            plot.refresh()
        if PROGRESS in parts:
            bar = self.query_one(RunProgress)
            p = model.state.progress
            it = model.training_iteration
            if it is not None and p is not None and p.iteration == it:
                bar.values = (it, p.percent, p.step, p.loss, p.tok_per_s, p.remaining_s,
                              "  ".join(filter(None, (p.phase, model.slot))))  # "starting  cpu"
            elif it is not None:
                bar.values = (it, None, None, None, None, None, model.slot)
            else:
                bar.values = (None, None, None, None, None, None, "")
            bar.refresh()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.IterationChosen(int(event.row_key.value)))

"""The Trace pane: one table row per iteration, the running-best plot, the live training bar."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable

from core.record.state import IterationTrace

from ..model import PLOT, PROGRESS, SLOTS, outcome_label
from ..render import best_plot, changes_text, clock, decision_text, delta_text, progress_text
from .growing import GrowingTable
from .pane import Pane
from .slots import SlotsView
from .tables import KeyedRows

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

# (key, label, width)
COLUMNS = (
    ("it", "#", 4),
    ("outcome", "outcome", 12),  # "training (2)", "out of mem"
    ("bpb", "val_bpb", 9),
    ("delta", "Δ best", 8),
    ("changes", "changes", 26),
    ("dur", "time", 6),
    ("mech", "mechanisms", 16),
    ("hyp", "hypothesis", 60),
)
CHANGES_WIDTH, CHANGES_MAX = 26, 90  # the changes column: its width on a normal terminal, and the most it grows to
# with parallel trials: which slot ran it, next to the number
MULTI_COLUMNS = COLUMNS[:1] + (("slot", "slot", 6),) + COLUMNS[1:]


def row_cells(row: IterationTrace, slot: str | None = None) -> dict[str, object]:
    changes = "(baseline)" if row.iteration == 0 else (changes_text(row.changes) or ("…" if not row.final else "—"))
    mech = ", ".join(f"{n}:{e}" if e else n for n, e in row.mechanisms.items())
    outcome = decision_text(outcome_label(row))
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
        **({"slot": slot} if slot is not None else {}),
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
        self.started_ts: float | None = None  # the run's start: its clock moves between progress events

    def render(self) -> Text:
        values = list(self.values)
        if self.started_ts and len(values) > 8:
            header = getattr(self.app, "header", None)  # its clock: wall time live, event time in replays
            now = header.now() if header is not None else None
            if now is not None:
                values[8] = max(values[8] or 0.0, now - self.started_ts)
        return progress_text(*values, width=self.size.width)


class TracePane(Pane):
    PANE_TITLE = "Trace"
    DEFAULT_CSS = """
    TracePane #trace-table { height: 1fr; overflow-y: scroll; }
    TracePane BestPlot { border-top: hkey $panel-lighten-1; height: 7; }
    TracePane.-multi BestPlot { display: none; }  /* the slots take its rows; z shows it again */
    TracePane.-multi.-maximized BestPlot { display: block; }
    """

    class IterationChosen(Message):
        def __init__(self, iteration: int) -> None:
            super().__init__()
            self.iteration = iteration

    def compose(self):
        table: DataTable = GrowingTable(id="trace-table", cursor_type="row", zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield SlotsView(id="slots")
        yield BestPlot(id="best-plot")
        yield RunProgress(id="run-progress")

    @property
    def table(self) -> DataTable:
        return self.query_one("#trace-table", DataTable)

    def __init__(self, number: int, **kwargs) -> None:
        super().__init__(number, **kwargs)
        self._rows = KeyedRows([c[0] for c in COLUMNS])
        self._multi = False  # the table has the slot column and is kept in finish order
        self._sorted = 0  # verdicts the finish order had when the table was last sorted

    def reset(self) -> None:
        self.table.clear()
        self._rows.clear()
        self._sorted = 0
        self.query_one(BestPlot).points = []

    def _go_multi(self, model: "ViewModel") -> set[int]:
        """More than one slot: add the slot column (a rebuild, once per run) and show the slots view."""
        self._multi = True
        table = self.table
        table.clear(columns=True)
        for key, label, width in MULTI_COLUMNS:
            table.add_column(label, key=key, width=width)
        self._rows = KeyedRows([c[0] for c in MULTI_COLUMNS])
        self._sorted = 0
        self.query_one(SlotsView).display = True
        self.query_one(RunProgress).display = False
        self.add_class("-multi")
        return set(model.rows)

    async def sync(self, model: "ViewModel", parts: set[str], rows: set[int], params: bool, source: "Source") -> None:
        table = self.table
        if model.multi_slot and not self._multi:
            rows = rows | self._go_multi(model)
        order = model.trials.finish_order
        if rows or (self._multi and len(order) != self._sorted):
            follow = table.row_count == 0 or table.cursor_row >= table.row_count - 1
            added = False
            for it in sorted(rows):
                row = model.row(it)
                if row is not None:
                    slot = None
                    if self._multi:
                        trial = model.trial(it)
                        slot = trial.slot if trial is not None else ""
                    added = self._rows.set(table, str(it), row_cells(row, slot)) or added
            if self._multi and len(order) != self._sorted:  # parallel trials: the trace in finish order
                self._sorted = len(order)
                rank = model.trials.rank
                table.sort("it", key=lambda cell: rank(int(cell.plain)))
            if (added or self._multi) and follow:
                table.settle()  # sized now: the cursor's scroll lands in this frame, not the next
                table.move_cursor(row=table.row_count - 1, animate=False)
            self._fit_changes()
        if SLOTS in parts and self._multi:
            self.query_one(SlotsView).show(model)
        if PLOT in parts:
            plot = self.query_one(BestPlot)
            plot.points = model.best_points()
            plot.refresh()
        if PROGRESS in parts:
            bar = self.query_one(RunProgress)
            p = model.state.progress
            it = model.training_iteration
            started = model.state.training
            budget = started.budget_s if started is not None else None
            bar.started_ts = started.ts if started is not None and started.ts else None
            if it is not None and p is not None and p.iteration == it:
                elapsed = p.ts - started.ts if started is not None and p.ts and started.ts else None
                bar.values = (it, p.percent, p.step, p.loss, p.tok_per_s, p.remaining_s, model.slot, p.phase,
                              elapsed, budget, model.grace_s if budget else None)
            elif it is not None:
                bar.values = (it, None, None, None, None, None, model.slot, "starting", None, budget, None)
            else:
                bar.values = (None, None, None, None, None, None, "")
            bar.refresh()

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_changes)

    def _fit_changes(self) -> None:
        """Wide terminals: the changes column grows to its longest text, as far as the number, verdict,
        score and time columns still fit (26 cells, as before, where they do not)."""
        table = self.table
        column = table.columns.get("changes")  # type: ignore[call-overload]
        if column is None:
            return
        columns = MULTI_COLUMNS if self._multi else COLUMNS
        fixed = sum(w + 2 for key, _, w in columns if key not in ("changes", "mech", "hyp"))
        room = table.size.width - fixed - 4  # the cell padding and the scrollbar
        longest = max((len(str(cells.get("changes", ""))) for cells in self._rows.shown.values()), default=0)
        width = max(CHANGES_WIDTH, min(room, longest + 1, CHANGES_MAX))
        if width != column.width:
            column.width = width
            table._require_update_dimensions = True
            table._clear_caches()
            table.refresh(layout=True)

    def highlighted_iteration(self) -> int | None:
        """The iteration of the row under the cursor (None: an empty table)."""
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        except Exception:  # noqa: BLE001 - a cursor on a row being replaced
            return None
        return int(key) if key is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.IterationChosen(int(event.row_key.value)))

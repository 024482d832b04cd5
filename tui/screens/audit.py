"""The keep-chain audit: every keep of the latest audit with its effect, interval and verdict (folded state)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from core.analysis.evidence_text import AUDIT_COLUMNS, audit_rows, latest_audit
from core.record.state import RunState


class AuditScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="audit.close")]
    DEFAULT_CSS = """
    AuditScreen { align: center middle; }
    AuditScreen > Vertical {
        width: 110; max-width: 98%; height: auto; max-height: 90%; padding: 0 1;
        border: thick $accent; background: $surface;
    }
    AuditScreen #audit-summary { height: auto; }
    AuditScreen DataTable { height: auto; max-height: 24; }
    """

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def summary(self) -> str:
        audit = latest_audit(self.state)
        if audit is None:
            skipped = self.state.audit_skips[-1].reason if self.state.audit_skips else "not run yet"
            return f"No keep-chain audit in this session ({skipped}). `bilevel audit SESSION` runs one."
        end = audit.finished
        head = f"Audit {audit.audit} ({audit.plan.trigger}), {audit.plan.repeats} fresh seeds per configuration"
        if end is None:
            return head + f": in progress, {len(audit.results)} of {len(audit.runs)} runs done."
        text = head + (f": best {end.best_mean:.6f} vs baseline {end.baseline_mean:.6f}"
                       if end.best_mean is not None and end.baseline_mean is not None else "")
        if end.dropped and end.proposed_mean is not None:
            text += (f"; proposed without {', '.join(f'#{n}' for n in end.dropped)}: "
                     f"mean {end.proposed_mean:.6f}")
        return text + ". Effect = best without the keep − best (positive: it helped)."

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.summary(), id="audit-summary", markup=False)
            yield DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*AUDIT_COLUMNS)
        audit = latest_audit(self.state)
        for row in audit_rows(audit) if audit is not None else []:
            table.add_row(*row, key=row[0])
        table.focus()

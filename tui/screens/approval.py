"""Approve or reject a validated mechanism: its code beside its validation report."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ..widgets.markdown import MarkdownText
from ..widgets.patches import diff_text, highlight


class ApprovalScreen(ModalScreen[str | None]):
    """Dismisses with "approve", "reject" or None (decide later)."""

    BINDINGS = [
        Binding("a", "decide('approve')", "Approve", id="approval.approve"),
        Binding("r", "decide('reject')", "Reject", id="approval.reject"),
        Binding("d", "toggle_diff", "Source/diff", id="approval.toggle_diff"),
        Binding("escape", "dismiss(None)", "Later", id="approval.later"),
    ]
    DEFAULT_CSS = """
    ApprovalScreen { align: center middle; }
    ApprovalScreen > Vertical {
        width: 95%; height: 90%; border: thick $warning; background: $surface; padding: 0 1;
    }
    ApprovalScreen #approval-title { height: auto; text-style: bold; }
    ApprovalScreen #approval-prescreen { height: auto; }
    ApprovalScreen #approval-body { height: 1fr; }
    ApprovalScreen #approval-code { width: 3fr; border-right: vkey $panel-lighten-1; }
    ApprovalScreen #approval-report { width: 2fr; }
    ApprovalScreen #approval-buttons { height: auto; align: right middle; }
    ApprovalScreen Button { margin-left: 1; }
    """

    def __init__(self, name: str, research_id: str, source: str | None, diff: str | None, report: str | None,
                 *, read_only: bool = False, prescreen: str | None = None) -> None:
        super().__init__()
        self.prescreen = prescreen  # core/analysis/prescreen_text.py's line, already made safe
        self.mech_name, self.research_id = name, research_id
        self.source_text, self.diff_text, self.report = source, diff, report
        self.read_only = read_only
        self.show_diff = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Mechanism {self.mech_name} (research {self.research_id}) waits for approval — "
                         "a approve · r reject · d source/diff · escape later", id="approval-title", markup=False)
            yield Static(self.prescreen or "pre-screen: none (level2.prescreen = off, or not run)",
                         id="approval-prescreen", markup=False)
            with Horizontal(id="approval-body"):
                with VerticalScroll(id="approval-code"):
                    yield Static(id="approval-code-text")
                with VerticalScroll(id="approval-report"):
                    yield MarkdownText(self.report or "*No validation report.*")
            with Horizontal(id="approval-buttons"):
                yield Button("Approve (a)", id="approve", variant="success", disabled=self.read_only)
                yield Button("Reject (r)", id="reject", variant="error", disabled=self.read_only)
                yield Button("Later (esc)", id="later")

    def on_mount(self) -> None:
        self._render_code()
        self.query_one("#approval-code").focus()

    def _render_code(self) -> None:
        target = self.query_one("#approval-code-text", Static)
        if self.show_diff and self.diff_text is not None:
            target.update(diff_text(self.diff_text))
        elif self.source_text is not None:
            target.update(highlight(self.source_text, "python"))
        else:
            target.update("(source missing)")

    def action_toggle_diff(self) -> None:
        self.show_diff = not self.show_diff
        self._render_code()

    def action_decide(self, answer: str) -> None:
        if not self.read_only:
            self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None if event.button.id == "later" else event.button.id)

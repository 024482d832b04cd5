"""Edit the guidance string the inner loop reads: a TextArea, or the user's $EDITOR."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static, TextArea


class GuidanceScreen(ModalScreen[str | None]):
    """Dismisses with the new guidance (ctrl+s), or None (escape)."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Apply", id="guidance.apply", priority=True),
        Binding("escape", "dismiss(None)", "Cancel", id="guidance.cancel"),
        Binding("ctrl+e", "external", "$EDITOR", id="guidance.editor", priority=True),
    ]
    DEFAULT_CSS = """
    GuidanceScreen { align: center middle; }
    GuidanceScreen > Vertical {
        width: 90; max-width: 95%; height: 20; max-height: 90%; padding: 0 1;
        border: thick $accent; background: $surface;
    }
    GuidanceScreen #guidance-help { height: auto; color: $text-muted; }
    GuidanceScreen TextArea { height: 1fr; }
    """

    def __init__(self, guidance: str, *, blink: bool = True) -> None:
        super().__init__()
        self.guidance = guidance
        self.blink = blink

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Guidance for the inner loop — ctrl+s apply · ctrl+e open in $EDITOR · escape cancel",
                         id="guidance-help", markup=False)
            yield TextArea(self.guidance, id="guidance-text", soft_wrap=True, show_line_numbers=False)

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.cursor_blink = self.blink
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text.strip())

    def action_external(self) -> None:
        text = self.app.edit_in_editor(self.query_one(TextArea).text)  # type: ignore[attr-defined]
        if text is not None:
            self.query_one(TextArea).text = text

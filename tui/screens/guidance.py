"""Edit the guidance string the inner loop reads (a TextArea, or the user's $EDITOR), and pin it."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Static, TextArea


class GuidanceScreen(ModalScreen[tuple[str, bool] | None]):
    """Dismisses with the new guidance and whether it is pinned (ctrl+s), or None (escape)."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Apply", id="guidance.apply", priority=True),
        Binding("escape", "dismiss(None)", "Cancel", id="guidance.cancel"),
        Binding("ctrl+e", "external", "$EDITOR", id="guidance.editor", priority=True),
        Binding("ctrl+t", "toggle_pin", "Pin", id="guidance.pin", priority=True),
    ]
    DEFAULT_CSS = """
    GuidanceScreen { align: center middle; }
    GuidanceScreen > Vertical {
        width: 90; max-width: 95%; height: 20; max-height: 90%; padding: 0 1;
        border: thick $accent; background: $surface;
    }
    GuidanceScreen #guidance-help { height: auto; color: $text-muted; }
    GuidanceScreen TextArea { height: 1fr; }
    GuidanceScreen Checkbox { height: auto; border: none; padding: 0; }
    """

    def __init__(self, guidance: str, *, pinned: bool = False, blink: bool = True) -> None:
        super().__init__()
        self.guidance = guidance
        self.pinned = pinned
        self.blink = blink

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Guidance for the inner loop — ctrl+s apply · ctrl+e open in $EDITOR · ctrl+t pin · "
                         "escape cancel", id="guidance-help", markup=False)
            yield TextArea(self.guidance, id="guidance-text", soft_wrap=True, show_line_numbers=False)
            yield Checkbox("Pin: Level 1.5's cycles keep this guidance instead of writing their own",
                           self.pinned, id="guidance-pin")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.cursor_blink = self.blink
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss((self.query_one(TextArea).text.strip(), self.query_one(Checkbox).value))

    def action_toggle_pin(self) -> None:
        self.query_one(Checkbox).toggle()

    def action_external(self) -> None:
        text = self.app.edit_in_editor(self.query_one(TextArea).text)  # type: ignore[attr-defined]
        if text is not None:
            self.query_one(TextArea).text = text

"""Replay: jump to an iteration."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class SeekScreen(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="seek.cancel")]
    DEFAULT_CSS = """
    SeekScreen { align: center middle; }
    SeekScreen > Vertical { width: 50; height: auto; border: thick $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, iterations: list[int], *, blink: bool = True) -> None:
        super().__init__()
        self.iterations = iterations
        self.blink = blink

    def compose(self) -> ComposeResult:
        span = f"{self.iterations[0]}–{self.iterations[-1]}" if self.iterations else "none finished yet"
        with Vertical():
            yield Static(f"Seek to the end of iteration ({span}); enter to go, escape to cancel", markup=False)
            yield Input(placeholder="iteration", type="integer", id="seek-input")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.cursor_blink = self.blink
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            self.dismiss(int(event.value))
        except ValueError:
            self.dismiss(None)

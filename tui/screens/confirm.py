"""A question with a few labelled answers; dismisses with the chosen answer's id (None: cancelled)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="confirm.cancel"),
                # Enter typed before the first button has taken focus (a slow link, a busy box) still
                # answers: the focused button if there is one, else the first answer.
                Binding("enter", "choose", "Choose", show=False, id="confirm.choose")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 70; max-width: 95%; height: auto; padding: 1 2;
        border: thick $accent; background: $surface;
    }
    ConfirmScreen #confirm-title { text-style: bold; margin-bottom: 1; }
    ConfirmScreen #confirm-buttons { height: auto; margin-top: 1; align: right middle; }
    ConfirmScreen Button { margin-left: 1; }
    /* many answers (one per running trial): a grid of four a row, so eight slots still fit 80 columns */
    ConfirmScreen #confirm-buttons.-many { layout: grid; grid-size: 4; grid-gutter: 0 1; }
    ConfirmScreen #confirm-buttons.-many Button { width: 1fr; min-width: 8; margin-left: 0; }
    """
    MANY = 4  # answers (Cancel included) from which the buttons wrap into a grid

    def __init__(self, title: str, body: str, answers: list[tuple[str, str, str]]) -> None:
        """``answers``: (id, label, variant) in order; the first one is focused."""
        super().__init__()
        self.title_text, self.body, self.answers = title, body, answers

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id="confirm-title", markup=False)
            yield Static(self.body, id="confirm-body", markup=False)
            with Horizontal(id="confirm-buttons", classes="-many" if len(self.answers) + 1 > self.MANY else ""):
                for answer_id, label, variant in self.answers:
                    yield Button(label, id=f"answer-{answer_id}", variant=variant)  # type: ignore[arg-type]
                yield Button("Cancel", id="answer-cancel")

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    def action_choose(self) -> None:
        focused = self.focused
        if isinstance(focused, Button):
            focused.press()
        elif self.answers:
            self.dismiss(self.answers[0][0])

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        answer = (event.button.id or "").removeprefix("answer-")
        self.dismiss(None if answer == "cancel" else answer)

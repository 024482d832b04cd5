"""Freeze or unfreeze a parameter by hand: a list with each parameter's state."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option


class FreezeScreen(ModalScreen[tuple[str, str] | None]):
    """Dismisses with (freeze|unfreeze, name), or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="freeze.cancel")]
    DEFAULT_CSS = """
    FreezeScreen { align: center middle; }
    FreezeScreen > Vertical {
        width: 60; max-width: 95%; height: auto; max-height: 90%; padding: 0 1;
        border: thick $accent; background: $surface;
    }
    FreezeScreen #freeze-help { color: $text-muted; height: auto; }
    FreezeScreen OptionList { height: auto; max-height: 24; }
    """

    def __init__(self, params: list[tuple[str, str, str]], initial: str | None = None) -> None:
        """``params``: (name, state, value) with state active | frozen | locked."""
        super().__init__()
        self.params = params
        self.initial = initial

    def compose(self) -> ComposeResult:
        options = []
        for name, state, value in self.params:
            label = Text()
            label.append(f"{name:<22}", style="bold" if state != "locked" else "dim")
            label.append(f"{state:<8}", style={"active": "green", "frozen": "cyan", "locked": "dim"}[state])
            label.append(f" {value}", style="dim")
            if state != "locked":
                label.append(f"   → {'unfreeze' if state == 'frozen' else 'freeze'}", style="italic")
            options.append(Option(label, id=name, disabled=state == "locked"))
        with Vertical():
            yield Static("Enter toggles the highlighted parameter · escape closes. Locked ones are the "
                         "configuration's and never change.", id="freeze-help", markup=False)
            yield OptionList(*options, id="freeze-list")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.focus()
        names = [p[0] for p in self.params]
        if self.initial in names and self.params[names.index(self.initial)][1] != "locked":
            options.highlighted = names.index(self.initial)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        name = event.option.id or ""
        state = next(p[1] for p in self.params if p[0] == name)
        self.dismiss(("unfreeze" if state == "frozen" else "freeze", name))

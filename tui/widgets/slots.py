"""The slots view: one line per slot — the trial it runs, its progress and phase, GPU memory and load.

Shown under the trace once more than one slot trains; with one slot the trace's single progress
line says the same, so today's one-slot screen is unchanged. Skipped GPUs are listed dimmed
with the reason; a slot between trials says "idle".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.markup import escape
from textual.widget import Widget

from ..render import changes_text, memory_text, slot_text

if TYPE_CHECKING:
    from ..model import ViewModel


def slot_lines(model: "ViewModel", width: int) -> list[Text]:
    board = model.trials
    names = [s.name + (f" {s.node}" if s.node else "") for s in board.slots.values()]
    name_w = min(24, max((len(n) for n in names), default=4))
    shown = {n: _changes(board.trials[n]) for n in board.in_flight if n in board.trials}
    changes_w = max((len(c) for c in shown.values()), default=0) + 1
    lines = []
    for label, slot in zip(names, board.slots.values()):
        trial = board.trials.get(slot.iteration) if slot.iteration is not None else None
        sample = slot.sample
        gpu = memory_text(sample.memory_used_mb, sample.memory_total_mb or slot.memory_total_mb) if sample else ""
        util = sample.utilisation if sample is not None else None
        if trial is None:
            lines.append(slot_text(label, None, "", None, None, None, gpu, util, slot.skipped, width, name_w))
            continue
        p = trial.progress
        lines.append(slot_text(label, trial.iteration, _changes(trial), p.percent if p else None,
                               p.phase if p else None, p.remaining_s if p else None, gpu, util, slot.skipped, width,
                               name_w, changes_w))
    return lines


def _changes(trial) -> str:
    if trial.iteration == 0:
        return "(baseline)"
    return changes_text(trial.proposals[-1].changes) if trial.proposals else ""


class SlotsView(Widget):
    """Every slot of a run with parallel trials, one line each."""

    DEFAULT_CSS = """
    SlotsView { height: auto; max-height: 12; width: 1fr; border-top: hkey $panel-lighten-1; display: none;
                overflow-y: auto; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model: ViewModel | None = None
        self._count = 0

    def show(self, model: "ViewModel") -> None:
        self.model = model
        board = model.trials
        where = f" · ray {board.address}" if board.executor == "ray" else ""
        # a border title is markup: the Ray address is not ours
        self.border_title = escape(f"slots {len(board.in_flight)}/{len(board.working_slots)} busy{where}")
        count = len(board.slots)
        self.refresh(layout=count != self._count)  # a new slot needs a line more
        self._count = count

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self.model.trials.slots) if self.model is not None else 1)

    def render(self) -> Text:
        if self.model is None or not self.model.trials.slots:
            return Text("no slots yet", style="dim")
        lines = slot_lines(self.model, max(20, self.content_size.width))
        return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)

"""The status bar: session, group, model, progress through the budget, best score, time, tokens."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widget import Widget

from ..render import clock, short_count

if TYPE_CHECKING:
    from ..model import ViewModel
    from ..sources import Source

LEVEL_NAMES = {"inner": "L1", "strategy": "L1.5", "research": "L2"}
STATUS_STYLES = {
    "running": "bold green", "stopping…": "bold magenta", "pausing…": "bold yellow", "paused": "bold yellow", "resuming…": "bold yellow",
    "completed": "bold cyan", "stopped": "bold magenta", "failed": "bold red", "waiting": "dim",
    "no session": "bold red",
}


class StatusHeader(Widget):
    """Two lines of facts about the run; repainted when an event changes one, or each second."""

    DEFAULT_CSS = """
    StatusHeader {
        dock: top;
        height: 2;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """

    def __init__(self, *, deterministic: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.deterministic = deterministic
        self.model: ViewModel | None = None
        self.source: Source | None = None
        self.notice = ""  # e.g. "stopping…", "config changed: press r"

    def show(self, model: "ViewModel", source: "Source") -> None:
        self.model, self.source = model, source
        self.refresh()

    def now(self) -> float | None:
        """The clock the header reads: event time in replays and deterministic mode, else wall time."""
        m = self.model
        if m is None:
            return None
        if self.deterministic or (self.source is not None and self.source.mode == "replay") or m.finished:
            return m.last_ts
        return time.time()

    def render(self) -> Text:
        m, src = self.model, self.source
        if m is None or src is None:
            return Text("bilevel — waiting for events…", style="dim")
        s = m.state
        width = max(20, self.size.width - 2)
        levels = "+".join(LEVEL_NAMES.get(level, level) for level in s.levels) or "?"
        who = "offline (no LLM)" if s.provider == "offline" else (s.model or s.provider or "?")
        mode = src.describe()
        status = m.status
        if status == "waiting" and src.mode == "replay" and src.caught_up.is_set():
            status = "no session"  # read to the end and nothing started: not something to wait for
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append("bilevel ", style="bold")
        line1.append(s.session or "(no session yet)", style="bold cyan")
        line1.append(f"  group {s.group or '?'} ({levels})  {who}", style="")
        if "research" in s.levels and s.provider != "offline":  # generated code runs: say behind which wall
            wall = (s.config.get("level2") or {}).get("isolation", "strict")
            line1.append(f"  L2 sandbox {wall}", style="" if wall == "strict" else "bold yellow")
        if (s.config.get("script") or {}).get("preset") == "surrogate":
            line1.append("  SURROGATE: nothing trained", style="bold reverse yellow")
        right = Text()
        if m.pending:
            right.append(f"⚑ {len(m.pending)} to approve (v)  ", style="bold yellow")
        if self.notice:
            right.append(f"{self.notice}  ", style="bold yellow")
        elif m.finished is not None and src.mode != "replay":
            right.append("run over: controls off  ", style="dim")
        right.append(f"{mode}  ", style="reverse" if src.mode != "live" else "bold")
        right.append(f"● {status}", style=STATUS_STYLES.get(status, ""))
        line1 = _justify(line1, right, width)

        now = self.now()
        elapsed = (now - m.first_ts) if (now is not None and m.first_ts is not None) else None
        total = m.iterations_total
        bits = Text(no_wrap=True, overflow="ellipsis")
        bits.append(f"iter {m.iterations_done}/{total if total is not None else '?'}", style="bold")
        if m.multi_slot:
            running = m.in_flight
            if running:
                bits.append(f" ({' '.join(f'#{n}' for n in running[:4])}{' …' if len(running) > 4 else ''} running)",
                            style="dim")
        elif s.running is not None:
            bits.append(f" (#{s.running} running)", style="dim")
        bits.append("  best ")
        if s.best_val_bpb is not None:
            bits.append(f"{s.best_val_bpb:.6f}", style="bold green")
            if s.baseline_val_bpb is not None and s.best_val_bpb != s.baseline_val_bpb:
                bits.append(f" (Δ {s.best_val_bpb - s.baseline_val_bpb:+.4f})", style="green")
        else:
            bits.append("—")
        bits.append(f"  elapsed {clock(elapsed)}")
        left = m.remaining_s(now)
        if left is not None:
            bits.append(f"  ~{clock(left)} left")
        tokens = " ".join(f"{LEVEL_NAMES.get(k, k)} {short_count(v)}" for k, v in m.tokens_by_level.items() if v)
        if tokens:
            bits.append(f"  tok {tokens}", style="")
        if m.multi_slot:
            bits.append(f"  slots {len(m.in_flight)}/{len(m.trials.working_slots)} busy")
        elif m.slot:
            bits.append(f"  slot {m.slot}")
        if m.active_mechanisms:
            bits.append(f"  mech {len(m.active_mechanisms)}", style="dim")
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append_text(line1)
        out.append("\n")
        out.append_text(bits)
        return out


def _justify(left: Text, right: Text, width: int) -> Text:
    """``left`` then ``right`` flush to the right edge; ``left`` is cut first."""
    room = width - right.cell_len - 1
    if room < 1:
        return right
    if left.cell_len > room:
        left.truncate(room, overflow="ellipsis")
    out = left.copy()
    out.append(" " * (width - left.cell_len - right.cell_len))
    out.append_text(right)
    return out

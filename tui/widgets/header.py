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
    "no session": "bold red", "endpoint down": "bold red",
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
        # (text, style, drop): on a narrow terminal the pieces with the highest drop go first, 0 stays
        first: list[tuple[str, str, int]] = [("bilevel ", "bold", 0), (s.session or "(no session yet)", "bold cyan", 0),
                                             (f"  group {s.group or '?'}", "", 0), (f" ({levels})", "", 2),
                                             (f"  {who}", "", 3)]
        if "research" in s.levels and s.provider != "offline":  # generated code runs: say behind which wall
            wall = (s.config.get("level2") or {}).get("isolation", "strict")
            first.append((f"  L2 sandbox {wall}", "" if wall == "strict" else "bold yellow", 4 if wall == "strict" else 0))
        if (s.config.get("script") or {}).get("preset") == "surrogate":
            first.append(("  SURROGATE: nothing trained", "bold reverse yellow", 0))
        right = Text()
        if m.pending:
            deadline = m.approval_deadline
            right.append(f"⚑ {len(m.pending)} to approve (v)" + (f" before #{deadline}" if deadline else "") + "  ",
                         style="bold yellow")
        if self.notice:
            right.append(f"{self.notice}  ", style="bold yellow")
        elif m.finished is not None and src.mode != "replay" and width >= 100:
            right.append("run over: controls off  ", style="dim")
        right.append(f"{mode}  ", style="reverse" if src.mode != "live" else "bold")
        right.append(f"● {status}", style=STATUS_STYLES.get(status, ""))
        line1 = _justify(_fit(first, width - right.cell_len - 1), right, width)

        now = self.now()
        elapsed = (now - m.first_ts) if (now is not None and m.first_ts is not None) else None
        total = m.iterations_total
        second: list[tuple[str, str, int]] = [(f"iter {m.iterations_done}/{total if total is not None else '?'}",
                                               "bold", 0)]
        trained, rejected = m.verdict_counts()
        if rejected or m.finished is not None:  # "40/40" must not hide that most were never trained
            second.append((f" ({trained} trained, {rejected} rejected)", "yellow" if rejected else "", 1))
        if m.multi_slot:
            running = m.in_flight
            if running:
                second.append((f" ({' '.join(f'#{n}' for n in running[:4])}{' …' if len(running) > 4 else ''} "
                               "running)", "dim", 3))
        elif s.running is not None:
            second.append((f" (#{s.running} running)", "dim", 3))
        second.append(("  best ", "", 0))
        if s.best_val_bpb is not None:
            second.append((f"{s.best_val_bpb:.6f}", "bold green", 0))
            if s.baseline_val_bpb is not None and s.best_val_bpb != s.baseline_val_bpb:
                second.append((f" (Δ {s.best_val_bpb - s.baseline_val_bpb:+.4f})", "green", 1))
        else:
            second.append(("—", "", 0))
        a = s.acceptance
        if a is not None and a.noise_std:  # the noise floor and whether the rule uses it
            second.append((f"  σ {a.noise_std:.2g} ({a.sigma_source or 'store'})"
                           + (f" keep ≥{a.k:g}σ" if a.k else " unused"), "dim", 5))
        second.append((f"  elapsed {clock(elapsed)}", "", 2))
        left = m.remaining_s(now)
        if left is not None:
            second.append((f"  ~{clock(left)} left", "", 2))
        tokens = " ".join(f"{LEVEL_NAMES.get(k, k)} {short_count(v)}" for k, v in m.tokens_by_level.items() if v)
        if tokens:
            second.append((f"  tok {tokens}", "", 5))
        if m.multi_slot:
            second.append((f"  slots {len(m.in_flight)}/{len(m.trials.working_slots)} busy", "", 4))
        elif m.slot:
            second.append((f"  slot {m.slot}", "", 4))
        if m.active_mechanisms:
            second.append((f"  mech {len(m.active_mechanisms)}", "dim", 6))
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append_text(line1)
        out.append("\n")
        out.append_text(_fit(second, width))
        return out


def _fit(pieces: list[tuple[str, str, int]], room: int) -> Text:
    """The pieces in order, leaving out the most droppable ones until they fit in ``room`` cells."""
    kept = list(pieces)
    while sum(len(t) for t, _, _ in kept) > room and any(d for _, _, d in kept):
        worst = max(d for _, _, d in kept)
        drop = max(i for i, (_, _, d) in enumerate(kept) if d == worst)
        del kept[drop]
    out = Text(no_wrap=True, overflow="ellipsis")
    for text, style, _ in kept:
        out.append(text, style=style)
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

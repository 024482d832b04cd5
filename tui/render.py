"""Pure drawing helpers: the running-best plot, the progress bar, value and time formats.

Plain functions from data to Rich text, so they are tested without a screen and the
widgets stay thin. Braille and block characters only: no extra dependency, and they
work in any UTF-8 terminal (tmux, SSH) without truecolor.
"""
from __future__ import annotations

import math
from typing import Sequence

from rich.text import Text

from core.levels.trace import fmt_value
from core.record.change import Change

# Braille dot bits by (column 0..1, row 0..3) inside one character cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BLOCKS = " ▏▎▍▌▋▊▉█"

DECISION_STYLES = {
    "keep": "bold green", "baseline": "cyan", "discard": "dim", "crash": "bold red", "rejected": "yellow",
    "interrupted": "magenta", "cancelled": "magenta", "training": "bold blue", "proposing": "blue",
    "scoring": "blue", "baseline…": "blue", "started": "blue", "oom": "red", "timeout": "red",
    "out of mem": "bold red", "diverged": "bold red", "no metrics": "bold red",
}


def clock(seconds: float | None) -> str:
    """H:MM:SS (or M:SS under an hour); an em dash for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def short_count(n: float) -> str:
    """1234 -> 1.2k, 2_500_000 -> 2.5M."""
    n = float(n)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def changes_text(change: Change) -> str:
    """The constants a change sets, after "code ×N" when it edits the code (search.scope = "code")."""
    edits = getattr(change, "edits", [])
    parts = [f"code ×{len(edits)}"] if edits else []
    return ", ".join(parts + [f"{k}={fmt_value(v)}" for k, v in change.params.items()])


def decision_text(decision: str) -> Text:
    return Text(decision, style=DECISION_STYLES.get(decision, ""))


def delta_text(delta: float | None, decision: str) -> Text:
    if delta is None:
        return Text("")
    style = "green" if delta < 0 and decision == "keep" else ("red" if delta > 0 else "")
    return Text(f"{delta:+.4f}", style=style)


def bar(fraction: float, width: int) -> str:
    """A horizontal bar with eighth-cell resolution, exactly ``width`` cells."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (_BLOCKS[part] if part and full < width else "")
    return text + " " * (width - len(text))


def progress_text(iteration: int | None, percent: float | None, step: int | None, loss: float | None,
                  tok_per_s: float | None, remaining_s: float | None, slot: str, phase: str | None = None,
                  elapsed_s: float | None = None, budget_s: float | None = None, grace_s: float | None = None, *,
                  width: int) -> Text:
    """``#12 ▕████▍    ▏ 58% training 2:54/5:00 +2:30 grace  step 412  loss 3.214  52.1k tok/s  1:03 left  gpu0``.

    The phase says what a bar standing still means (compiling before the timed steps, evaluating
    after them); elapsed time is against the budget, and the grace the deadline adds after it.
    """
    if iteration is None:
        return Text("no training run in progress", style="dim")
    details = []
    timing = phase or ""
    if phase == "starting":  # no step printed yet: the budget is not counting, the run's own clock is
        timing = f"starting {clock(elapsed_s or 0)}: waiting for the first step (imports, data, compile)"
        if len(timing) + len(slot) + 24 > width:
            timing = f"starting {clock(elapsed_s or 0)}: no step yet"
    elif elapsed_s is not None and budget_s:
        timing += f" {clock(elapsed_s)}/{clock(budget_s)}"
        if grace_s:
            timing += f" +{clock(grace_s)} grace"
    if timing:
        details.append(timing.strip())
    if step is not None:
        details.append(f"step {step}")
    if loss is not None:
        details.append(f"loss {loss:.4f}")
    if tok_per_s is not None:
        details.append(f"{short_count(tok_per_s)} tok/s")
    if remaining_s is not None:
        details.append(f"{clock(remaining_s)} left")
    if slot:
        details.append(slot)
    head = f"#{iteration} "
    pct = f" {percent:3.0f}% " if percent is not None else " ··· "
    tail = "  ".join(details)
    bar_width = max(6, width - len(head) - len(pct) - len(tail) - 3)
    out = Text(head, style="bold")
    out.append("▕")
    out.append(bar((percent or 0.0) / 100.0, bar_width), style="blue")
    out.append("▏")
    out.append(pct, style="bold")
    if timing:
        over = elapsed_s is not None and budget_s is not None and elapsed_s > budget_s
        out.append(details[0], style="bold red" if over else ("yellow" if phase in ("compiling", "evaluating", "starting")
                                                              else "cyan"))
        tail = tail[len(details[0]):]
    out.append(tail, style="dim")
    return out


def _scale(value: float, lo: float, hi: float, steps: int) -> int:
    if hi <= lo:
        return steps // 2
    return int(round((value - lo) / (hi - lo) * (steps - 1)))


MARKS = {"crash": ("✗", "bold red"), "oom": ("✗", "bold red"), "timeout": ("✗", "bold red"),
         "diverged": ("✗", "bold red"), "no_metrics": ("✗", "bold red"),
         "out of mem": ("✗", "bold red"), "no metrics": ("✗", "bold red"), "cancelled": ("⊘", "magenta"),
         "interrupted": ("⊘", "magenta")}
LEGEND = (("━", "green", " best  "), ("⣿", "bold green", " keep  "), ("⣿", "yellow", " discard  "),
          ("✗", "bold red", " no score"))


def best_plot(points: Sequence[tuple[int, float | None, str]], width: int, height: int) -> Text:
    """val_bpb per iteration (dots) under its running minimum (a line), in braille, with axes.

    Kept iterations are bright green dots on the line's steps, discarded ones yellow. With five
    rows or more the top row is a title and legend of its own (over no data), the bottom row the
    iteration axis with ticks, and runs with no score (crash, timeout, out of memory, cancelled)
    are marks on that axis at their iteration, never on a row that stands for a value. The y
    labels name the value at their row's middle, on every other row.
    """
    if width < 12 or height < 2:
        return Text("")
    scored = [(it, v, d) for it, v, d in points if v is not None]
    if not scored:
        return Text("val_bpb vs iteration: no scored iteration yet", style="dim")
    axis = height >= 4
    legend = height >= 5
    rows = height - int(axis) - int(legend)
    label_w = 8
    cols = max(2, width - label_w - 1)
    dot_w, dot_h = cols * 2, rows * 4
    values = [v for _, v, _ in scored]
    running: list[float] = []
    best = math.inf
    for v in values:
        best = min(best, v)
        running.append(best)
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 0.001
    lo, hi = lo - pad, hi + pad
    last_it = max(max(it for it, _, _ in points), 1)
    line = [[False] * dot_h for _ in range(dot_w)]
    dots = [[""] * dot_h for _ in range(dot_w)]

    def x_of(it: int) -> int:
        return min(max(_scale(it, 0, last_it, dot_w), 0), dot_w - 1)

    def xy(it: int, v: float) -> tuple[int, int]:
        return x_of(it), min(max(dot_h - 1 - _scale(v, lo, hi, dot_h), 0), dot_h - 1)

    for it, v, decision in scored:
        x, y = xy(it, v)
        dots[x][y] = decision
    # the running minimum as a step line across the whole width
    for i, ((it, _, _), r) in enumerate(zip(scored, running)):
        x0, y = xy(it, r)
        x1 = xy(scored[i + 1][0], r)[0] if i + 1 < len(scored) else dot_w - 1
        for x in range(x0, x1 + 1):
            line[x][y] = True
        if i + 1 < len(scored):
            y_next = xy(scored[i + 1][0], running[i + 1])[1]
            for yy in range(min(y, y_next), max(y, y_next) + 1):
                line[x1][yy] = True
    grid: list[list[tuple[str, str]]] = []
    for row in range(rows):
        cells = []
        for col in range(cols):
            code, on_line, kinds = 0, False, set()
            for dx in range(2):
                for dy in range(4):
                    x, y = col * 2 + dx, row * 4 + dy
                    if line[x][y]:
                        code |= _DOTS[dx][dy]
                        on_line = True
                    if dots[x][y]:
                        code |= _DOTS[dx][dy]
                        kinds.add(dots[x][y])
            style = "bold green" if kinds & {"keep", "baseline"} else ("green" if on_line else
                                                                      ("yellow" if code else ""))
            cells.append((chr(0x2800 + code) if code else " ", style))
        grid.append(cells)
    unscored = [(x_of(it) // 2, MARKS[d]) for it, v, d in points if v is None and d in MARKS]
    out = Text()
    if legend:
        out.append("val_bpb".rjust(label_w) + " ", style="dim")
        out.append_text(_legend(cols))
        out.append("\n")
    if not axis:  # no axis row to carry them: the unscored runs mark the top row, above the worst value
        for col, mark in unscored:
            grid[0][col] = mark
    spans = max(2, (rows - 1) // 2)  # top, bottom, and a label every other row or so between
    labelled = {round(k * (rows - 1) / spans) for k in range(spans + 1)}
    for row, cells in enumerate(grid):
        value = hi - (row + 0.5) / rows * (hi - lo)  # the value at the middle of this row
        label = f"{value:.4f}" if row in labelled else ""
        out.append(label.rjust(label_w)[:label_w] + " ", style="dim")
        _append_runs(out, cells)
        if row < rows - 1 or axis:
            out.append("\n")
    if axis:
        out.append("iter".rjust(label_w) + " ", style="dim")
        _append_runs(out, _axis(last_it, cols, unscored))
    return out


def _legend(cols: int) -> Text:
    """What the marks mean, flush right in ``cols`` cells (the shorter words first to go)."""
    out = Text()
    items = list(LEGEND)
    while items and sum(len(m) + len(label) for m, _, label in items) > cols:
        items.pop()
    used = sum(len(m) + len(label) for m, _, label in items)
    out.append(" " * max(0, cols - used))
    for mark, style, label in items:
        out.append(mark, style=style)
        out.append(label, style="dim")
    return out


def _append_runs(out: Text, cells: list[tuple[str, str]]) -> None:
    """One span per run of a style, not one per cell."""
    run: list[str] = []
    run_style = cells[0][1] if cells else ""
    for ch, style in cells:
        if style != run_style and run:
            out.append("".join(run), style=run_style)
            run = []
        run_style = style
        run.append(ch)
    if run:
        out.append("".join(run), style=run_style)


def _axis(last_it: int, cols: int, unscored: Sequence[tuple[int, tuple[str, str]]] = ()) -> list[tuple[str, str]]:
    """The iteration axis: ``#n`` at round steps (1, 2, 5, 10, 20, 50, ...) as many as fit with room
    between them, ``#0`` at the left and ``#last`` at the right where it fits, and the unscored runs'
    marks at their iteration, which the labels make room for."""
    row: list[tuple[str, str]] = [(" ", "dim")] * cols
    for col, mark in unscored:
        row[col] = mark
    most = max(1, cols // (len(f"#{last_it}") + 3))  # labels with at least three cells between them
    step = next(s for s in (m * 10 ** e for e in range(7) for m in (1, 2, 5)) if last_it / s <= most)
    ticks = list(range(0, last_it + 1, step))
    if ticks[-1] != last_it:
        ticks.append(last_it)
    for it in ticks:
        text = f"#{it}"
        x = _scale(it, 0, last_it, cols * 2) // 2
        at = min(max(0, x - (len(text) - 1 if it == last_it else 0)), cols - len(text))
        if all(c == " " for c, _ in row[max(0, at - 1):at + len(text) + 1]):
            row[at:at + len(text)] = [(c, "dim") for c in text]
    return row

def memory_text(used_mb: float | None, total_mb: float | None) -> str:
    """``38/80G``: a GPU's memory in use against its size (a tenth of a GiB under 10 GiB)."""
    if used_mb is None:
        return ""
    digits = 0 if (total_mb or used_mb) >= 10 * 1024 else 1  # whole GiB on a big card: 38/80G
    used = f"{used_mb / 1024:.{digits}f}"
    return f"{used}/{total_mb / 1024:.{digits}f}G" if total_mb else f"{used}G"


def slot_text(name: str, iteration: int | None, changes: str, percent: float | None, phase: str | None,
              remaining_s: float | None, gpu: str, utilisation: float | None, skipped: str, width: int,
              name_w: int, changes_w: int | None = None) -> Text:
    """One slot: ``gpu0 node1  #7 MATRIX_LR=0.08  ▕███▍   ▏ 58% training 1:03 left  38/80G  97%``."""
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(name.ljust(name_w)[:name_w] + " ", style="dim" if skipped else "bold")
    if skipped:
        out.append(f"skipped: {skipped}", style="dim italic")
        out.truncate(width, overflow="ellipsis")
        return out
    right = ""
    if gpu:
        right = f"  {gpu:>7}"
    if utilisation is not None:
        right += f" {utilisation:3.0f}%"
    if iteration is None:
        out.append("idle", style="dim")
        if right:
            out.append(" " * max(1, width - out.cell_len - len(right)))
            out.append(right, style="dim")
        out.truncate(width, overflow="ellipsis")
        return out
    label = f"#{iteration}".ljust(5)
    pct = f" {percent:3.0f}%" if percent is not None else "  ···"
    state = f" {phase or 'starting'}".ljust(11)
    left = f"{clock(remaining_s)} left".rjust(11) if remaining_s is not None else " " * 11
    room = width - out.cell_len - len(label) - len(pct) - len(state) - len(left) - len(right) - 2
    bar_w = max(4, min(24, room // 3))  # the changes say more than the bar: they get the room first
    # the same width on every slot's line (``changes_w``), so the bars line up
    change_w = min(max(0, room - bar_w), changes_w if changes_w is not None else len(changes) + 1)
    bar_w = max(4, room - change_w)  # the bar takes what the changes leave
    out.append(label, style="bold")
    if change_w:
        text = changes if len(changes) < change_w else changes[:max(0, change_w - 2)] + "… "
        out.append(text.ljust(change_w))
    out.append("▕")
    out.append(bar((percent or 0.0) / 100.0, bar_w), style="yellow" if phase in ("compiling", "evaluating") else "blue")
    out.append("▏")
    out.append(pct, style="bold")
    out.append(state, style="cyan" if phase == "training" else "yellow")
    out.append(left, style="dim")
    if right:
        out.append(right, style="")
    out.truncate(width, overflow="ellipsis")
    return out

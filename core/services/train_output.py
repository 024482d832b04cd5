"""What a training run prints, read as it arrives: progress lines, the metrics block, failure signs.

The script contract (the autoresearch ``train.py`` format): progress lines such as
``step 00123 (45.2%) | loss: 3.456789 | ... | remaining: 164s`` during training,
and at the end a line ``---`` followed by ``key: value`` lines, at least ``val_bpb``.
Everything here is pure: bytes and lines in, values out; the process is trainer.py's.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import IO, Callable, Iterable

ERROR_TAIL_LINES = 30
# A "line" longer than this is cut so a script writing megabytes without a newline
# cannot grow our memory without bound.
MAX_LINE_BYTES = 1 << 20
# Lines kept after the last '---' on stdout; a real metrics block is a dozen lines.
_MAX_BLOCK_LINES = 1000


@dataclass(frozen=True)
class Progress:
    step: int | None
    percent: float | None
    loss: float | None
    tok_per_s: float | None
    mfu: float | None
    remaining_s: float | None


# ---------------------------------------------------------------- parsing

_NUM = r"[-+]?(?:\d[\d,_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FLOATISH = rf"(?:{_NUM}|[-+]?nan|[-+]?inf(?:inity)?)"

_STEP_START_RE = re.compile(r"^\s*step\b\s*[:=#]?\s*\d", re.I)
_STEP_RE = re.compile(r"\bstep\b\s*[:=#]?\s*(\d[\d,]*)(?:\s*/\s*(\d[\d,]*))?", re.I)
_PERCENT_RE = re.compile(
    rf"\(\s*({_NUM})\s*%\s*\)|\b(?:progress|pct|done)\s*[:=]?\s*({_NUM})\s*%", re.I
)
# "val_loss" is a validation metric, not the training loss, hence the look-behind.
_LOSS_RE = re.compile(rf"(?<![\w])(?:train[_ ]?)?loss\s*[:=]?\s*({_FLOATISH})(?![\w])", re.I)
_TOK_RE = re.compile(rf"\btok(?:ens)?\s*/\s*s(?:ec)?\b\s*[:=]?\s*({_NUM})", re.I)
_MFU_RE = re.compile(rf"\bmfu\b\s*[:=]?\s*({_NUM})", re.I)
_REMAINING_RE = re.compile(
    rf"\b(?:remaining|eta)\b\s*[:=]?\s*({_NUM})\s*(s|sec|secs|seconds|m|min|mins|minutes|h)?\b", re.I
)
_UNIT_SECONDS = {"m": 60.0, "min": 60.0, "mins": 60.0, "minutes": 60.0, "h": 3600.0}

_METRIC_KEY_RE = re.compile(r"^[A-Za-z_][\w.\-/]*$")
_SEPARATOR = "---"

_OOM_RE = re.compile(r"out of memory|OutOfMemoryError|MemoryError", re.I)
_DIVERGED_RE = re.compile(
    r"loss\b[^|\n]{0,20}?(?<![\w.])[-+]?(?:nan|inf(?:inity)?)\b|\bdiverged\b", re.I
)
# autoresearch's train.py prints "FAIL" and exits 1 when the loss is NaN or exploding;
# it follows a \r progress line with no newline, so it usually ends that line.
_FAST_FAIL_RE = re.compile(r"(?:^|\s)FAIL$")


def _to_float(text: str) -> float:
    return float(text.replace(",", "").replace("_", ""))


def _search_float(pattern: re.Pattern[str], line: str) -> float | None:
    match = pattern.search(line)
    if match is None:
        return None
    value = next(group for group in match.groups() if group is not None)
    try:
        return _to_float(value)
    except ValueError:
        return None


def _parse_remaining(line: str) -> float | None:
    match = _REMAINING_RE.search(line)
    if match is None:
        return None
    try:
        seconds = _to_float(match.group(1))
    except ValueError:
        return None
    return seconds * _UNIT_SECONDS.get((match.group(2) or "s").lower(), 1.0)


def parse_progress(line: str) -> Progress | None:
    """Read a training progress line; None when the line is not one.

    A line counts as progress when it starts with ``step <n>``, or when it is a
    ``|``-separated line with at least two recognised fields. Fields may come in
    any order and any may be missing.
    """
    step: int | None = None
    percent: float | None = None
    step_match = _STEP_RE.search(line)
    if step_match is not None:
        step = int(step_match.group(1).replace(",", ""))
        total = step_match.group(2)
        if total is not None and int(total.replace(",", "")) > 0:
            percent = 100.0 * step / int(total.replace(",", ""))
    explicit_percent = _search_float(_PERCENT_RE, line)
    if explicit_percent is not None:
        percent = explicit_percent
    progress = Progress(
        step=step,
        percent=percent,
        loss=_search_float(_LOSS_RE, line),
        tok_per_s=_search_float(_TOK_RE, line),
        mfu=_search_float(_MFU_RE, line),
        remaining_s=_parse_remaining(line),
    )
    found = sum(value is not None for value in vars(progress).values())
    if _STEP_START_RE.match(line) or ("|" in line and found >= 2):
        return progress
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Parse the ``key: value`` block after the LAST line that is exactly ``---``.

    Lines that are not ``key: number`` are skipped; no ``---`` line means no metrics.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == _SEPARATOR]
    if not starts:
        return {}
    return _parse_block(lines[starts[-1] + 1 :])


def _parse_block(lines: Iterable[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not _METRIC_KEY_RE.match(key):
            continue
        try:
            metrics[key] = _to_float(value.strip())
        except ValueError:
            continue
    return metrics


# ---------------------------------------------------------------- streaming

_LINE_END_RE = re.compile(rb"\r\n|\r|\n")


class _LineSplitter:
    """Split a byte stream into lines at \\n, \\r\\n or a lone \\r (progress redraws)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._after_cr = False  # a chunk ended in \r: a leading \n in the next belongs to it

    def feed(self, data: bytes) -> list[str]:
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = False
        self._buffer += data
        lines: list[str] = []
        start = 0
        for match in _LINE_END_RE.finditer(self._buffer):
            ending = match.group()
            self._add(lines, self._buffer[start : match.start()], from_redraw=ending == b"\r")
            start = match.end()
            if ending == b"\r" and start == len(self._buffer):
                self._after_cr = True
        del self._buffer[:start]
        while len(self._buffer) > MAX_LINE_BYTES:
            self._add(lines, self._buffer[:MAX_LINE_BYTES], from_redraw=False)
            del self._buffer[:MAX_LINE_BYTES]
        return lines

    def close(self) -> list[str]:
        lines: list[str] = []
        if self._buffer:
            # The last write of a script often has no newline (a final \r progress line).
            self._add(lines, self._buffer, from_redraw=True)
            self._buffer = bytearray()
        return lines

    @staticmethod
    def _add(lines: list[str], raw: bytes | bytearray, *, from_redraw: bool) -> None:
        text = bytes(raw).decode("utf-8", errors="replace").rstrip()
        # A \r redraw leaves empty segments between updates; they are not lines.
        if text or not from_redraw:
            lines.append(text)


class _RunWatcher:
    """Everything learned from the output of one run, gathered as lines arrive."""

    def __init__(
        self,
        log: IO[str] | None,
        on_progress: Callable[[Progress], None] | None,
        on_line: Callable[[str, str], None] | None,
    ) -> None:
        self._log = log
        self._on_progress = on_progress
        self._on_line = on_line
        self.tails: dict[str, deque[str]] = {
            "stdout": deque(maxlen=ERROR_TAIL_LINES),
            "stderr": deque(maxlen=ERROR_TAIL_LINES),
        }
        self.block: list[str] | None = None  # stdout lines after the last '---'
        self.last_loss: float | None = None
        self.divergence_line: str | None = None
        self.fast_fail = False
        self.oom_line: str | None = None

    def feed(self, stream: str, line: str) -> None:
        if self._log is not None:
            self._log.write(("[stderr] " if stream == "stderr" else "") + line + "\n")
        self.tails[stream].append(line)
        if stream == "stdout":
            self._track_block(line)
        self._scan(line)
        progress = parse_progress(line)
        if progress is not None:
            if progress.loss is not None:
                self.last_loss = progress.loss
            if self._on_progress is not None:
                self._on_progress(progress)
        elif self._on_line is not None:
            self._on_line(stream, line)

    def _track_block(self, line: str) -> None:
        if line.strip() == _SEPARATOR:
            self.block = []
        elif self.block is not None and len(self.block) < _MAX_BLOCK_LINES:
            self.block.append(line)

    def _scan(self, line: str) -> None:
        if self.oom_line is None and _OOM_RE.search(line):
            self.oom_line = line.strip()
        if self.divergence_line is None and _DIVERGED_RE.search(line):
            self.divergence_line = line.strip()
        if _FAST_FAIL_RE.search(line):
            self.fast_fail = True

    def metrics(self) -> dict[str, float]:
        return _parse_block(self.block) if self.block is not None else {}

    def error_tail(self) -> str:
        tail = self.tails["stderr"] or self.tails["stdout"]
        return "\n".join(tail)

"""The Level 2 research dialogue as the Research pane shows it: calls streamed by id, cut into Markdown parts.

Plain data and pure functions over it (no Textual): :class:`tui.model.ViewModel` fills
them from events, the pane renders :func:`dialogue_parts` and :func:`round_counters`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.record import events as ev

CHUNK_CHARS = 1200  # research text is drawn in parts of about this size


@dataclass
class LLMCall:
    call_id: str
    level: str
    purpose: str = ""
    chunks: list[str] = field(default_factory=list)
    reasoning_chunks: list[str] = field(default_factory=list)
    deltas: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done: bool = False
    ok: bool = True
    error: str = ""

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def tokens(self) -> int:
        """Completion tokens: exact once answered, else one per streamed delta (an estimate)."""
        return self.completion_tokens if self.done and self.completion_tokens else self.deltas


@dataclass
class ResearchView:
    research_id: str
    cycle: int
    after_iteration: int
    source: str
    ts: float
    segments: list[tuple[str, Any]] = field(default_factory=list)  # in event order: (kind, payload)
    rounds: list[tuple[str, str]] = field(default_factory=list)  # (round name, call_id)
    round_done: set[str] = field(default_factory=set)  # call ids whose round finished
    validations: list[ev.MechanismValidated] = field(default_factory=list)
    pending: ev.MechanismPending | None = None
    approved: ev.MechanismApproved | None = None
    finished: ev.ResearchFinished | None = None


def dialogue_parts(view: ResearchView, calls: dict[str, LLMCall]) -> list[str]:
    """The research dialogue as Markdown parts in event order: title, rounds, results.

    A round's text is cut at paragraph boundaries into parts of about ``CHUNK_CHARS``;
    text only ever grows at its end, so every part but the last stays as it was and a
    screen re-renders only the last one while tokens stream.
    """
    parts: list[str] = []
    for kind, payload in view.segments:
        if kind == "call":
            call = calls.get(payload)
            if call is not None and parts:
                first, *rest = chunk_markdown(call.text)
                parts[-1] += first  # the round's first chunk shares its header's part
                parts.extend(rest)
        else:
            parts.append(payload)
    return [p.strip("\n") for p in parts]


def reasoning_text(view: ResearchView, calls: dict[str, LLMCall]) -> tuple[str, int]:
    """A thinking model's reasoning per round, as plain text, and how many characters of it there are."""
    out: list[str] = []
    for name, call_id in view.rounds:
        call = calls.get(call_id)
        if call is not None and call.reasoning_chunks:
            out.append(f"── {name} ──\n{''.join(call.reasoning_chunks).strip()}")
    text = "\n\n".join(out)
    return text, len(text)


def round_counters(view: ResearchView, calls: dict[str, LLMCall]) -> list[tuple[str, int, str]]:
    """(round name, tokens, state) per round: state is done | streaming | failed."""
    out = []
    for name, call_id in view.rounds:
        call = calls.get(call_id)
        tokens = call.tokens if call else 0
        if call is not None and call.done and not call.ok:
            state = "failed"
        elif call_id in view.round_done or (call is not None and call.done):
            state = "done"
        else:
            state = "streaming"
        out.append((name, tokens, state))
    return out


def chunk_markdown(text: str, size: int | None = None) -> list[str]:
    """Cut Markdown at blank lines outside code fences into pieces of at least ``size`` characters.

    The cuts depend only on the text before them, so appending never moves an earlier cut.
    """
    size = size or CHUNK_CHARS
    chunks: list[str] = []
    start = 0
    pos = 0
    fenced = False
    n = len(text)
    while pos < n:
        end = text.find("\n", pos)
        if end < 0:
            break  # the last line is still being written
        line = text[pos:end]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        pos = end + 1
        # a blank line closes a block; cut there once the chunk is big enough
        if not fenced and not line.strip() and pos - start >= size and pos < n:
            chunks.append(text[start:pos])
            start = pos
    chunks.append(text[start:])
    return chunks

"""Prompts that fit the endpoint: each level's token budget, from ``endpoint.context_tokens``.

Without a tokenizer for the model, tokens are estimated from characters, conservatively
(code and numbers tokenize densely). A level's prompt gets what the context leaves after
its reply limit and a margin; the parts that grow (history, script, earlier rounds) are
trimmed oldest first to fit, with a note of what was left out. Without context_tokens the
old rule stands: the history gets search.history_tokens.
"""
from __future__ import annotations

from typing import Any

from core.levels.context import DEFAULT_MAX_TOKENS

CHARS_PER_TOKEN = 3  # conservative: English prose is ~4 characters a token, code and digits fewer
MARGIN_TOKENS = 256  # chat-template tokens and the estimate's error
REPLY_SHARE = {"inner": 4, "strategy": 4, "research": 3}  # a reply may take 1/N of the context at most
MIN_REPLY_TOKENS = 512


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def messages_tokens(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(m.get("content", "")) + 4 for m in messages)


def reply_tokens(cfg: Any, level: str) -> int:
    """The level's reply limit: endpoint.max_tokens, else its default, capped to a share of the context."""
    if cfg.endpoint.max_tokens:
        return int(cfg.endpoint.max_tokens)
    default = DEFAULT_MAX_TOKENS[level]
    context = cfg.endpoint.context_tokens
    if not context:
        return default
    return max(MIN_REPLY_TOKENS, min(default, context // REPLY_SHARE[level]))


def prompt_budget(cfg: Any, level: str) -> int | None:
    """Tokens the level's whole prompt may take, or None when the context is not configured."""
    context = cfg.endpoint.context_tokens
    if not context:
        return None
    return max(256, context - reply_tokens(cfg, level) - MARGIN_TOKENS)


def trim_text(text: str, tokens: int, *, what: str, keep_end: bool = False) -> str:
    """``text`` cut to about ``tokens`` at a line boundary, with a note of how much was left out."""
    if estimate_tokens(text) <= tokens:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    used = 0
    for line in (reversed(lines) if keep_end else lines):
        cost = estimate_tokens(line) + 1
        if used + cost > max(0, tokens - 20):
            break
        kept.append(line)
        used += cost
    if keep_end:
        kept.reverse()
    note = f"[{len(lines) - len(kept)} of {len(lines)} lines of {what} left out to fit the model's context]"
    return "\n".join([note, *kept] if keep_end else [*kept, note])


def fit_messages(messages: list[dict[str, str]], budget: int | None) -> list[dict[str, str]]:
    """The conversation within ``budget``: the longest earlier message (never the system prompt or the
    last one) is shortened, keeping its end, until it fits or nothing is left to shorten."""
    if budget is None:
        return messages
    out = [dict(m) for m in messages]
    while messages_tokens(out) > budget:
        middle = [i for i in range(1, len(out) - 1) if estimate_tokens(out[i]["content"]) > 64]
        if not middle:
            break
        i = max(middle, key=lambda j: len(out[j]["content"]))
        over = messages_tokens(out) - budget
        target = max(32, estimate_tokens(out[i]["content"]) - over)
        shorter = trim_text(out[i]["content"], target, what="this earlier message", keep_end=True)
        if len(shorter) >= len(out[i]["content"]):
            break
        out[i]["content"] = shorter
    return out

"""Text from outside made safe to show in a terminal, a report or a prompt.

Anything from an LLM, a mechanism, a training log, a config or a session file may carry
terminal escape sequences (OSC 52 writes the clipboard, OSC 0 the window title, CSI 2J
clears the screen), bidi overrides, zero-width and tag characters, or a newline that
starts a forged line. Every sink passes such text through :func:`safe_line` (one line:
a log line, a table cell, a title) or :func:`safe_block` (a multi-line view that shows
newlines and tabs as they are). Neither emits a control or invisible code point: each
is shown as a visible Python-style escape (``\\x1b``, ``\\u202e``, ``\\U000e0041``), so
a reader sees that something was there and what. Both are idempotent.

Standard library only, at the bottom of the layers, so every layer can use it;
mechanisms/contract.py keeps its own cleaner over the same class of code points.
"""
from __future__ import annotations

import re

# The code points never emitted: C0, DEL and C1 (Cc); every format character (Cf: bidi
# controls and marks, zero-width, word joiner, BOM, soft hyphen, Arabic and Egyptian
# format marks, tags U+E0000...); line and paragraph separators (Zl, Zp); lone surrogates
# (Cs); the Hangul fillers, which draw nothing. tests/test_safe_text.py checks the class
# against unicodedata.
_LAYOUT = "\t\n"  # the only controls a multi-line view keeps
_C0_BUT_LAYOUT = "\x00-\x08\x0b-\x1f"
_OTHERS = (
    "\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\u3164"
    "\ud800-\udfff\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
UNSAFE_CLASS = _C0_BUT_LAYOUT + _LAYOUT + _OTHERS  # a regex character class, without the brackets
_UNSAFE = re.compile(f"[{UNSAFE_CLASS}]")
_UNSAFE_IN_BLOCK = re.compile(f"[{_C0_BUT_LAYOUT}{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
ELLIPSIS = "…"


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named:
        return named
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def _bounded(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[:max(0, limit - 1)] + ELLIPSIS


def safe_line(text: object, limit: int | None = None) -> str:
    """``text`` as one line: every control and invisible code point, newlines and tabs
    included, shown escaped; at most ``limit`` characters of the original, then an ellipsis."""
    text = text if isinstance(text, str) else str(text)
    text = _bounded(text, limit)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def safe_block(text: object, limit: int | None = None) -> str:
    """``text`` for a multi-line view: newlines and tabs kept (CRLF read as a newline),
    every other control and invisible code point shown escaped."""
    text = text if isinstance(text, str) else str(text)
    text = _bounded(text, limit)
    if not _UNSAFE_IN_BLOCK.search(text):
        return text
    return _UNSAFE_IN_BLOCK.sub(_escape, text.replace("\r\n", "\n"))


def is_safe_line(text: str) -> bool:
    """Whether ``text`` holds no control or invisible code point (newlines and tabs included)."""
    return _UNSAFE.search(text) is None


def unsafe_code_points(text: str, *, block: bool = False) -> list[str]:
    """The code points of ``text`` that no sink may emit, as ``U+XXXX`` (for checks and tests)."""
    pattern = _UNSAFE_IN_BLOCK if block else _UNSAFE
    return [f"U+{ord(m.group()):04X}" for m in pattern.finditer(text)]


DATA_FENCE = "~~~~"  # the fence training output is quoted in, too (core/levels/inner.py)


def quoted_data(text: object, limit: int = 1000) -> str:
    """Text that is not ours, for a prompt: one line, at most ``limit`` characters, between
    fences it cannot close."""
    return f"{DATA_FENCE} {safe_line(text, limit).replace(DATA_FENCE, '~ ~ ')} {DATA_FENCE}"

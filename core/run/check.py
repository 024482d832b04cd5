"""One line of `bilevel doctor`: what was checked, whether it passed, and what was seen."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # not ok, but not fatal either

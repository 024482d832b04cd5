"""Prompt templates, one text file per LLM call, next to the level that sends them."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load(name: str) -> str:
    return (_DIR / f"{name}.txt").read_text(encoding="utf-8")

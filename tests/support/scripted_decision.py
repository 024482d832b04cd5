"""The scripted engines' verdict rule (one slot or many): what a real engine would decide for a score."""
from __future__ import annotations


def scripted_decision(n: int, outcome: str, val: float | None, best: float | None) -> str:
    if n == 0:
        return "baseline"
    if outcome == "cancelled":
        return "cancelled"
    if val is None:
        return "crash"
    return "keep" if best is not None and val < best else "discard"

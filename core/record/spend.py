"""What a run has spent so far, per part and in total: LLM tokens, their dollars, training device-hours.

Read from the one fold (core/record/state.py): tokens per level from the LLM responses, device
time from the training runs (Level 1's, and calibration and audit runs under "audit"). Dollars
are the tokens at the model's price (core/record/pricing.py), None where no price is known.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.record.pricing import Price
from core.record.state import RunState

SCOPES = ("total", "inner", "strategy", "research", "audit")
LLM_LEVELS = ("inner", "strategy", "research")


@dataclass(frozen=True)
class Spent:
    tokens: int = 0
    usd: float | None = 0.0  # None: tokens were spent at no known price
    gpu_hours: float = 0.0

    def of(self, resource: str) -> float | None:
        return {"usd": self.usd, "tokens": float(self.tokens), "gpu_hours": self.gpu_hours}[resource]


def spent(state: RunState, price: Price | None) -> dict[str, Spent]:
    """scope -> what it spent: each LLM level, "audit" (runs outside the search) and "total"."""
    out: dict[str, Spent] = {}
    for level in LLM_LEVELS:
        u = state.usage.get(level)
        prompt, completion = (u.prompt_tokens, u.completion_tokens) if u is not None else (0, 0)
        usd = price.usd(prompt, completion) if price is not None else (None if prompt or completion else 0.0)
        out[level] = Spent(tokens=prompt + completion, usd=usd)
    search_hours = (state.device.seconds - state.device.audit_seconds) / 3600
    out["inner"] = Spent(out["inner"].tokens, out["inner"].usd, search_hours)
    out["audit"] = Spent(gpu_hours=state.device.audit_seconds / 3600)
    usds = [out[level].usd for level in LLM_LEVELS]
    out["total"] = Spent(tokens=sum(out[level].tokens for level in LLM_LEVELS),
                         usd=None if any(u is None for u in usds) else sum(u for u in usds if u is not None),
                         gpu_hours=state.device.seconds / 3600)
    return out


def amount(resource: str, value: float) -> str:
    """A quantity as people read it: $1.23 (or $0.0042), 12,345 tokens, 0.25 GPU-hours."""
    if resource == "usd":
        return f"${value:,.2f}" if value >= 0.1 or value == 0 else f"${value:.4f}"
    if resource == "tokens":
        return f"{int(value):,} tokens"
    return f"{value:.3g} GPU-hours"

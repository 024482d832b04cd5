"""How many times one run would repeat its training data.

A 300 s run of the reference config on one H100 (the public script: 953 steps of 2^19
tokens) reads ~500M tokens; the offline stdlib corpus holds ~3.5M, so such a run sees it
~140 times and measures memorisation, not the workload. ``run`` and ``doctor`` say so.
"""
from __future__ import annotations

from typing import Any

# The public script's throughput at the reference config on one H100: 953 steps x 2^19 tokens / 300 s.
REFERENCE_TOKENS_PER_S = 953 * 2**19 / 300
REPEAT_WARN_EPOCHS = 4.0  # "more than a few" passes over the training data


def epochs_per_run(train_tokens: int, budget_s: float, tokens_per_s: float = REFERENCE_TOKENS_PER_S) -> float:
    """Passes over ``train_tokens`` in ``budget_s`` seconds at ``tokens_per_s``."""
    return float("inf") if train_tokens <= 0 else budget_s * tokens_per_s / train_tokens


def estimate(meta: dict[str, Any], budget_s: float) -> str:
    """One line: tokens available, tokens a reference GPU run reads, epochs."""
    train = int(meta.get("tokens", {}).get("train", 0))
    epochs = epochs_per_run(train, budget_s)
    return (f"{train:,} training tokens; a {budget_s:g} s run of the reference config reads "
            f"~{budget_s * REFERENCE_TOKENS_PER_S / 1e6:,.0f}M (one H100, as the public script) = "
            f"~{epochs:,.1f} epochs")


def repeat_warning(meta: dict[str, Any], budget_s: float) -> str | None:
    """A warning when a reference run would repeat the data more than a few times, else None."""
    train = int(meta.get("tokens", {}).get("train", 0))
    if epochs_per_run(train, budget_s) <= REPEAT_WARN_EPOCHS:
        return None
    return (f"warning: {estimate(meta, budget_s)}: the run would repeat its training data more than "
            f"{REPEAT_WARN_EPOCHS:g} times and measure memorisation; for the reference workload prepare "
            "`bilevel prepare --source climbmix` and set data.source = \"climbmix\"")

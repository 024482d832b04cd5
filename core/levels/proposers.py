"""Level 1's proposer for a run, chosen by name through the registry (a plugin's as well as ours)."""
from __future__ import annotations

from typing import Any

from core.record import registry
from core.services.plugins import load
from .proposer import Algorithmic, Proposer


def make_proposer(cfg: Any) -> Proposer:
    """The proposer ``cfg.proposer`` names, built with the run's seed (a point proposer behind Algorithmic)."""
    # offline mode draws known code edits too when the code is searched (its library of them)
    scoped = {"scope": cfg.search.scope} if cfg.proposer == "offline" else {}
    made = load(registry.entry("proposer", cfg.proposer))(seed=cfg.search.seed, **scoped)
    return made if isinstance(made, Proposer) else Algorithmic(made)

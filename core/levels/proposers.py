"""Level 1's proposer for a run, chosen by name through the registry (a plugin's as well as ours)."""
from __future__ import annotations

from typing import Any

from core.record import registry
from .proposer import Algorithmic, Proposer


def make_proposer(cfg: Any) -> Proposer:
    """The proposer ``cfg.proposer`` names, built with the run's seed and its ``[plugins.NAME]`` options (a point
    proposer behind Algorithmic).

    Its ``source`` must be its registry name: the log labels every proposal with it, so a plugin labelling its
    proposals "llm" would pass them off as another proposer's.
    """
    entry = registry.entry("proposer", cfg.proposer)
    # offline mode draws known code edits too when the code is searched (its library of them)
    scoped = {"scope": cfg.search.scope} if cfg.proposer == "offline" else {}
    made = registry.load(entry)(seed=cfg.search.seed, **scoped, **registry.settings(entry, getattr(cfg, "plugins", {})))
    source = getattr(made, "source", None)
    if source != entry.name:
        raise registry.PluginError(f"the proposer {entry.name!r} ({entry.origin}) labels its proposals {source!r}; "
                                   f"a proposer's source must be its registry name, {entry.name!r}")
    return made if isinstance(made, Proposer) else Algorithmic(made)

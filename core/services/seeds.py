"""The run's random seed belongs to the engine, not to the search.

A search that may change the seed can "improve" val_bpb by luck alone, so seed
constants in a training script (``SEED = 42``, ``DATA_SEED = 1``) are locked unless the
config allows seed tuning, and the engine writes the seed of each run into them (a
script that reads ``BILEVEL_SEED`` from the environment needs no edit at all).
"""
from __future__ import annotations

import re

from core.services.script import TrainScript

# SEED, DATA_SEED, RANDOM_SEED, SEED_OFFSET, TORCH_SEEDS — not SEEDLING_LR.
_SEED_NAME = re.compile(r"(?:^|_)SEEDS?(?:$|_)")
CONFIRM_SEED_OFFSET = 1000  # confirmation runs use seeds far from the repeats' (search.seed + r)


def seed_params(script: TrainScript) -> list[str]:
    """Integer constants of the script that are random seeds."""
    return [name for name, p in script.params.items() if p.kind == "int" and _SEED_NAME.search(name)]


def with_seed(text: str, seed: int) -> str:
    """The script with every seed constant set to ``seed`` (unchanged if it has none)."""
    script = TrainScript.parse(text)
    changes = {name: seed for name in seed_params(script) if script.params[name].value != seed}
    return script.apply(changes).text if changes else text


def confirm_seed(session_seed: int, iteration: int) -> int:
    """The seed of the confirmation run of ``iteration``: never the session's own seed."""
    return session_seed + CONFIRM_SEED_OFFSET + iteration

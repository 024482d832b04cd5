"""Which test lane runs: the fast one (``pytest -m "not slow"``) or the full suite (tests/conftest.py sets it)."""
from __future__ import annotations

import os

LANE_VARIABLE = "BILEVEL_TEST_LANE"


def fast_lane() -> bool:
    return os.environ.get(LANE_VARIABLE) == "fast"


def examples(full: int, fast: int) -> int:
    """Examples a property test draws: all of them in the full suite, a sample in the fast lane."""
    return fast if fast_lane() else full

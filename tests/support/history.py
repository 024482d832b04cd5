"""A proposer's history as the tests hand it over: the fields of IterationRecord a proposer reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.record.change import NO_CHANGE, Change


@dataclass
class Record:  # the fields of core.record.state.IterationRecord a proposer reads
    iteration: int
    decision: str
    val_bpb: float | None
    values: dict[str, Any]
    source: str
    changes: Change = NO_CHANGE

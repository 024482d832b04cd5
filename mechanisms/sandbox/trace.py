"""A recorded trace as the hooks see it: states folded from its records, results of its trained ones.

The validator's dry run and the fingerprint's probes both replay traces through a worker;
they fold them here, the same way, so a duplicate check and a dry run never disagree on
what a hook was shown.
"""
from __future__ import annotations

import copy
from typing import Any

from mechanisms.base import SearchState

TRAINED = ("keep", "discard", "crash", "cancelled")  # decisions after which the loop reviewed and trained


def replay_state(records: list[dict], schema: dict[str, dict], upto: int, iteration: int, *,
                 fresh: bool = True) -> SearchState:
    """A fresh snapshot of the trace's first ``upto`` records, folded like the engine's state.

    ``fresh=False`` shares the records and schema (for a caller that serialises the state at once)."""
    prefix = copy.deepcopy(records[:upto]) if fresh else records[:upto]
    baseline = best = None
    best_values: dict[str, Any] = {}
    for r in prefix:
        if r.get("decision") == "baseline" and r.get("val_bpb") is not None:
            baseline = best = r["val_bpb"]
            best_values = dict(r.get("values") or {})
        elif r.get("decision") == "keep" and r.get("val_bpb") is not None:
            best = r["val_bpb"]
            best_values = dict(r.get("values") or {})
    return SearchState(iteration=iteration, records=prefix, schema=copy.deepcopy(schema) if fresh else schema,
                       best_values=best_values, best_val_bpb=best, baseline_val_bpb=baseline)


def hook_result(record: dict) -> dict[str, Any]:
    """The result ``decide`` and ``observe`` receive for a recorded iteration."""
    decision = record.get("decision")
    if decision in ("keep", "discard") and record.get("val_bpb") is not None:
        return {"outcome": "ok", "val_bpb": record["val_bpb"], "metrics": {}}
    outcome = "cancelled" if decision == "cancelled" else "crash"
    return {"outcome": outcome, "val_bpb": None, "metrics": {}}

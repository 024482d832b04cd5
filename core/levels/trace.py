"""The search trace as the levels read it: per-parameter statistics and compact history.

Level 1 shows the LLM the whole history; past a token budget the oldest iterations fold
into per-parameter statistics instead of being dropped. Level 1.5's freeze rule reads
the same statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mechanisms.base import SearchState

from core.record.state import IterationRecord, RunState
from core.services.schema import open_directions, step_toward
from core.services.script import ParamSpec

TRAINED = ("keep", "discard", "crash", "cancelled")


@dataclass
class ParamStats:
    name: str
    proposed: int = 0  # iterations that trained with a change to this parameter
    kept: int = 0
    crashed: int = 0
    net_improvement: float = 0.0  # sum of (best_before - val_bpb) over kept iterations touching it
    values: list[Any] = field(default_factory=list)
    asked: int = 0  # every proposal that named it, rejected ones included
    trained: int = 0  # iterations that trained it (proposed may count rejected proposals too)


def param_stats(records: Iterable[IterationRecord]) -> dict[str, ParamStats]:
    stats: dict[str, ParamStats] = {}
    for r in records:
        if r.iteration == 0 or r.decision not in TRAINED:
            continue
        for name, value in r.changes.params.items():
            tally(stats.setdefault(name, ParamStats(name)), r, value)
    return stats


def tally(s: ParamStats, r: Any, value: Any) -> None:
    """Count one trained iteration's ``value`` into ``s``: proposed, kept (with its gain), crashed."""
    s.proposed += 1
    s.values.append(value)
    if r.decision == "keep" and r.val_bpb is not None and r.best_before is not None:
        s.kept += 1
        s.net_improvement += r.best_before - r.val_bpb
    if r.decision == "crash":
        s.crashed += 1


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(fmt_value(v) for v in value) + ")"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def fmt_bpb(value: float | None) -> str:
    return "—" if value is None else f"{value:.6f}"


def edits_text(change: Any, limit: int = 160) -> str:
    """A change's code edits in a line: each block's first changed lines, find → replace."""
    out = []
    for e in getattr(change, "edits", []):
        first = lambda t: next((ln.strip() for ln in t.splitlines() if ln.strip()), "")  # noqa: E731
        out.append(f"`{first(e.find)[:60]}` → `{first(e.replace)[:60]}`")
    return ("code: " + "; ".join(out))[:limit] if out else ""


def record_line(r: IterationRecord) -> str:
    changes = ", ".join(p for p in (edits_text(r.changes),
                                    ", ".join(f"{k}={fmt_value(v)}" for k, v in r.changes.params.items())) if p)
    changes = changes or "(no change)"
    if r.val_bpb is not None and r.best_before is not None:
        score = f"val_bpb {r.val_bpb:.6f} (Δ {r.val_bpb - r.best_before:+.6f})"
    elif r.val_bpb is not None:
        score = f"val_bpb {r.val_bpb:.6f}"
    else:
        score = f"no score: {r.outcome or r.decision}"
        # A failed run's reason quotes its output: that reaches a prompt only fenced, as data.
        if r.reason and r.outcome in ("", "ok", None) and r.decision not in TRAINED:
            score += f" — {r.reason[:160]}"
    hyp = f" | {r.hypothesis[:200]}" if r.hypothesis else ""
    return f"#{r.iteration} {r.decision.upper()}: {changes} → {score}{hyp}"


def stats_line(s: ParamStats) -> str:
    tried = ", ".join(fmt_value(v) for v in s.values[-6:])
    return (f"{s.name}: proposed {s.proposed}×, kept {s.kept}×, crashed {s.crashed}×, "
            f"net gain {s.net_improvement:+.6f}; values tried: {tried}")


def approx_tokens(text: str) -> int:
    return len(text) // 4 + 1


def history_text(records: Sequence[IterationRecord], token_budget: int) -> str:
    """Every iteration, newest kept verbatim; the oldest folded into statistics past the budget."""
    lines = [record_line(r) for r in records]
    if approx_tokens("\n".join(lines)) <= token_budget:
        return "\n".join(lines) if lines else "(none yet)"
    # Keep as many recent lines as fit in ~70% of the budget; fold the rest.
    keep: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = approx_tokens(line) + 1
        if used + cost > token_budget * 0.7 and keep:
            break
        keep.append(line)
        used += cost
    keep.reverse()
    folded = records[: len(records) - len(keep)]
    kept_folded = [r for r in folded if r.decision == "keep"]
    summary = [f"Iterations #{folded[0].iteration}–#{folded[-1].iteration} summarised "
               f"({len(folded)} iterations, {len(kept_folded)} kept) as per-parameter statistics:"]
    summary += ["  " + stats_line(s) for s in param_stats(folded).values()]
    return "\n".join(summary + ["Recent iterations in full:"] + keep)


def snapshot(state: RunState, schema: dict[str, Any], iteration: int | None = None) -> SearchState:
    """The plain-data view of the run that hooks receive, for ``iteration`` (the hook's trial).

    Without one it names the iteration started last, which is only right on one slot.
    """
    if iteration is None:
        iteration = state.running if state.running is not None else state.next_iteration
    return SearchState(
        iteration=iteration,
        records=[{
            "iteration": r.iteration, "decision": r.decision, "changes": dict(r.changes.params),
            "hypothesis": r.hypothesis, "val_bpb": r.val_bpb, "best_before": r.best_before,
            "values": dict(r.values),
        } for r in state.records],
        schema={n: dict(s) for n, s in schema.items()},
        best_values=dict(state.best_values), best_val_bpb=state.best_val_bpb,
        baseline_val_bpb=state.baseline_val_bpb, frozen=sorted(state.frozen), guidance=state.guidance,
        frozen_directions={n: sorted(d) for n, d in state.frozen_directions.items()},
        moves=moves(state, schema), max_changes=_max_changes(state),
    )


def _max_changes(state: RunState) -> int | None:
    search = state.config.get("search") if isinstance(state.config, dict) else None
    value = search.get("max_changes") if isinstance(search, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def moves(state: RunState, schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the proposer can do from the best configuration: parameter -> {open direction: one step's value}.

    Locked and frozen parameters, frozen directions, directions with no room left within the
    bounds and parameters with no direction (tuples, free strings) are absent: a mechanism
    that asks for a move asks only for one of these.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, d in schema.items():
        if d.get("locked") or name in state.frozen:
            continue
        spec = ParamSpec(name=name, kind=d.get("kind", ""), value=state.best_values.get(name, d.get("value")),
                         minimum=d.get("minimum"), maximum=d.get("maximum"),
                         choices=tuple(d["choices"]) if d.get("choices") else None,
                         log_scale=bool(d.get("log_scale")), pow2=bool(d.get("pow2")),
                         frozen_directions=tuple(sorted(state.frozen_directions.get(name, ()))))
        steps = {direction: step_toward(spec, direction) for direction in open_directions(spec)}
        steps = {k: v for k, v in steps.items() if v is not None}
        if steps:
            out[name] = steps
    return out

"""Offline Level 2: choose a built-in mechanism from the trace with a fixed rule (no LLM).

The rule, first match wins:

1. **tabu** when the search repeats itself: at least 2 of the last 6 trained
   iterations landed within tabu tolerance of one of the 8 trained iterations before
   them (the test :class:`~mechanisms.tabu.Tabu` itself applies);
2. **orthogonal** when some active parameter (not locked, not frozen, and one the proposer
   can move when ``movable`` is given) was not changed by any of the last 8 trained
   iterations (an empty trace counts: nothing was changed);
3. **bandit** otherwise: every dimension is being visited, so spend the iterations on the
   ones that have paid off.

A mechanism already active is never chosen: the rule falls through to the next match,
then to the first built-in not active. Only when every built-in is already active is
nothing left to choose: the rule's own pick is returned, with a reason that says so, and
the caller (which checks the name against the active ones) reports the research as
rejected.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

from mechanisms.tabu import repeats, trained_records

ORDER = ("tabu", "orthogonal", "bandit")
REPEAT_WINDOW = 6  # trained iterations inspected for repeats
REPEATS_NEEDED = 2
TENURE = 8  # how far back a repeat may reach (Tabu's default tenure)
UNTOUCHED_WINDOW = 8  # trained iterations inspected for untouched parameters


def near_duplicates(records: Sequence[Mapping[str, Any]], schema: Mapping[str, Mapping[str, Any]],
                    window: int = REPEAT_WINDOW, tenure: int = TENURE) -> list[tuple[int, int]]:
    """(iteration, iteration it repeats) for each of the last ``window`` trained iterations that repeats."""
    trained = trained_records(records)
    found = []
    for k in range(max(0, len(trained) - window), len(trained)):
        record = trained[k]
        changes = record.get("changes") or {}
        config = {**changes, **(record.get("values") or {})}
        for earlier in reversed(trained[max(0, k - tenure):k]):
            if repeats(changes, config, earlier, schema):
                found.append((record.get("iteration"), earlier.get("iteration")))
                break
    return found


def untouched_params(records: Sequence[Mapping[str, Any]], schema: Mapping[str, Mapping[str, Any]],
                     frozen: Iterable[str] = (), window: int = UNTOUCHED_WINDOW,
                     movable: Optional[Iterable[str]] = None) -> list[str]:
    """Active parameters that none of the last ``window`` trained iterations changed, in schema order.

    ``movable``: the parameters the proposer can move now (``SearchState.moves``); others never count.
    """
    frozen = set(frozen)
    can = None if movable is None else set(movable)
    touched = {name for r in trained_records(records)[-window:] for name in (r.get("changes") or {})}
    return [n for n, spec in schema.items()
            if not (spec or {}).get("locked") and n not in frozen and n not in touched and (can is None or n in can)]


def choose_builtin(records: list[dict], schema: dict[str, dict], active: Iterable[str] = (), *,
                   frozen: Iterable[str] = (), movable: Optional[Iterable[str]] = None) -> tuple[str, str]:
    """(name of the built-in mechanism to activate, the reason in one sentence).

    ``active`` names the mechanisms already active; ``frozen`` the parameters Level 1.5 froze.
    """
    active = set(active)
    matches: list[tuple[str, str]] = []
    dups = near_duplicates(records, schema)
    if len(dups) >= REPEATS_NEEDED:
        pairs = ", ".join(f"#{a} repeats #{b}" for a, b in dups)
        matches.append(("tabu", f"{len(dups)} of the last {REPEAT_WINDOW} trained iterations repeat a "
                                f"recent region ({pairs}); tabu vetoes revisits"))
    untouched = untouched_params(records, schema, frozen, movable=movable)
    if untouched:
        shown = ", ".join(untouched[:6]) + (f" and {len(untouched) - 6} more" if len(untouched) > 6 else "")
        matches.append(("orthogonal", f"{len(untouched)} active parameters were not changed in the last "
                                      f"{UNTOUCHED_WINDOW} trained iterations ({shown}); orthogonal "
                                      f"steers the search onto them"))
    matches.append(("bandit", "the search is spread over the parameters without repeating itself; "
                              "the bandit spends iterations on the ones that have paid off"))
    for name, reason in matches:
        if name not in active:
            return name, reason
    for name in ORDER:
        if name not in active:
            skipped = ", ".join(n for n, _ in matches)
            return name, f"the rule's choices ({skipped}) are already active; {name} is the next built-in"
    return matches[0][0], f"every built-in mechanism is already active ({', '.join(ORDER)})"

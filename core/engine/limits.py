"""The run's limits: spend caps over money, tokens and GPU-hours, and the stuck-loop rule.

Pure rules over the fold (the engine applies them between steps, core/engine/engine.py):

- **Caps** (``[budget] max_usd / max_tokens / max_gpu_hours``, in total and per part): 50 % and
  80 % of a cap warn, once per cap value (a SpendWarning each); 100 % pauses the run through the
  engine's own pause path, with the cap in the reason. Only a raised (or unset) cap lifts that
  pause: a plain resume is refused while the cap stays reached. A cap in dollars on a model with
  no known price cannot be reached (its tokens still count), and the run's estimate says so.
- **Stuck loop** (``budget.stuck_after``, 0: off): that many finished iterations in a row without
  a keep (discarded, crashed or rejected; interrupted and cancelled ones are neither) pause the
  run. A resume lifts it and the streak counts afresh from there.

Every refusal and pause carries its reason, in the user's terms.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from core.record import events as ev
from core.record.config import CAP_KEYS, Config
from core.record.pricing import Price
from core.record.spend import SCOPES, Spent, amount, spent
from core.record.state import IterationRecord, RunState

FRACTIONS = (0.5, 0.8)
RESOURCE_OF = {"max_usd": "usd", "max_tokens": "tokens", "max_gpu_hours": "gpu_hours"}
NOT_A_KEEP = ("discard", "crash", "rejected")


@dataclass(frozen=True)
class Reached:
    """A cap spent in full: which one, and by how much."""

    scope: str
    key: str  # max_usd | max_tokens | max_gpu_hours
    spent: float
    cap: float

    @property
    def setting(self) -> str:
        """The config key, as --set takes it: budget.max_usd, budget.inner.max_tokens."""
        return f"budget.{self.key}" if self.scope == "total" else f"budget.{self.scope}.{self.key}"

    def reason(self, session: str) -> str:
        where = "the whole run" if self.scope == "total" else f"the {SCOPE_NAMES[self.scope]}"
        return (f"{self.setting} reached: {amount(RESOURCE_OF[self.key], self.spent)} of "
                f"{amount(RESOURCE_OF[self.key], self.cap)} spent by {where}; raise the cap to continue "
                f"(the app's config reload, or stop and: bilevel resume {session} --set {self.setting}=…)")


SCOPE_NAMES = {"inner": "Level 1", "strategy": "Level 1.5", "research": "Level 2",
               "audit": "calibration and audit runs", "total": "whole run"}


def check_caps(cfg: Config, state: RunState, price: Price | None) -> tuple[list[ev.SpendWarning], list[Reached]]:
    """The warnings not yet given and the caps reached."""
    warnings: list[ev.SpendWarning] = []
    reached: list[Reached] = []
    now = spent(state, price)
    for scope in SCOPES:
        cap_set = cfg.budget.cap(scope)
        for key in CAP_KEYS:
            cap = getattr(cap_set, key)
            value = now[scope].of(RESOURCE_OF[key]) if cap is not None else None
            if cap is None or value is None:  # no cap, or dollars at no known price
                continue
            for fraction in FRACTIONS:
                if value >= fraction * cap and (scope, RESOURCE_OF[key], fraction, float(cap)) not in state.spend_warned:
                    warnings.append(ev.SpendWarning(scope=scope, resource=RESOURCE_OF[key],  # type: ignore[arg-type]
                                                    fraction=fraction, spent=value, cap=float(cap)))
            if value >= cap:
                reached.append(Reached(scope, key, value, float(cap)))
    return warnings, reached


def stuck_streak(state: RunState) -> list[IterationRecord]:
    """The records of the streak without a keep that ends the trace (since a stuck pause was lifted)."""
    streak: list[IterationRecord] = []
    records = state.records
    for i in range(len(records) - 1, state.stuck_from - 1, -1):
        r = records[i]
        if r.decision in ("keep", "baseline"):
            break
        if r.decision in NOT_A_KEEP:
            streak.append(r)
    return streak[::-1]


def stuck_reason(cfg: Config, state: RunState) -> str:
    """Why the stuck-loop rule pauses the run now, or "" when it does not."""
    after = cfg.budget.stuck_after
    if not after:
        return ""
    records = stuck_streak(state)
    if len(records) < after:
        return ""
    streak = [r.iteration for r in records]
    counts = Counter(r.decision for r in records)
    told = ", ".join(f"{counts[d]} {word}" for d, word in (("discard", "discarded"), ("crash", "crashed"),
                                                         ("rejected", "rejected")) if counts[d])
    return (f"budget.stuck_after: {len(streak)} iterations in a row without a keep (#{streak[0]}–#{streak[-1]}: "
            f"{told}); resume to go on (the streak counts afresh), or change budget.stuck_after (0: off)")


def same_limit(a: str, b: str) -> bool:
    """Two pause reasons about the same limit (the figures after the first ':' move as spending goes on)."""
    return a.split(":", 1)[0] == b.split(":", 1)[0]


def spend_line(now: dict[str, Spent]) -> str:
    """The whole run's spend in one line, for a pause's or a warning's neighbours."""
    total = now["total"]
    usd = amount("usd", total.usd) if total.usd is not None else "$ unknown"
    return f"{usd}, {amount('tokens', total.tokens)}, {amount('gpu_hours', total.gpu_hours)}"

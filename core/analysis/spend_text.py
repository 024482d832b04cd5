"""The run's limits in words: the spend estimate, the warnings, the pauses of a cap or a stuck loop."""
from __future__ import annotations

from core.record import events as ev
from core.record.spend import amount

SCOPE_NAMES = {"total": "the whole run", "inner": "Level 1", "strategy": "Level 1.5", "research": "Level 2",
               "audit": "calibration and audit runs"}


def describe(e: ev.SpendEstimated) -> list[str]:
    """The estimate as lines a person reads (the CLI's --estimate, the headless printer)."""
    lines = [f"training: {e.runs} run(s) × {_devices(e)} ≈ {e.gpu_hours:.3g} GPU-hours "
             f"(at most {e.gpu_hours_max:.3g} with start-up), ≈ {e.wall_hours:.3g} h on {e.slots} slot(s)"]
    if e.calls:
        per = ", ".join(f"{level} {n}" for level, n in e.calls.items())
        usd = amount("usd", e.usd) if e.usd is not None else "$ unknown"
        lines.append(f"LLM: {sum(e.calls.values())} call(s) ({per}), ≤ {sum(e.tokens.values()):,} tokens, "
                     f"≤ {usd} ({e.price})")
    else:
        lines.append("LLM: no calls (offline or a classical sampler)")
    caps = {k: v for k, v in e.limits.items() if k != "stuck_after"}
    stuck = int(e.limits.get("stuck_after", 0))
    lines.append("caps: " + (", ".join(f"budget.{k} = {v:g}" for k, v in caps.items()) or "none")
                 + (f"; stuck-loop pause after {stuck} iterations without a keep" if stuck else "; stuck-loop rule off"))
    lines += [f"note: {n}" for n in e.notes]
    return lines


def _devices(e: ev.SpendEstimated) -> str:
    return f"{e.time_s:g} s" + (f" × {e.devices_per_run} devices" if e.devices_per_run > 1 else "")


def warning_line(e: ev.SpendWarning) -> str:
    key = {"usd": "max_usd", "tokens": "max_tokens", "gpu_hours": "max_gpu_hours"}[e.resource]
    setting = f"budget.{key}" if e.scope == "total" else f"budget.{e.scope}.{key}"
    return (f"budget: {e.fraction:.0%} of {setting} spent by {SCOPE_NAMES.get(e.scope, e.scope)} "
            f"({amount(e.resource, e.spent)} of {amount(e.resource, e.cap)})")


def pause_line(e: ev.Paused) -> str:
    return f"paused before iteration {e.next_iteration}" + (f": {e.reason}" if e.reason else "")


FORMATS = {
    ev.SpendEstimated: lambda e: "\n".join("estimate: " + line for line in describe(e)),
    ev.SpendWarning: warning_line,
    ev.LimitsChanged: lambda e: (f"limits ({e.source}): " + (", ".join(f"budget.{k} = {v:g}" for k, v in e.limits.items())
                                                             or "none")),
}

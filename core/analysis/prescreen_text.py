"""A mechanism's pre-screen in one line, for the research pane and the approval screen.

The paired effect on the final best with its CI and p, the side effects it had in the bench
(vetoes, modifications, rejections and crashes beside the same seeds' without it) and what the
gate made of it. The name and the reason come from a model or a file: made safe here.
"""
from __future__ import annotations

from core.record import events as ev
from core.record.safe_text import safe_line
from core.record.state import RunState

SIDE = ("vetoed", "modified", "overrode", "rejected", "crashes", "deactivated")


def side_effects_text(e: ev.MechanismPrescreened) -> str:
    """"vetoed 40, modified 3, rejected 2 (1 without), crashes 0 (0 without)": what it did in the bench."""
    parts = []
    for key in SIDE:
        n = e.side_effects.get(key, 0)
        if key in ("rejected", "crashes"):
            parts.append(f"{key} {n} ({e.baseline_side_effects.get(key, 0)} without)")
        elif n or key in ("vetoed", "modified"):
            parts.append(f"{key} {n}")
    return ", ".join(parts)


def gate_text(e: ev.MechanismPrescreened) -> str:
    """What the pre-screen decided: the gate's verdict, or that it only reported."""
    if e.verdict == "skipped":
        return "not screened"
    if e.mode != "gate":
        return f"{e.verdict} (report only: activation not gated)"
    return {"passed": "gate: passed", "harmful": "gate: REFUSED (harmful)",
            "failed": "gate: REFUSED (the bench could not measure it)"}[e.verdict]


def prescreen_line(e: ev.MechanismPrescreened) -> str:
    """The finished pre-screen in one line (see the module docstring)."""
    head = f"pre-screen {e.repeats}×{e.iterations} on the {e.workload or 'surrogate'}: {gate_text(e)}"
    if e.effect is None or e.ci_low is None or e.ci_high is None:
        return safe_line(f"{head} · {e.reason}", 400)
    p = f", p {e.p_value:.2g}" if e.p_value is not None else ""
    return safe_line(f"{head} · final best {e.effect:+.4f} with it (95% CI {e.ci_low:+.4f} to {e.ci_high:+.4f}"
                     f"{p}; + is worse) · {side_effects_text(e)}", 400)


def research_prescreen_line(state: RunState, research_id: str) -> str | None:
    """The research's pre-screen as it stands (running, or its result), or None when it has none."""
    done = state.prescreens.get(research_id)
    if done is not None:
        return prescreen_line(done)
    running = state.prescreening.get(research_id)
    if running is not None:
        return safe_line(f"pre-screen {running.repeats}×{running.iterations} on the surrogate "
                         f"({running.mode}): running…", 400)
    return None

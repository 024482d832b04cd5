"""A run's spend before it starts: training device-hours and LLM calls, tokens and dollars.

``bilevel run CONFIG --estimate`` prints it and exits; every run records it (SpendEstimated)
at its start, for the iterations still to run. The figures are upper bounds where a bound is
known and say which parts are guesses:

- device-hours: training runs (the baseline, the iterations, ``acceptance.calibrate`` runs and
  the audit's ``audit.share`` of them) × ``budget.time_s`` × devices per run; with each run's
  start-up allowance (``grace_s``) as the maximum; wall time spreads the runs over the slots.
- LLM calls: one a Level 1 iteration, one a Level 1.5 cycle, four rounds a Level 2 session
  (re-asks and repairs come on top); tokens: each prompt at its budget (the history's
  ``search.history_tokens`` plus the fixed parts), each reply at its limit; dollars: those
  tokens at the model's price (core/record/pricing.py).
"""
from __future__ import annotations

from core.levels.budget import prompt_budget, reply_tokens
from core.record import events as ev
from core.record.config import Config, spend_limits
from core.record.pricing import price_of, unknown_price_note

# What a prompt holds besides the history: instructions, the parameter table, the guidance (measured
# on the bundled prompts with the reference script, rounded up); Level 2's rounds carry earlier rounds.
FIXED_PROMPT_TOKENS = {"inner": 1500, "strategy": 1500, "research": 6000}
RESEARCH_ROUNDS = 4  # explore, critique, specify, generate


def estimate(cfg: Config, *, slots: int = 1, devices_per_run: int = 1, done: int = 0) -> ev.SpendEstimated:
    """What the run's remaining iterations (after ``done``) are expected to spend."""
    levels = cfg.search.active_levels
    iterations = max(0, cfg.budget.iterations - done)
    search_runs = iterations + (1 if done == 0 else 0)  # the baseline first
    calibration = cfg.acceptance.calibrate if done == 0 else 0
    audit = int(cfg.audit.share * (search_runs + calibration)) if cfg.audit.enabled else 0
    runs = search_runs + calibration + audit
    time_s, grace_s = cfg.budget.time_s, cfg.budget.deadline_grace_s
    calls: dict[str, int] = {}
    if not cfg.offline:
        if cfg.proposer == "llm":
            calls["inner"] = iterations
        cycles = (cfg.budget.iterations // cfg.search.outer_period) - (done // cfg.search.outer_period)
        if "strategy" in levels:
            calls["strategy"] = cycles
        if "research" in levels:
            calls["research"] = RESEARCH_ROUNDS * (cycles // cfg.search.research_period)
    tokens = {level: n * _tokens_per_call(cfg, level) for level, n in calls.items()}
    price = price_of(cfg)
    notes = []
    usd: float | None = 0.0
    if calls and price is None:
        usd = None
        notes.append(unknown_price_note(cfg))
        if cfg.budget.max_usd is not None or any(getattr(cfg.budget, s).max_usd is not None
                                                 for s in ("inner", "strategy", "research")):
            notes.append("a max_usd cap cannot be reached without a price: only the token and GPU-hour caps act")
    elif calls and price is not None:
        usd = sum(price.usd(*_split(cfg, level, n)) for level, n in calls.items())
    if calls:
        notes.append("LLM figures are upper bounds: every prompt at its budget, every reply at its limit; "
                     "re-asks and repairs come on top")
    if audit:
        notes.append(f"includes up to {audit} audit run(s) (audit.share = {cfg.audit.share:g})")
    return ev.SpendEstimated(
        runs=runs, time_s=time_s, slots=max(1, slots), devices_per_run=devices_per_run,
        gpu_hours=runs * time_s * devices_per_run / 3600, gpu_hours_max=runs * (time_s + grace_s) * devices_per_run / 3600,
        wall_hours=runs * time_s / max(1, slots) / 3600, calls=calls, tokens=tokens, usd=usd,
        price=price.source if price is not None else "no price known", limits=spend_limits(cfg), notes=notes)


def _prompt_tokens(cfg: Config, level: str) -> int:
    wanted = cfg.search.history_tokens + FIXED_PROMPT_TOKENS[level]
    budget = prompt_budget(cfg, level)
    return min(wanted, budget) if budget is not None else wanted


def _tokens_per_call(cfg: Config, level: str) -> int:
    return _prompt_tokens(cfg, level) + reply_tokens(cfg, level)


def _split(cfg: Config, level: str, calls: int) -> tuple[int, int]:
    return calls * _prompt_tokens(cfg, level), calls * reply_tokens(cfg, level)

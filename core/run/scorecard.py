"""``bilevel scorecard``: the user's endpoint as a searcher, beside CMA-ES and offline mode, on the surrogate.

One study (kind "scorecard"): the LLM at groups A and C, CMA-ES and offline mode's perturbation,
``repeats`` seeds each, on the calibrated surrogate (baseline/surrogate.py: val_bpb is a response
surface fitted to the reference's H100 log, so a run costs no training, only LLM calls). The LLM
calls' cost is estimated and printed before anything runs; the study's report carries the
scorecard (core/analysis/scorecard.py), and ``bilevel report`` on the study shows it again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.levels.budget import prompt_budget
from core.record import config as config_mod
from core.record.config import SURROGATE_BOUNDS, Config

LLM_GROUPS = ("A", "C")
GROUPS = (*LLM_GROUPS, "cmaes", "offline")
SURROGATE_LOCKED = ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MAX_SEQ_LEN"]  # the demo's: shapes stay put
REASK_SHARE = 0.25  # replies re-asked, for the estimate (a small local model does worse: see the result)
REPLY_TOKENS = {"inner": 200, "strategy": 500, "research": 1500}  # a typical answer's length
RESEARCH_CALLS = 5  # explore, critique, specify, generate, one repair


def surrogate_overrides(seed: int, iterations: int) -> dict[str, Any]:
    return {"script.preset": "surrogate", "script.path": "", "data.source": "none", "budget.time_s": 300.0,
            "budget.iterations": iterations, "search.bounds": {n: dict(b) for n, b in SURROGATE_BOUNDS.items()},
            "search.locked": SURROGATE_LOCKED, "search.seed": seed, "run.gpus": "cpu", "search.levels": []}


def scorecard_plan(base: Config, repeats: int, iterations: int | None = None) -> list[Config]:
    """One config per group × repeat, group-major; repeat r has seed search.seed + r in every group."""
    if repeats < 1:
        raise config_mod.ConfigError("--repeats must be at least 1")
    if base.offline:
        raise config_mod.ConfigError("the scorecard measures an LLM endpoint: the config's [endpoint] is offline")
    n = iterations or base.budget.iterations
    plan = []
    for group in GROUPS:
        for r in range(repeats):
            over = {**surrogate_overrides(base.search.seed + r, n), "search.group": group, "search.proposer": "",
                    "name": f"{base.name}-scorecard-{group}-r{r + 1}"}
            if group not in LLM_GROUPS:
                over["endpoint.provider"] = "offline"
            plan.append(config_mod.with_overrides(base, over))
    return plan


@dataclass
class Estimate:
    calls: int
    prompt_tokens: int
    completion_tokens: int
    dollars: float | None

    def text(self) -> str:
        money = ("no price configured: set [endpoint] price_in_per_m and price_out_per_m for dollars"
                 if self.dollars is None else f"about ${self.dollars:.2f}")
        return (f"about {self.calls:,} LLM calls, {self.prompt_tokens:,} prompt and {self.completion_tokens:,} "
                f"completion tokens; {money}")


def _prompt_tokens(cfg: Config, level: str) -> int:
    budget = prompt_budget(cfg, level)
    extra = 2000 if level == "research" else 1500  # the fixed text: system prompt, schema, mechanism interface
    return budget if budget is not None else cfg.search.history_tokens + extra


def estimate(plan: list[Config]) -> Estimate:
    """The LLM calls the plan will make, from its iterations and periods (re-asks at REASK_SHARE)."""
    calls = prompt = completion = 0
    for cfg in plan:
        if cfg.offline:
            continue
        n, levels = cfg.budget.iterations, cfg.search.active_levels
        counts = {"inner": n, "strategy": n // cfg.search.outer_period if "strategy" in levels else 0,
                  "research": (n // (cfg.search.outer_period * cfg.search.research_period) * RESEARCH_CALLS
                               if "research" in levels else 0)}
        for level, k in counts.items():
            k = round(k * (1 + REASK_SHARE))
            calls += k
            prompt += k * _prompt_tokens(cfg, level)
            completion += k * REPLY_TOKENS[level]
        calls += 1  # the check before the baseline
    e = plan[0].endpoint
    dollars = (None if e.price_in_per_m is None and e.price_out_per_m is None
               else prompt / 1e6 * (e.price_in_per_m or 0.0) + completion / 1e6 * (e.price_out_per_m or 0.0))
    return Estimate(calls, prompt, completion, dollars)

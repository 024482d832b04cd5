"""The scorecard: is this endpoint's LLM a better searcher than CMA-ES here, and at what cost?

Read from a scorecard study's sessions (``bilevel scorecard`` plans it: the LLM at groups A and C
beside CMA-ES and offline mode's perturbation, on the surrogate), per group: the share of each
level's replies that were usable (Level 1 also on the first attempt), the re-asks, the tokens and
dollars, the keep and crash rates, Δ with its CI, and Δ against CMA-ES with a bootstrap CI of the
difference of means (negative: the group improved more than CMA-ES did).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from core.analysis.ablation import GroupStats, Report, SessionData
from core.analysis.stats import Interval, bootstrap_diff_ci
from core.record import events as ev
from core.record.session import SessionReader

BASELINE_GROUP = "cmaes"


@dataclass
class Replies:
    """One level's LLM replies over a group's repeats."""

    replies: int = 0
    rejected: int = 0  # unparseable, invalid or echoed: each re-asked (or the round gave up)

    @property
    def valid_share(self) -> float | None:
        return (self.replies - self.rejected) / self.replies if self.replies else None


@dataclass
class ScoreRow:
    group: str
    repeats: int
    levels: dict[str, Replies] = field(default_factory=dict)
    first_try: tuple[int, int] = (0, 0)  # Level 1 proposals valid on the first attempt, proposals asked
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float | None = None
    kept: int = 0
    crashed: int = 0
    trials: int = 0  # iterations that reached the acceptance rule or crashed
    generated: int = 0  # mechanisms a model wrote that were activated
    delta: float | None = None
    delta_ci: Interval | None = None
    vs_baseline: float | None = None  # mean Δ − CMA-ES's mean Δ
    vs_baseline_ci: Interval | None = None

    @property
    def reasks(self) -> int:
        return sum(r.rejected for r in self.levels.values())

    @property
    def keep_rate(self) -> float | None:
        return self.kept / self.trials if self.trials else None

    @property
    def crash_rate(self) -> float | None:
        return self.crashed / self.trials if self.trials else None


def _session_counts(s: SessionData, row: ScoreRow) -> None:
    purposes: dict[str, str] = {}
    asked: set[int] = set()  # iterations an LLM proposed for
    first: set[int] = set()  # those whose first reply was usable
    rejected_l1: set[int] = set()
    l1_rejections = 0
    llm_replies = 0
    for e in SessionReader(s.path).events():
        if isinstance(e, ev.LLMRequest):
            purposes[e.call_id] = e.purpose
        elif isinstance(e, ev.LLMResponse) and e.ok and purposes.get(e.call_id) != "endpoint_check":
            row.levels.setdefault(e.level, Replies()).replies += 1
            llm_replies += e.level == "inner"
            row.prompt_tokens += e.prompt_tokens
            row.completion_tokens += e.completion_tokens
        elif isinstance(e, ev.ProposalRejected) and not e.mechanism and e.kind not in ("vetoed", "llm_error"):
            rejected_l1.add(e.iteration)
            l1_rejections += 1
        elif isinstance(e, ev.ReplyRejected):
            row.levels.setdefault(e.level, Replies()).rejected += 1
        elif isinstance(e, ev.ProposalMade) and e.source == "llm":
            asked.add(e.iteration)
            if e.attempt == 1:
                first.add(e.iteration)
        elif isinstance(e, ev.MechanismActivated) and e.origin == "generated":
            row.generated += 1
    if llm_replies:  # a classical sampler's or offline mode's refused proposals are no LLM replies
        row.levels.setdefault("inner", Replies()).rejected += l1_rejections
        asked |= rejected_l1
    row.first_try = (row.first_try[0] + len(first), row.first_try[1] + len(asked))
    for r in s.proposals:
        if r.decision in ("keep", "discard", "crash"):
            row.trials += 1
            row.kept += r.decision == "keep"
            row.crashed += r.decision == "crash"


def scorecard_rows(report: Report, *, random_state: int = 0) -> list[ScoreRow]:
    baseline: GroupStats | None = next((g for g in report.groups if g.group == BASELINE_GROUP), None)
    rows = []
    for g in report.groups:
        row = ScoreRow(g.group, len(g.sessions), delta=g.summary.mean, delta_ci=g.ci)
        for s in g.sessions:
            _session_counts(s, row)
        row.dollars = _group_dollars(g)
        if baseline is not None and g is not baseline and g.deltas and baseline.deltas:
            row.vs_baseline = (g.summary.mean or 0.0) - (baseline.summary.mean or 0.0)
            row.vs_baseline_ci = bootstrap_diff_ci(g.deltas, baseline.deltas, random_state=random_state)
        rows.append(row)
    return rows


def _group_dollars(g: GroupStats) -> float | None:
    values = [s.total_dollars for s in g.sessions]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


# --- rendering ---------------------------------------------------------------------------------

SCORE_HEADER = ["group", "n", "valid L1", "L1 1st try", "valid L1.5", "valid L2", "re-asks", "tokens", "$",
                "keep rate", "crash rate", "mechanisms made", "Δ mean [95 % CI]", "Δ vs cmaes [95 % CI]"]


def _share(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"


def _interval(mean: float | None, ci: Interval | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:+.4f}" + (f" [{ci.low:+.4f}, {ci.high:+.4f}]" if ci is not None else "")


def score_cells(rows: Sequence[ScoreRow]) -> list[list[str]]:
    out = []
    for r in rows:
        asked = r.first_try[1]
        out.append([r.group, str(r.repeats), _share(r.levels.get("inner", Replies()).valid_share),
                    _share(r.first_try[0] / asked if asked else None),
                    _share(r.levels.get("strategy", Replies()).valid_share),
                    _share(r.levels.get("research", Replies()).valid_share), str(r.reasks),
                    f"{r.prompt_tokens + r.completion_tokens:,}",
                    "—" if r.dollars is None else f"{r.dollars:.4f}", _share(r.keep_rate), _share(r.crash_rate),
                    str(r.generated), _interval(r.delta, r.delta_ci),
                    "(baseline)" if r.group == BASELINE_GROUP else _interval(r.vs_baseline, r.vs_baseline_ci)])
    return out


SCORE_NOTE = ("*valid*: the share of a level's replies that could be used (the rest were re-asked); *L1 1st try*: "
              "Level 1 proposals usable on the first attempt; tokens and $ summed over the repeats (— where no "
              "price is configured); *keep/crash rate*: over the trials; *Δ vs cmaes*: the group's mean Δ minus "
              "CMA-ES's, negative when the group improved more, with a bootstrap 95 % CI of the difference. "
              "On the SURROGATE workload: a screening of the searcher, not a measurement of training.")

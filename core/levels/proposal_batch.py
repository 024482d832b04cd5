"""Level 1 over parallel trials: k proposals in one call, told what is running, never a repeat.

When k slots are free the proposer is asked once for k experiments. Its prompt lists every
trial in flight ("running, result unknown — do not repeat; prefer complementary
directions"). Each proposal is checked like a single one (validation, the mechanisms'
review) and then against every trial already run, running, queued or accepted earlier in
the same batch: an exact repeat, or a near one (the same parameters at values within
``NEAR_REL`` relative of each other, or equal once coerced), is rejected with kind
"repeat" and asked again, together with the other rejected ones, in one re-ask. Every
ProposalMade records which results (finished iterations) and which running trials the
proposer saw. Offline, classical and plugin proposers propose k one by one under the same checks
(core/levels/proposer.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from core.record import events as ev
from core.record.change import Change, CodeEdit, params_change
from core.services.llm import extract_json
from core.services.script import TrainScript
from core.levels.trace import fmt_value
from .proposal import Proposal, Rejection, check_proposal
from .reply_schemas import changes_of, edits_of

if TYPE_CHECKING:
    from core.levels.inner import InnerLoop

NEAR_REL = 0.01  # numbers within 1 % of each other count as the same experiment


@dataclass(frozen=True)
class Known:
    """A trial the proposer must not repeat: one running (or queued), or one with a result."""

    iteration: int
    values: Mapping[str, Any]  # the full parameter values it runs
    changes: Change
    hypothesis: str = ""
    running: bool = True


def same_value(a: Any, b: Any, rel: float = NEAR_REL) -> bool:
    """Equal, or numbers (elementwise for tuples) within ``rel`` of each other."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y, rel) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, numbers) and isinstance(b, numbers)):
        return a == b
    if a == b:
        return True
    return abs(a - b) <= rel * max(abs(a), abs(b))


def near_duplicate(values: Mapping[str, Any], known: Iterable[Known]) -> Known | None:
    """The first known trial whose every parameter value is the same as (or within 1 % of) ``values``."""
    for k in known:
        if k.values and set(k.values) == set(values) and all(same_value(values[n], k.values[n]) for n in values):
            return k
    return None


def parse_proposals(raw: str) -> list[tuple[Change, str]]:
    """``{"proposals": [{"changes": …, "hypothesis": …}, …]}`` (a single proposal object counts as one)."""
    if not raw.strip():
        raise ValueError("the reply was empty")
    data = extract_json(raw)
    items = data.get("proposals", [data] if "changes" in data else None)
    if not isinstance(items, list) or not items:
        raise ValueError('expected a JSON object {"proposals": [{"changes": {...}, "hypothesis": "..."}, ...]}')
    out = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or "changes" not in item:
            raise ValueError(f'proposal {i} is not an object with "changes" (a list of {{"name", "value"}} items)')
        try:
            changes = changes_of(item["changes"])
            edits = edits_of(item.get("edits"))
        except ValueError as exc:
            raise ValueError(f"proposal {i}: {exc}") from None
        change: Change = CodeEdit(params=changes, edits=edits) if edits else params_change(changes)
        out.append((change, str(item.get("hypothesis", "")).strip()))
    return out


def running_text(known: Iterable[Known]) -> str:
    lines = [f"- #{k.iteration}: " + (", ".join(f"{n} = {fmt_value(v)}" for n, v in k.changes.params.items()) or "(no change)")
             + (f" — {k.hypothesis}" if k.hypothesis else "") for k in known if k.running]
    return "\n".join(lines) or "(none)"


class BatchProposer:
    """Makes the proposals for a set of iterations at once, for the scheduler to put on free slots."""

    def __init__(self, inner: "InnerLoop") -> None:
        self.inner = inner
        self.ctx = inner.ctx

    def known(self, running: Iterable[Known]) -> list[Known]:
        """Every trial a proposal must not repeat: those running or queued, then every result."""
        done = [Known(r.iteration, r.values, r.changes, r.hypothesis, running=False)
                for r in self.ctx.state.records if r.values]
        return [*running, *done]

    async def propose(self, numbers: list[int], running: list[Known],
                      best: TrainScript) -> dict[int, "Proposal | str"]:
        """A proposal (or, after the re-asks, the last reason none was usable) for each iteration in ``numbers``."""
        ctx = self.ctx
        values = best.values()
        schema = ctx.current_schema(values)
        saw_results = [r.iteration for r in ctx.state.records]
        saw_running = sorted(k.iteration for k in running)
        known = self.known(running)
        out: dict[int, Proposal | str] = {}
        errors: dict[int, str] = {}
        chat = await self.inner.proposer.open(self.inner, numbers, best, running)
        for attempt in range(1, ctx.cfg.search.max_reasks + 2):
            want = [n for n in numbers if n not in out]
            if not want:
                break
            frozen = set(ctx.state.frozen)
            reply = await chat.ask(want, attempt, schema, values, frozen)
            raw, items = reply.raw, reply.items
            if reply.kind:
                for n in want:
                    errors[n] = reply.reason
                    ctx.emit(ev.ProposalRejected(iteration=n, attempt=attempt, kind=reply.kind, reason=reply.reason,
                                                 raw=raw[:2000]))
                if reply.feedback:
                    chat.reask(raw, [reply.feedback], len(want))
                continue
            feedback = []
            for i, n in enumerate(want):
                if i >= len(items):
                    errors[n] = f"proposal {i + 1} of {len(want)} was missing"
                    feedback.append(errors[n])
                    continue
                changes, hypothesis = items[i]
                ctx.emit(ev.ProposalMade(iteration=n, attempt=attempt, changes=changes, hypothesis=hypothesis,
                                         source=self.inner._source, saw_results=saw_results, saw_running=saw_running))
                problem = await self._check(n, attempt, changes, hypothesis, schema, frozen, best, known)
                if isinstance(problem, str):
                    errors[n] = problem
                    feedback.append(f"proposal {i + 1} ({changes.params}): {problem}")
                    continue
                out[n] = problem
                assert problem.candidate is not None
                known.insert(0, Known(n, problem.candidate.values(), problem.changes, hypothesis))
            if feedback:
                chat.reask(raw, feedback, len(feedback))
        return {n: out.get(n) or errors.get(n) or "no proposal" for n in numbers}

    async def _check(self, n: int, attempt: int, changes: Change, hypothesis: str,
                     schema: dict, frozen: set[str], best: TrainScript, known: list[Known]) -> "Proposal | str":
        """The usable proposal, or why not (recorded as a ProposalRejected, or a mechanism's veto)."""
        ctx = self.ctx
        proposal = await check_proposal(ctx, n, attempt, changes, hypothesis, schema, frozen, self.inner._source,
                                        self.inner.validate)
        if isinstance(proposal, Rejection):
            return proposal.reason
        if proposal.candidate is None:  # a code edit's is written in by check_proposal
            proposal.candidate = best.apply(proposal.changes.params)
        same = near_duplicate(proposal.candidate.values(), known)
        if same is not None:
            what = "running, result unknown" if same.running else "already run"
            reason = f"a repeat of iteration #{same.iteration} ({what}): propose something not yet tried"
            ctx.emit(ev.ProposalRejected(iteration=n, attempt=attempt, kind="repeat", reason=reason,
                                         errors=[reason], changes=proposal.changes))
            return reason
        return proposal

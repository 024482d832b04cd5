"""A Level 1 proposal, and the check and the re-ask every proposal goes through.

One proposal at a time (core/levels/inner.py) and k at once (core/levels/proposal_batch.py)
check a proposal the same way (the schema's validation, then the mechanisms' review) and
feed what was wrong back to the LLM the same way (its reply, then a re-ask listing each
problem). Only their repeat rules differ, and stay with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import Any, Callable

from core.record import events as ev
from core.record import registry
from core.record.change import Change, ParamChange, Params, with_params
from core.levels.context import RunContext
from core.services.schema import validate_changes
from core.services.script import ParamSpec, ProposalError, TrainScript
from . import prompts


@dataclass
class Proposal:
    changes: Change
    hypothesis: str
    source: str
    attempt: int
    candidate: TrainScript | None = None  # the best script with the changes written in, once computed


@dataclass(frozen=True)
class Rejection:
    """Why a proposal cannot be used: ``reason`` for the record, ``problems`` for the model, one per line."""

    reason: str
    problems: list[str]


Validate = Callable[[Params, str, dict[str, ParamSpec], set[str]], Params]


async def check_proposal(ctx: RunContext, n: int, attempt: int, changes: Change, hypothesis: str,
                         schema: dict[str, ParamSpec], frozen: set[str], source: str,
                         validate: Validate) -> Proposal | Rejection:
    """The proposal with its values coerced, or why not (an invalid one is recorded as a ProposalRejected;
    a mechanism's veto is recorded by the mechanism host). ``validate`` is the loop's whole check of a
    reply (the schema's rules, the number of changes, a hypothesis of the model's own)."""
    try:
        if not isinstance(changes, ParamChange):  # code edits wait for search.scope = "code" (not built yet)
            raise ProposalError([f"a {type(changes).__name__} cannot be applied: only parameter changes are searched"])
        coerced = with_params(changes, validate(changes.params, hypothesis, schema, frozen))
    except ProposalError as exc:
        reason = "; ".join(exc.errors)
        ctx.emit(ev.ProposalRejected(iteration=n, attempt=attempt, kind="invalid", reason=reason,
                                     errors=list(exc.errors), changes=changes))
        return Rejection(reason, list(exc.errors))
    proposal = Proposal(coerced, hypothesis, source, attempt)
    veto = await ctx.mechanisms.review(
        ctx.state, proposal,
        lambda c: validate_changes(c, schema, ctx.state.frozen, max_changes=change_limit(ctx.cfg)), iteration=n)
    if veto is not None:  # the reason goes back to the proposer
        return Rejection(veto, [veto])
    return proposal


def change_limit(cfg: Any) -> int | None:
    """The most changes one proposal may make: search.max_changes, or None for a proposer of whole points."""
    return None if registry.entry("proposer", cfg.proposer).whole_points else cfg.search.max_changes


def reask(messages: list[dict[str, str]], raw: str, problems: list[str], template: str, **fields: Any) -> None:
    """Continue the conversation: the model's reply, then ``template`` listing the problems with it."""
    if not messages:  # an algorithm proposed (offline, classical): there is no conversation to continue
        return
    messages.append({"role": "assistant", "content": raw})
    messages.append({"role": "user", "content": Template(prompts.load(template)).substitute(
        errors="\n".join(f"- {p}" for p in problems), **fields)})

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
from core.record.change import Change, CodeEdit, Params, with_params
from core.levels.context import RunContext
from core.services.code_edit import apply_edits
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
    reply (the schema's rules, the number of changes, a hypothesis of the model's own). A code edit
    (``search.scope = "code"``) is written into the best script here: a block that matches nothing or
    more than once, touches the protocol, breaks the parse or imports what is missing is refused."""
    best_text = ""
    try:
        if isinstance(changes, CodeEdit):
            if ctx.cfg.search.scope != "code":
                raise ProposalError(['code edits are searched only with search.scope = "code"; '
                                     "propose parameter changes"])
            best_text = ctx.read_artifact(ctx.state.best_script)
            # constants beside the edits are optional: validate them only when there are some
            params = validate(changes.params, hypothesis, schema, frozen) if changes.params else {}
            if not changes.edits:
                raise ProposalError(["a code proposal needs at least one edit block"])
            apply_edits(best_text, changes.edits, max_edits=ctx.cfg.search.max_edits)
            coerced: Change = with_params(changes, params)
        else:
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
    if isinstance(proposal.changes, CodeEdit):  # after the review: a mechanism may have changed the constants
        proposal.candidate = candidate_script(best_text, proposal.changes)
    return proposal


def change_limit(cfg: Any) -> int | None:
    """The most changes one proposal may make: search.max_changes, or None for a proposer of whole points."""
    return None if registry.entry("proposer", cfg.proposer).whole_points else cfg.search.max_changes


def candidate_script(best_text: str, change: Change) -> TrainScript:
    """The best script with ``change`` written in: its edit blocks first, then its constants."""
    text = apply_edits(best_text, change.edits) if isinstance(change, CodeEdit) else best_text
    return TrainScript.parse(text).apply(change.params)


def reask(messages: list[dict[str, str]], raw: str, problems: list[str], template: str, **fields: Any) -> None:
    """Continue the conversation: the model's reply, then ``template`` listing the problems with it."""
    if not messages:  # an algorithm proposed (offline, classical): there is no conversation to continue
        return
    messages.append({"role": "assistant", "content": raw})
    messages.append({"role": "user", "content": Template(prompts.load(template)).substitute(
        errors="\n".join(f"- {p}" for p in problems), **fields)})

"""Level 1's LLM proposer: the prompt, the call, the parse, and the re-ask with the reasons.

One iteration reads ``inner_propose`` and answers one proposal; a batch reads
``inner_propose_many`` (told the trials running) and answers k. A reply that failed,
stopped at the length limit or could not be parsed comes back as a :class:`Reply` with
its kind and reason, which the loop records; the reasons the loop gives back become the
next user message.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from core.levels.budget import reply_tokens
from core.levels.inner import TRUNCATED_FOR_MODEL, for_model, parse_proposal, truncated_reason
from core.levels.proposal import reask
from core.levels.proposal_batch import parse_proposals, running_text
from core.levels.proposer import Reply

if TYPE_CHECKING:
    from core.levels.inner import InnerLoop
    from core.services.script import ParamSpec, TrainScript


class LLMProposer:
    """Asks the endpoint's model; labelled ``llm`` in every event."""

    source = "llm"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed  # the model is not seeded; the argument is every proposer factory's

    async def open(self, loop: InnerLoop, numbers: list[int], best: TrainScript,
                   running: list[Any] | None) -> _Chat:
        if running is None:
            messages = await loop.messages("inner_propose", loop.prompt_fields(best), iteration=numbers[0])
        else:
            fields = {**loop.prompt_fields(best), "running": running_text(running), "n_running": len(running),
                      "k": len(numbers)}
            # one prompt for k iterations: the mechanisms shape it for the first of them
            messages = await loop.messages("inner_propose_many", fields, iteration=numbers[0])
        return _Chat(loop, messages, batch=running is not None)


class _Chat:
    def __init__(self, loop: InnerLoop, messages: list[dict[str, str]], *, batch: bool) -> None:
        self.loop, self.messages, self.batch = loop, messages, batch

    async def ask(self, want: list[int], attempt: int, schema: Mapping[str, ParamSpec], values: Mapping[str, Any],
                  frozen: set[str]) -> Reply:
        reply_schema = self.loop.reply_schema(schema, frozen, len(want) if self.batch else None)
        raw, finish, failure = await self.loop._ask_llm(want[0], attempt, self.messages, reply_schema,
                                                        parse_proposals if self.batch else parse_proposal)
        if failure:
            return Reply(raw=raw, kind="llm_error", reason=failure)
        if finish == "length":  # cut off: whatever JSON it holds is not the whole answer
            if self.batch:
                problem = "the reply was cut off at the length limit"
                return Reply(raw=raw, kind="truncated", reason=problem, feedback=problem)
            return Reply(raw=raw, kind="truncated", reason=truncated_reason(reply_tokens(self.loop.ctx.cfg, "inner")),
                         feedback=TRUNCATED_FOR_MODEL)
        try:
            items = parse_proposals(raw) if self.batch else [parse_proposal(raw)]
        except ValueError as exc:
            problem = f"unparseable reply: {exc}"
            return Reply(raw=raw, kind="unparseable", reason=problem,
                         feedback=problem if self.batch else for_model(str(exc)))
        return Reply(items, raw=raw)

    def reask(self, raw: str, errors: list[str], k: int = 1) -> None:
        template, fields = ("inner_reask_many", {"k": k}) if self.batch else ("inner_reask", {})
        reask(self.messages, raw, errors, template, **fields)

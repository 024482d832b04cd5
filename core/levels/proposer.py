"""What proposes Level 1's changes, behind one interface: the LLM, offline mode's perturbation, a sampler, a plugin.

The inner loop (one iteration) and the batch proposer (k iterations at once) open a
:class:`Conversation` per round, ask it for proposals attempt by attempt, and tell it why
the unusable ones were rejected; what the proposer makes of that (a re-ask message, or
nothing) is its own business. Validation, the mechanisms' review, repeats and every event
stay in the loop, so each proposer is judged by the same rules.

Algorithms that only need "the next point" implement :class:`PointProposer` (the offline
and classical proposers do, and so may a plugin); :class:`Algorithmic` puts one behind the
full interface. Proposers are chosen by name through the registry (core/levels/proposers.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

from core.record.change import Change, Params, as_change
from core.record.events import RejectionKind

if TYPE_CHECKING:
    from core.levels.context import RunContext
    from core.services.script import ParamSpec, TrainScript


@dataclass
class Reply:
    """One attempt's answer: proposals (changes, hypothesis), or why there are none."""

    items: list[tuple[Change, str]] = field(default_factory=list)
    raw: str = ""  # the reply's text, for the rejection event and the re-ask
    kind: RejectionKind | Literal[""] = ""  # why nothing usable came back ("" when items came)
    reason: str = ""  # what the user reads about it
    feedback: str = ""  # what the proposer is told on the re-ask ("": no re-ask, e.g. after an LLM error)


class Conversation(Protocol):
    """One round with a proposer: the proposals for the iterations asked, attempt by attempt."""

    async def ask(self, want: list[int], attempt: int, schema: Mapping[str, ParamSpec], values: Mapping[str, Any],
                  frozen: set[str]) -> Reply: ...

    def reask(self, raw: str, errors: list[str], k: int = 1) -> None:
        """Why the last proposals were unusable: the next ``ask`` should do better."""


class Loop(Protocol):
    """What a proposer reads from the inner loop: the run context and the Level 1 prompt."""

    ctx: RunContext

    def prompt_fields(self, best: TrainScript) -> dict[str, Any]: ...
    async def messages(self, template_name: str, fields: dict[str, Any], *,
                       iteration: int) -> list[dict[str, str]]: ...


@runtime_checkable
class Proposer(Protocol):
    """Level 1's proposer; ``source`` labels its proposals in every event ("llm", "offline", "tpe", ...)."""

    source: str

    async def open(self, loop: Loop, numbers: list[int], best: TrainScript,
                   running: list[Any] | None) -> Conversation:
        """A round for ``numbers``: one iteration when ``running`` is None, else a batch told the trials running
        (``core.levels.proposal_batch.Known``; not imported here, which would close an import cycle)."""
        ...


class PointProposer(Protocol):
    """An algorithm that proposes the next point from the schema, the best values and the history.

    It returns the constants to set as a plain name -> value mapping (plugins too); :class:`Algorithmic`
    makes it the typed change (a ParamChange)."""

    source: str

    def propose(self, schema: Mapping[str, ParamSpec], values: Mapping[str, Any], frozen: set[str], iteration: int,
                attempt: int, history: Sequence[Any] = ()) -> tuple[Params, str]: ...


class Algorithmic:
    """A point proposer behind the Proposer interface: it reads no prompt and hears no re-ask."""

    def __init__(self, point: PointProposer) -> None:
        self.point = point
        self.source = point.source

    async def open(self, loop: Loop, numbers: list[int], best: TrainScript,
                   running: list[Any] | None) -> Conversation:
        ctx = loop.ctx
        # no prompt to shape, but the hook still runs and is counted (once a round, as for the LLM's prompt)
        await ctx.mechanisms.shape_prompt(ctx.state, "", iteration=numbers[0])
        return _Points(self.point, ctx)


class _Points:
    def __init__(self, point: PointProposer, ctx: RunContext) -> None:
        self.point, self.ctx = point, ctx

    async def ask(self, want: list[int], attempt: int, schema: Mapping[str, ParamSpec], values: Mapping[str, Any],
                  frozen: set[str]) -> Reply:
        records = self.ctx.state.records
        points = [self.point.propose(schema, values, frozen, n, attempt, records) for n in want]
        return Reply([(as_change(changes), hypothesis) for changes, hypothesis in points])

    def reask(self, raw: str, errors: list[str], k: int = 1) -> None:
        """Nothing to tell: the next attempt is seeded differently."""

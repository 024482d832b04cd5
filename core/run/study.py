"""Running a study: the members that are not complete, back to back or one per free slot."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from core.record import config as config_mod
from core.record import events as ev
from core.record.session import SessionError, SessionReader
from core.record.study import Member, Study, StudyError
from core.services.executors import SlotPool

if TYPE_CHECKING:
    from core.engine.engine import Engine


@dataclass
class MemberOutcome:
    member: Member
    status: str
    reason: str = ""


class StudyRunner:
    """Runs the members that are not complete: resumes those cut short, starts the missing ones."""

    def __init__(self, study: Study, *, overrides: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None,
                 on_engine: Callable[["Engine", Member], None] | None = None) -> None:
        self.study = study
        self.overrides = dict(overrides or {})
        self.log = log or (lambda m: None)
        self.on_engine = on_engine or (lambda e, m: None)
        self.stopping = False
        self.failed: list[MemberOutcome] = []
        self._live: set["Engine"] = set()

    def request_stop(self, reason: str) -> None:
        """Stop every running member at once (each stays resumable); start no more."""
        self.stopping = True
        for engine in list(self._live):
            engine.request_stop(reason, hard=True)

    def _status(self, member: Member) -> str:
        return self.study.status(member, self.overrides.get("budget.iterations"))

    def pool(self) -> SlotPool:
        gpus = self.study.member_config(self.study.members[0], self.overrides).run.gpus
        return SlotPool.from_config(None if gpus == "cpu" else gpus)

    async def run(self) -> list[MemberOutcome]:
        todo = [m for m in self.study.members if self._status(m) != "completed"]
        done = [MemberOutcome(m, "completed") for m in self.study.members if m not in todo]
        pool = self.pool()
        concurrent = pool.size > 1
        if concurrent:
            self.log(f"study: {len(todo)} member(s) to run, up to {pool.size} at once "
                     f"({', '.join(s.describe() for s in pool.slots)})")
        results = await asyncio.gather(*(self._one(m, pool, concurrent) for m in todo))
        order = {m.session: i for i, m in enumerate(self.study.members)}
        return sorted(done + [r for r in results if r is not None], key=lambda r: order[r.member.session])

    async def _one(self, member: Member, pool: SlotPool, concurrent: bool) -> MemberOutcome | None:
        async with pool.slot() as slot:
            if self.stopping or (self.failed and not concurrent):
                return None
            overrides = dict(self.overrides)
            if concurrent:  # this member trains on this slot's GPU only
                overrides["run.gpus"] = slot.devices or "cpu"
            try:
                engine = self._engine(member, overrides)
            except (StudyError, config_mod.ConfigError) as exc:
                outcome = MemberOutcome(member, "failed", str(exc))
                self.failed.append(outcome)
                return outcome
            self._live.add(engine)
            self.on_engine(engine, member)
            try:
                state = await engine.run()
            finally:
                self._live.discard(engine)
            finished = state.status == "completed" and self._status(member) == "completed"
            outcome = MemberOutcome(member, "completed" if finished else state.status, _last_reason(engine.dir))
            if state.status == "failed":
                self.failed.append(outcome)
            return outcome

    def _engine(self, member: Member, overrides: dict[str, Any]) -> "Engine":
        from core.engine.engine import Engine
        from core.levels.context import FatalRunError

        path = self.study.session_dir(member)
        if self.study.state(member) is None:
            self.study.check_baseline()
            return Engine(self.study.member_config(member, overrides), path, log=self.log)
        try:
            return Engine.resume(path, overrides, log=self.log)
        except (FatalRunError, SessionError) as exc:  # never started, damaged, or held by another engine
            raise StudyError(str(exc)) from exc


def _last_reason(path: Path) -> str:
    last = ""
    for e in SessionReader(path).events():
        if isinstance(e, ev.RunFinished):
            last = e.reason
    return last

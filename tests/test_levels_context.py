"""The levels run on a RunContext alone: no engine, no session folder, no subprocess.

tests/support/run_context.py offers exactly the Protocol's members (plus what the test
reads back), so these tests fail if a level reaches for anything else of the engine.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.engine.context import EngineContext
from core.engine.engine import Engine
from core.levels.context import RunContext
from core.levels.inner import InnerLoop
from core.levels.research import ResearchLevel
from core.levels.strategy import StrategyLevel
from core.record import events as ev
from core.record.state import fold
from tests.conftest import QUADRATIC, fast_config
from tests.support.run_context import FakeRunContext

SCRIPT = QUADRATIC.read_text(encoding="utf-8")
TEST_SIDE = {"events", "prompts", "queued", "artifacts"}  # what the test reads back, never the levels


def _of(events: list[ev.Event], cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def test_the_fake_offers_nothing_beyond_the_protocol() -> None:
    protocol = {n for n in vars(RunContext) if not n.startswith("_")}
    fake = {n for n in dir(FakeRunContext) if not n.startswith("_")} - TEST_SIDE
    assert fake == protocol


async def test_the_engine_hands_the_levels_its_context_with_every_protocol_member(tmp_path: Path) -> None:
    engine = Engine.create(fast_config(tmp_path))
    protocol = {n for n in vars(RunContext) if not n.startswith("_")}
    assert protocol <= set(dir(EngineContext))
    assert engine.inner.ctx is engine.strategy.ctx is engine.research.ctx is engine.context
    engine.writer.close()


async def test_all_three_levels_run_offline_on_a_bare_context(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path, **{"budget.iterations": 4})
    ctx = FakeRunContext(cfg, SCRIPT)
    inner, strategy, research = InnerLoop(ctx), StrategyLevel(ctx), ResearchLevel(ctx)

    await inner.run_baseline()
    for n in (1, 2, 3, 4):
        await inner.run_iteration(n)
    await strategy.run_cycle(1, 4)
    await research.run(1, 4)

    finished = _of(ctx.events, ev.IterationFinished)
    assert [f.iteration for f in finished] == [0, 1, 2, 3, 4]
    assert finished[0].decision == "baseline" and finished[0].val_bpb is not None
    assert all(f.decision in ("keep", "discard", "rejected") for f in finished[1:])
    # each trained iteration names the script it evaluated: a return value of train(), not engine state
    trained = [f for f in finished[1:] if f.decision in ("keep", "discard")]
    assert trained
    for f in trained:
        assert f.script == f"artifacts/iterations/{f.iteration:04d}/train.py"
    assert len(_of(ctx.events, ev.StrategyDecision)) == 1
    assert [r.origin for r in ctx.queued] == ["builtin"]  # Level 2 handed its choice back through the context
    assert {"shape_prompt", "review", "decide", "observe"} <= set(ctx.mechanisms.calls)


async def test_a_crash_log_tail_reaches_the_next_proposal_after_a_resume(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path, **{"endpoint.provider": "openai", "endpoint.base_url": "http://127.0.0.1:9/v1",
                                   "endpoint.model": "m"})
    crash = json.dumps({"changes": {"LR": 5.0}, "hypothesis": "a much larger step size"})
    ctx = FakeRunContext(cfg, SCRIPT, replies=[crash])
    await InnerLoop(ctx).run_baseline()
    await InnerLoop(ctx).run_iteration(1)
    last = _of(ctx.events, ev.IterationFinished)[-1]
    assert last.decision == "crash"
    assert last.error_tail.endswith("RuntimeError: loss exploded (fake crash)")

    # A new process: the state comes from the events alone, the level from a fresh context.
    resumed = FakeRunContext(cfg, SCRIPT, state=fold(ctx.events), artifacts=ctx.artifacts,
                             replies=[json.dumps({"changes": {"LR": 0.03}, "hypothesis": "smaller"})])
    await InnerLoop(resumed).run_iteration(2)
    prompt = resumed.prompts[0][-1]["content"]
    assert "The last run (#1) failed" in prompt
    assert "RuntimeError: loss exploded (fake crash)" in prompt


async def test_no_crash_no_log_quote(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path, **{"endpoint.provider": "openai", "endpoint.base_url": "http://127.0.0.1:9/v1",
                                   "endpoint.model": "m"})
    replies = [json.dumps({"changes": {"LR": lr}, "hypothesis": "smaller"}) for lr in (0.03, 0.025)]
    ctx = FakeRunContext(cfg, SCRIPT, replies=replies)
    await InnerLoop(ctx).run_baseline()
    await InnerLoop(ctx).run_iteration(1)
    assert _of(ctx.events, ev.IterationFinished)[-1].error_tail == ""
    await InnerLoop(ctx).run_iteration(2)
    assert "failed. Excerpt of its log" not in ctx.prompts[1][-1]["content"]

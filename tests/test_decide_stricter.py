"""A mechanism's ``decide`` may make the acceptance rule stricter, never looser.

Through the real engine: a mechanism that keeps every result (built-in style, in-process
through the contract, and generated, in the worker) has each keep of a discarded result
refused and recorded, so the best never ends worse than the baseline; one that discards
every result has its discards honoured.
"""
from __future__ import annotations

import json
import textwrap

import pytest

import mechanisms
from core.engine.acceptance import mechanism_verdict
from core.record import events as ev
from core.record.session import SessionReader
from mechanisms.base import Mechanism
from tests.conftest import fast_config, run_engine
from tests.test_research import Scripted, research_config
from tests.support import ScriptedOpenAI


@pytest.mark.parametrize("decision, verdict, expected", [
    ("keep", None, ("keep", "")),
    ("keep", "keep", ("keep", "")),
    ("keep", "discard", ("discard", "overrode")),
    ("discard", None, ("discard", "")),
    ("discard", "discard", ("discard", "")),
    ("discard", "keep", ("discard", "refused")),
])
def test_a_verdict_may_turn_a_keep_into_a_discard_and_never_the_reverse(decision, verdict, expected) -> None:
    assert mechanism_verdict(decision, verdict) == expected


class KeepEverything(Mechanism):
    """The audit's mechanism: keeps every result, worse ones included."""

    name = "keep_everything"

    def decide(self, state, result, best):
        return "keep"


class DiscardEverything(Mechanism):
    """The strictest mechanism there is: discards every result."""

    name = "discard_everything"

    def decide(self, state, result, best):
        return "discard"


def _logged(engine) -> list[ev.Event]:
    return list(SessionReader(engine.dir).events())


def _assert_best_never_worse(events: list[ev.Event]) -> None:
    finished = [e for e in events if isinstance(e, ev.IterationFinished)]
    baseline = finished[0].val_bpb
    best = baseline
    for e in finished[1:]:
        if e.decision == "keep":  # every keep beat the best it was judged against
            assert e.val_bpb < e.best_before, e
            best = e.val_bpb
    assert best <= baseline


async def test_a_mechanism_that_keeps_every_result_is_refused_and_the_best_stays_at_or_below_the_baseline(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(mechanisms.BUILTINS, "keep_everything", KeepEverything)
    cfg = fast_config(tmp_path, **{"budget.iterations": 8, "search.mechanisms": ["keep_everything"]})
    engine, _ = await run_engine(cfg)
    assert engine.state.status == "completed", engine.state.finished
    events = _logged(engine)  # the log on disk, not only what subscribers saw
    finished = {e.iteration: e for e in events if isinstance(e, ev.IterationFinished) and e.iteration}
    discarded = {n for n, e in finished.items() if e.decision == "discard"}
    assert discarded, "the offline search never produced a worse result: this test would prove nothing"
    refusals = [e for e in events if isinstance(e, ev.MechanismEffect) and e.effect == "refused"]
    assert {e.iteration for e in refusals} == discarded  # each discard the mechanism tried to keep, refused
    for e in refusals:
        assert e.name == "keep_everything" and e.hook == "decide"
        assert "refused" in e.detail and "the acceptance rule" in e.detail
        assert not finished[e.iteration].rule.startswith("overridden")
    assert not [e for e in events if isinstance(e, ev.MechanismEffect) and e.effect == "overrode"]
    _assert_best_never_worse(events)
    state = engine.state
    assert state.best_val_bpb <= state.baseline_val_bpb
    assert state.mechanism_use("keep_everything").effects["refused"] == len(discarded)


async def test_a_mechanism_that_discards_every_result_is_honoured(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(mechanisms.BUILTINS, "discard_everything", DiscardEverything)
    cfg = fast_config(tmp_path, **{"budget.iterations": 6, "search.mechanisms": ["discard_everything"]})
    engine, rec = await run_engine(cfg)
    assert engine.state.status == "completed", engine.state.finished
    finished = [e for e in rec.of(ev.IterationFinished) if e.iteration]
    overrides = [e for e in rec.of(ev.MechanismEffect) if e.effect == "overrode"]
    assert overrides, "the acceptance rule never kept anything: this test would prove nothing"
    assert all(e.detail == "keep -> discard" for e in overrides)
    assert all(e.decision == "discard" for e in finished)
    turned = {e.iteration for e in overrides}
    for e in finished:
        assert e.rule.startswith("overridden by mechanism discard_everything (was keep") == (e.iteration in turned)
    assert engine.state.best_val_bpb == engine.state.baseline_val_bpb
    assert not rec.of(ev.MechanismEffect) or all(e.effect != "refused" for e in rec.of(ev.MechanismEffect))


GENERATED_KEEP_EVERYTHING = textwrap.dedent('''\
    from mechanisms.base import Mechanism


    class GeneratedKeepEverything(Mechanism):
        """Keeps every result, worse ones included."""

        name = "generated_keep_everything"

        def decide(self, state, result, best):
            return "keep"
''')


class WorseEveryTime(Scripted):
    """Proposes learning rates further and further from the optimum, so every result is worse."""

    def __init__(self, generate: list[str]) -> None:
        super().__init__(generate)
        self.proposals = 0

    def __call__(self, req: dict):
        if "ML research assistant" in req["messages"][0]["content"]:
            self.proposals += 1
            return json.dumps({"changes": {"LR": round(0.05 + 0.01 * self.proposals, 3)}, "hypothesis": "higher"})
        return super().__call__(req)


async def test_a_generated_mechanism_in_the_worker_cannot_keep_a_worse_result(tmp_path) -> None:
    with ScriptedOpenAI(responder=WorseEveryTime([GENERATED_KEEP_EVERYTHING])) as server:
        engine, _ = await run_engine(research_config(tmp_path, server, **{"budget.iterations": 6}))
    assert engine.state.status == "completed", engine.state.finished
    events = _logged(engine)
    activated = [e for e in events if isinstance(e, ev.MechanismActivated)]
    assert [a.origin for a in activated] == ["generated"]
    refusals = [e for e in events if isinstance(e, ev.MechanismEffect) and e.effect == "refused"]
    assert refusals and all(e.name == activated[0].name for e in refusals)
    finished = [e for e in events if isinstance(e, ev.IterationFinished) and e.iteration]
    assert all(e.decision == "discard" for e in finished)
    _assert_best_never_worse(events)
    assert engine.state.best_val_bpb == engine.state.baseline_val_bpb

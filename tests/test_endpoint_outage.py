"""An endpoint that fails mid-run pauses the run, never burns it: through the real engine and the
scripted server over real HTTP, each fault after good answers pauses the call that met it (events
in the log, no iteration used up) and the run goes on by itself when the server recovers; stopped
while paused, the run exits non-zero and `resume` completes it. Replies are bounded in bytes."""
from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import pytest

from core.analysis.printer import HeadlessPrinter
from core.engine.context import client_for
from core.engine.engine import Engine
from core.record import events as ev
from core.record.state import fold
from core.run.drive import EXIT_OK, EXIT_UNFINISHED, run_exit_code
from core.services.llm import LLMClient, LLMError
from tests.conftest import Recorder, llm_config
from tests.support import Reply, ScriptedOpenAI

GOOD = 2  # good answers to Level 1 before the fault: iterations 1 and 2
ITERATIONS = 3  # the fault meets iteration 3
RETRIES = 1  # llm_config's endpoint.max_retries: two attempts a call


def proposing(server: ScriptedOpenAI) -> None:
    """Answer every Level 1 request with a new, valid proposal."""
    count = iter(range(1, 1000))
    server.responder = lambda body: json.dumps({"changes": {"LR": round(0.01 * next(count), 4)}, "hypothesis": "h"})


class NoWait:
    """The injected sleep: records each backoff and yields, so no test waits for real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


async def run(cfg, session: Path | None = None, *, on_event=None) -> tuple[Engine, Recorder, NoWait]:
    sleep = NoWait()
    client = client_for(cfg)
    client.sleep = sleep
    engine = Engine.resume(session, llm=client) if session else Engine.create(cfg, llm=client)
    rec = Recorder()
    engine.subscribe(rec)
    if on_event is not None:
        engine.subscribe(lambda e: on_event(engine, e))
    try:
        await engine.run()
    finally:
        await client.aclose()
    return engine, rec, sleep


def request_iteration(rec: Recorder, call_id: str) -> int | None:
    return next(r.iteration for r in rec.of(ev.LLMRequest) if r.call_id == call_id)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# (fault, how many requests get it, what the pause says): two attempts of the call, then failing probes
FAULTS = [("reset", RETRIES + 3, "unreachable"), ("503", RETRIES + 3, "unreachable"),
          ("malformed", RETRIES + 3, "unreachable"), ("endless", RETRIES + 3, "unreachable"),
          ("hang", RETRIES + 2, "unreachable"),
          ("wrong_shape", 3 + 2, "unusable")]  # three in a row (endpoint.unusable_replies) pause, two probes fail


@pytest.mark.parametrize("fault,times,cause", FAULTS, ids=[f[0] for f in FAULTS])
async def test_a_fault_mid_run_pauses_the_call_and_the_run_goes_on_when_the_server_recovers(
        tmp_path, fault, times, cause):
    with ScriptedOpenAI() as server:
        proposing(server)
        server.fail_after(GOOD, fault, times)
        timeout = {"endpoint.timeout_s": 1.0} if fault == "hang" else {}
        cfg = llm_config(tmp_path, server, **{"budget.iterations": ITERATIONS, **timeout})
        engine, rec, sleep = await run(cfg)
    assert server.faults_served == times  # the server did fail, then recovered
    finished = rec.of(ev.IterationFinished)
    assert [f.iteration for f in finished] == [0, 1, 2, 3]
    assert all(f.decision in ("keep", "discard") for f in finished[1:])  # none rejected: no iteration used up
    assert engine.state.status == "completed"
    assert not [r for r in rec.of(ev.ProposalRejected) if r.kind == "llm_error"]
    down, = rec.of(ev.EndpointDown)
    assert down.cause == cause and request_iteration(rec, down.call_id) == ITERATIONS
    probes = [p for p in rec.of(ev.EndpointProbe) if p.call_id == down.call_id]
    assert [p.probe for p in probes] == list(range(len(probes))) and len(probes) >= 2
    up, = rec.of(ev.EndpointUp)
    assert up.call_id == down.call_id and up.probes == len(probes)
    # the fold says the call waits between the two, and nothing waits once it is back
    during = fold(rec.events[:rec.events.index(down) + 1])
    assert during.endpoint_down[down.call_id].cause == cause
    assert engine.state.endpoint_down == {}
    assert all(d <= cfg.endpoint.probe_max_s for d in sleep.delays)
    if cause == "unreachable":  # one budget of retries for the call, then probes of one attempt each
        retries = [r for r in rec.of(ev.LLMRetry) if r.call_id == down.call_id]
        assert len(retries) == RETRIES
    else:
        rejected = [r.kind for r in rec.of(ev.ProposalRejected) if r.iteration == ITERATIONS]
        assert rejected == ["unparseable", "unparseable"]  # re-asked twice; the third in a row paused


async def test_stopped_while_the_endpoint_is_down_exits_unfinished_and_resume_completes_it(tmp_path):
    with ScriptedOpenAI() as server:
        proposing(server)
        server.fail_after(GOOD, "503", 10**9)

        def stop_on_second_probe(engine: Engine, e: ev.Event) -> None:
            if isinstance(e, ev.EndpointProbe) and e.probe == 1:
                engine.request_stop("the user stopped the run")

        cfg = llm_config(tmp_path, server, **{"budget.iterations": ITERATIONS})
        engine, rec, _ = await run(cfg, on_event=stop_on_second_probe)
        assert engine.state.status == "stopped"
        assert [i.iteration for i in rec.of(ev.IterationInterrupted)] == [ITERATIONS]
        assert [f.iteration for f in rec.of(ev.IterationFinished)] == [0, 1, 2]  # the paused one was not used up
        assert len(rec.of(ev.EndpointWaitEnded)) == 1 and engine.state.endpoint_down == {}
        assert run_exit_code(engine.state, ITERATIONS) == EXIT_UNFINISHED

        server.fail_after(0, "503", 0)  # the endpoint is back
        resumed, rec2, _ = await run(cfg, engine.dir)
    assert resumed.state.status == "completed"
    assert [f.iteration for f in rec2.of(ev.IterationFinished)] == [ITERATIONS]
    assert resumed.state.finished is not None and resumed.state.next_iteration == ITERATIONS + 1
    assert run_exit_code(resumed.state, ITERATIONS) == EXIT_OK


async def test_an_endless_line_keeps_the_engines_memory_flat(tmp_path):
    samples: list[int] = []
    with ScriptedOpenAI() as server:
        proposing(server)
        server.fail_after(GOOD, "endless", RETRIES + 3)
        server.on_endless_mb = lambda written: samples.append(rss_bytes())  # at points fixed in bytes, not time
        cfg = llm_config(tmp_path, server, **{"budget.iterations": ITERATIONS})
        before = rss_bytes()
        engine, rec, _ = await run(cfg)
    growth_mb = (max(samples + [rss_bytes()]) - before) / 2**20
    print(f"RSS growth under an endless line: {growth_mb:.1f} MB over {len(samples)} samples")
    assert len(samples) >= RETRIES + 3  # each endless reply was read past its first megabyte
    assert growth_mb < 100
    assert {r.kind for r in rec.of(ev.LLMRetry)} == {"too_large"}
    assert engine.state.status == "completed"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_reply_over_max_reply_bytes_is_cut_and_an_error(stream):
    with ScriptedOpenAI() as server:
        server.enqueue(Reply(content="y " * 20_000))
        async with LLMClient(server.base_url, "test-model", max_retries=0, max_reply_bytes=10_000) as client:
            with pytest.raises(LLMError) as caught:
                await client.chat([{"role": "user", "content": "hi"}], stream=stream)
    assert caught.value.kind == "too_large" and caught.value.retryable
    assert "max_reply_bytes" in str(caught.value)


async def test_client_retries_back_off_through_the_injected_sleep():
    sleep = NoWait()
    with ScriptedOpenAI() as server:
        server.enqueue(Reply(status=503), Reply(status=429, headers={"Retry-After": "7"}), "fine")
        # a real sleep of these backoffs would take minutes: the test would not finish
        async with LLMClient(server.base_url, "test-model", max_retries=4, backoff_base_s=100.0,
                             backoff_max_s=300.0, sleep=sleep) as client:
            result = await client.chat([{"role": "user", "content": "hi"}])
    assert result.content == "fine" and result.attempts == 3
    assert len(sleep.delays) == 2 and 0 <= sleep.delays[0] <= 100.0 and sleep.delays[1] == 7.0


def test_the_headless_printer_says_since_when_the_endpoint_is_down_and_when_it_is_back():
    out = io.StringIO()
    printer = HeadlessPrinter(out=out)
    printer(ev.EndpointDown(call_id="c9", level="inner", cause="unreachable", kind="server", reason="HTTP 503",
                            ts=0.0))
    printer(ev.EndpointProbe(call_id="c9", level="inner", probe=2, kind="server", error="HTTP 503", delay_s=4.0))
    printer(ev.EndpointUp(call_id="c9", level="inner", probes=3, down_s=12.5))
    printer(ev.EndpointWaitEnded(call_id="c9", level="inner", reason="the run stopped"))
    lines = out.getvalue().splitlines()
    assert "endpoint unreachable since" in lines[0] and "HTTP 503" in lines[0]
    assert "probe 2" in lines[1] and "next probe in 4.0s" in lines[1]
    assert "back after 12.5s" in lines[2] and "stopped waiting" in lines[3]


def test_the_app_header_says_the_endpoint_is_down_while_a_call_waits():
    from tui.model import ViewModel

    m = ViewModel()
    m.apply(ev.SessionStarted(session="s"))
    assert m.status == "running"
    m.apply(ev.EndpointDown(call_id="c9", level="research", reason="timeout", ts=1.0))
    assert m.status == "endpoint down"
    m.apply(ev.EndpointUp(call_id="c9", level="research"))
    assert m.status == "running"

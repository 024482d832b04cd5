"""The check before the baseline against the scripted OpenAI-protocol server: the context a server states
(llama.cpp's /props, vLLM's max_model_len) is read, one short call does the rest, and what cannot work
(a context too small, a wrong key) stops the run before any training."""
from __future__ import annotations

import pytest

from core.levels.preflight import PROBE_MAX_TOKENS, needed_context_tokens
from core.record import events as ev
from core.services.endpoint_context import from_models, from_props
from core.services.llm import PROBE_SYSTEM
from tests.conftest import llm_config, run_engine
from tests.support import Reply, ScriptedOpenAI
from tests.test_llm_levels import inner_requests, proposal


def probes(server: ScriptedOpenAI) -> list[dict]:
    return [r for r in server.requests if r["messages"][0]["content"] == PROBE_SYSTEM]


@pytest.mark.parametrize("states", ["props", "models"])
async def test_a_stated_context_takes_one_short_call_whatever_max_tokens_says(tmp_path, states):
    with ScriptedOpenAI(context_tokens=32768, states_context=states) as server:
        server.enqueue(proposal({"LR": 0.03}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 1, "endpoint.max_tokens": 4096, "search.history_tokens": 20000}))
    (check,) = probes(server)
    assert check["max_tokens"] == PROBE_MAX_TOKENS  # endpoint.max_tokens does not raise the check's own limit
    assert len(check["messages"][1]["content"]) < 2000  # not a prompt as long as the longest: seconds on a CPU
    (checked,) = rec.of(ev.EndpointChecked)
    assert checked.context_tokens == 32768 and checked.applied and states in checked.source
    assert engine.cfg.endpoint.context_tokens == 32768 and engine.state.status == "completed"
    assert ("/props" in server.get_paths) and inner_requests(server)


async def test_the_stated_context_sizes_the_levels_replies_and_prompts(tmp_path):
    with ScriptedOpenAI(context_tokens=4096, states_context="props") as server:
        server.enqueue(proposal({"LR": 0.03}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 1, "search.history_tokens": 20000}))
    (level1,) = inner_requests(server)
    assert level1["max_tokens"] == 1024  # a quarter of the 4,096 the server stated, not the default 2,048
    assert sum(len(m["content"]) for m in level1["messages"]) // 3 < 4096 - 1024


async def test_a_stated_context_too_small_stops_the_run_before_any_call_or_training(tmp_path):
    with ScriptedOpenAI(context_tokens=1200, states_context="props") as server:
        engine, rec = await run_engine(llm_config(tmp_path, server))
    assert engine.state.status == "failed"
    assert "the server says 1200 tokens (llama.cpp /props" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted) and not server.requests  # no chat sent at all


async def test_a_configured_context_with_a_silent_server_takes_one_short_call(tmp_path):
    with ScriptedOpenAI() as server:  # states nothing, like a hosted API
        server.enqueue(proposal({"LR": 0.03}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 1, "endpoint.context_tokens": 16384}))
    (check,) = probes(server)
    assert len(check["messages"][1]["content"]) < 2000
    (checked,) = rec.of(ev.EndpointChecked)
    assert checked.source == "configured" and not checked.applied and checked.estimated_tokens > 0
    assert checked.server_tokens == 57  # the scripted usage: the server's count beside ours


async def test_the_server_counting_more_tokens_than_we_estimate_is_noted(tmp_path):
    with ScriptedOpenAI() as server:
        server.enqueue_probe(Reply(content='{"ok": true}', usage={"prompt_tokens": 5000, "completion_tokens": 4,
                                                                 "total_tokens": 5004}))
        server.enqueue(proposal({"LR": 0.03}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 1, "endpoint.context_tokens": 16384}))
    assert "the server counted 5000 prompt tokens" in rec.of(ev.EndpointChecked)[0].note


async def test_a_wrong_key_still_stops_a_run_whose_server_states_its_context(tmp_path):
    with ScriptedOpenAI(context_tokens=32768, states_context="props") as server:
        server.enqueue_probe(Reply(status=401, error_body={"error": {"message": "invalid api key"}}))
        engine, rec = await run_engine(llm_config(tmp_path, server))
    assert engine.state.status == "failed" and "401" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted) and len(server.requests) == 1


async def test_a_resumed_session_keeps_the_context_its_server_stated(tmp_path):
    from core.engine.engine import Engine

    with ScriptedOpenAI(context_tokens=8192, states_context="props") as server:
        server.enqueue(proposal({"LR": 0.03}))
        engine, _ = await run_engine(llm_config(tmp_path, server, **{"budget.iterations": 1}))
        resumed = Engine.resume(engine.dir, overrides={"budget.iterations": 2})
        try:
            assert resumed.cfg.endpoint.context_tokens == 8192  # its prompts keep the budgets they had
        finally:
            resumed.lock.release()


def test_the_context_is_read_where_each_server_states_it():
    assert from_props({"default_generation_settings": {"n_ctx": 8192}}).tokens == 8192
    assert from_props({"n_ctx": 4096}).tokens == 4096  # older llama.cpp builds
    assert from_props({"default_generation_settings": {"n_ctx": 0}}) is None and from_props("html") is None
    vllm = {"data": [{"id": "other", "max_model_len": 1}, {"id": "m", "max_model_len": 32768}]}
    assert from_models(vllm, "m").tokens == 32768 and "vLLM" in from_models(vllm, "m").source
    llama = {"data": [{"id": "x", "meta": {"n_ctx": 8192, "n_ctx_train": 131072}}]}
    assert from_models(llama, "m").tokens == 8192  # one model served, whatever it is called: its slot's context
    assert from_models({"data": [{"id": "m"}]}, "m") is None


def test_research_needs_a_larger_context_than_level1_alone(tmp_path):
    from tests.conftest import fast_config

    alone = needed_context_tokens(fast_config(tmp_path, **{"search.group": "A"}))
    with_research = needed_context_tokens(fast_config(tmp_path, **{"search.group": "C"}))
    assert 1024 < alone < with_research <= 8192  # Level 2 fits an 8k context


def test_doctor_shows_the_stated_context_and_fails_one_too_small(tmp_path, capsys):
    from core.cli import main

    def config(base_url: str) -> str:
        p = tmp_path / "d.toml"
        p.write_text(f'[endpoint]\nprovider = "openai"\nbase_url = "{base_url}"\nmodel = "test-model"\n'
                     '[data]\nsource = "none"\n')
        return str(p)

    with ScriptedOpenAI(context_tokens=8192, states_context="props") as server:
        main(["doctor", config(server.base_url)])
    out = capsys.readouterr().out
    assert "[ok  ] context: 8192 tokens (llama.cpp /props (n_ctx))" in out and "answers a short prompt" in out
    assert all(len(r["messages"][1]["content"]) < 2000 for r in server.requests)
    with ScriptedOpenAI(context_tokens=1100, states_context="models") as server:
        code = main(["doctor", config(server.base_url)])
    out = capsys.readouterr().out
    assert "[FAIL] context: 1100 tokens (vLLM /v1/models (max_model_len))" in out and code == 1

"""Our client, `doctor` and every level against llama.cpp's own `llama-server` (built once from the
pinned sdist by tests/support/build_llama_server.py), running tiny GGUF models the suite writes.

The models (tests/support/tiny_gguf.py) always answer one text. GARBAGE is an unusable Level 1
proposal (a parameter the script does not have) with the right name as its runner-up: only the
``json_schema`` llama-server enforces turns it into a valid proposal. BOTH_LEVELS answers a
proposal that makes the score worse together with a Level 1.5 answer that names nothing, so the
same discarded change comes back until the freeze rule stops it. LONG answers more than the
smallest max_tokens allows. Every other assertion is about
what the real server does with our requests: the schemas it compiles, streaming and usage,
finish_reason, its error statuses, its context limit, its key check.

Skips, with the reason, only when no llama-server binary is there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.levels.reply_schemas import critique_schema, proposal_schema, proposals_schema, strategy_schema
from core.record import events as ev
from core.record import layout
from core.run.doctor import run_checks
from core.services.llm import PROBE_SCHEMA, LLMClient, LLMError, context_exceeded, probe_messages
from core.services.schema import infer_schema
from core.services.script import TrainScript
from tests.conftest import QUADRATIC, llm_config, run_engine
from tests.support.build_llama_server import find_binary
from tests.support.local_server import serve
from tests.support.tiny_gguf import answer_pieces, write_tiny_model

BINARY, WHY_NOT = find_binary()
pytestmark = pytest.mark.skipif(BINARY is None, reason=f"no llama-server binary: {WHY_NOT}")

GARBAGE = ('{"changes": [{"name": "LEARNING_RATE", "value": 0.03}], '
           '"hypothesis": "a lower learning rate converges better"}')
FORCED = GARBAGE.replace("LEARNING_RATE", "LR")  # what the schema leaves the model to write
BOTH_LEVELS = ('{"changes": {"LR": 0.08}, "hypothesis": "a higher rate", "freeze": [], "keep": {}, '
               '"guidance": "try WARMDOWN_RATIO next"}')  # LR 0.08 is worse than the script's 0.04
LONG = ('{"changes": {"LR": 0.03}, "hypothesis": "one two three four five six seven eight nine ten eleven '
        'twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"}')  # more than 16 tokens
N_CTX = 8192
KEY_ENV = "BILEVEL_TEST_LLAMA_SERVER_KEY"
KEY = "llama-server-test-key"
MODEL = "tiny"


def _llama_server(folder: Path, answer: str, n_ctx: int = N_CTX, **model_kw):
    model = write_tiny_model(folder / "tiny.gguf", answer, **model_kw)

    def command(port: int) -> list[str]:
        # one slot, so the context a request gets is n_ctx; chatml, so the prompt ends in a newline
        return [str(BINARY), "-m", str(model), "-a", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "-c", str(n_ctx), "-np", "1", "-t", "1", "--chat-template", "chatml", "--api-key", KEY,
                "--no-webui"]
    return serve(command, folder / "server.log", key=KEY, name="llama-server")


@pytest.fixture(scope="module")
def key_in_env():
    os.environ[KEY_ENV] = KEY
    yield
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def garbage_server(tmp_path_factory: pytest.TempPathFactory, key_in_env):
    with _llama_server(tmp_path_factory.mktemp("llama-garbage"), GARBAGE,
                       second_choices={' "LEARNING_RATE",': ' "LR",'}) as server:
        yield server


@pytest.fixture(scope="module")
def both_levels_server(tmp_path_factory: pytest.TempPathFactory, key_in_env):
    with _llama_server(tmp_path_factory.mktemp("llama-both"), BOTH_LEVELS) as server:
        yield server


@pytest.fixture(scope="module")
def small_context_server(tmp_path_factory: pytest.TempPathFactory, key_in_env):
    with _llama_server(tmp_path_factory.mktemp("llama-small"), GARBAGE, n_ctx=1024) as server:
        yield server


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory, key_in_env):
    with _llama_server(tmp_path_factory.mktemp("llama-long"), LONG) as server:
        yield server


def client_for(server, **kw) -> LLMClient:
    return LLMClient(server.base_url, MODEL, api_key_env=KEY_ENV, temperature=0.0, max_retries=0, timeout_s=60.0,
                     **kw)


def real_config(tmp_path: Path, server, **overrides):
    return llm_config(tmp_path, server, **{"endpoint.model": MODEL, "endpoint.api_key_env": KEY_ENV,
                                           "endpoint.temperature": 0.0, "endpoint.timeout_s": 60.0,
                                           "search.history_tokens": 200, **overrides})


def level1_schema() -> dict:
    return proposal_schema(infer_schema(TrainScript.parse(QUADRATIC.read_text()), locked=["DEPTH"]), frozen=[])


def responses_to(rec, level: str, purpose: str) -> list:
    """The LLMResponse events of one level's calls for one purpose, in order."""
    calls = {r.call_id for r in rec.of(ev.LLMRequest) if r.level == level and r.purpose == purpose}
    return [r for r in rec.of(ev.LLMResponse) if r.call_id in calls]


def requests_of(engine, rec, level: str, purpose: str) -> list[dict]:
    """The requests one level sent for one purpose, in order, as the session keeps them."""
    return [json.loads(layout.read_artifact(engine.dir, r.artifact)) for r in rec.of(ev.LLMRequest)
            if r.level == level and r.purpose == purpose]


# --- the client against the real server -------------------------------------------------------

async def test_a_streamed_reply_arrives_in_pieces_with_its_usage(garbage_server):
    pieces: list[str] = []
    async with client_for(garbage_server) as client:
        result = await client.chat([{"role": "user", "content": "propose a change"}], stream=True,
                                   on_delta=lambda kind, text: pieces.append(text) if kind == "content" else None)
    assert result.content == GARBAGE and "".join(pieces) == GARBAGE
    assert len(pieces) >= len(answer_pieces(GARBAGE))  # it streamed, piece by piece
    assert result.finish_reason == "stop"
    # llama-server honours stream_options.include_usage: the last chunk carries the count
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens >= len(answer_pieces(GARBAGE))


async def test_json_schema_turns_the_models_unusable_answer_into_a_valid_proposal(garbage_server):
    async with client_for(garbage_server) as client:
        unconstrained = await client.chat([{"role": "user", "content": "propose"}], json=True)
        constrained = await client.chat([{"role": "user", "content": "propose"}], json=True, schema=level1_schema())
    assert unconstrained.content == GARBAGE  # any JSON will do: the unknown parameter gets through
    assert client.structured_mode == "json_schema"  # llama-server takes json_schema as it is
    assert constrained.content == FORCED


EVERY_KIND = infer_schema(TrainScript.parse('LR = 0.04\nWINDOW = (128, 0.5)\nUSE_BIAS = True\nACT = "relu"\n'
                                             'DEPTH = 4\nBATCH_SIZE = 2**10\n'), locked=[])
SCHEMAS_WE_SEND = {
    "endpoint check": PROBE_SCHEMA,
    "level 1, every kind of value": proposal_schema(EVERY_KIND, frozen=[]),
    "level 1, parallel trials": proposals_schema(EVERY_KIND, frozen=["ACT"], k=2),
    "level 1.5": strategy_schema(["LR", "DEPTH"], ["ACT"]),
    "level 1.5, nothing to freeze": strategy_schema([], []),
    "critique": critique_schema(["tabu", "bandit"]),
    "critique, no candidates known": critique_schema([]),
}


@pytest.mark.parametrize("schema", SCHEMAS_WE_SEND.values(), ids=SCHEMAS_WE_SEND.keys())
async def test_every_schema_a_level_sends_compiles_on_llama_server(garbage_server, schema):
    # structured = "json_schema": a schema the server could not compile would be an error, not a step down
    async with client_for(garbage_server, structured="json_schema") as client:
        result = await client.chat([{"role": "user", "content": "answer"}], json=True, schema=schema, max_tokens=16)
    assert client.structured_mode == "json_schema" and result.finish_reason in ("stop", "length")


async def test_a_schema_the_server_cannot_compile_falls_back_to_plain_json_object(garbage_server):
    # llama-server takes every schema we send; one with a $ref to nowhere it refuses with a 400
    unresolvable = {"type": "object", "properties": {"changes": {"$ref": "#/$defs/nowhere"}}}
    async with client_for(garbage_server) as client:
        result = await client.chat([{"role": "user", "content": "propose"}], json=True, schema=unresolvable)
    assert result.content == GARBAGE  # answered under plain json_object
    assert client.structured_mode == "json_object" and not client.inline_schema
    assert "refused json_schema" in client.structured_reason and "schema inside json_object" in \
        client.structured_reason


async def test_a_reply_cut_at_max_tokens_says_length(garbage_server):
    async with client_for(garbage_server) as client:
        result = await client.chat([{"role": "user", "content": "propose"}], max_tokens=2)
    assert result.finish_reason == "length"
    assert result.content == "".join(answer_pieces(GARBAGE)[:2])


async def test_a_prompt_longer_than_the_context_is_a_context_exceeded_400_streamed_or_not(garbage_server):
    async with client_for(garbage_server) as client:
        for stream in (False, True):
            with pytest.raises(LLMError) as caught:
                await client.chat(probe_messages(2 * N_CTX), max_tokens=16, stream=stream)
            assert caught.value.status == 400 and context_exceeded(caught.value), (stream, caught.value)


async def test_a_wrong_key_is_a_401_that_names_the_variable(garbage_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    async with client_for(garbage_server) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat([{"role": "user", "content": "hello"}])
    assert caught.value.kind == "auth" and caught.value.status == 401 and KEY_ENV in caught.value.message
    assert "not-the-key" not in caught.value.message


async def test_doctor_makes_the_chat_call_and_shows_json_schema_in_force(tmp_path, garbage_server):
    checks = {c.name: c for c in await run_checks(real_config(tmp_path, garbage_server))}
    assert checks["endpoint"].ok and checks["chat"].ok, checks
    assert "json_schema" in checks["structured"].detail
    assert checks["context"].ok and "8192 tokens (llama.cpp /props" in checks["context"].detail


# --- the engine against the real server -------------------------------------------------------

async def test_level1_through_the_engine_keeps_the_proposal_the_schema_made_valid(tmp_path, garbage_server):
    engine, rec = await run_engine(real_config(tmp_path, garbage_server, **{"budget.iterations": 1}))
    assert engine.state.status == "completed", engine.state.finished
    assert [m.mode for m in rec.of(ev.StructuredOutput)] == ["json_schema"]
    finished = rec.of(ev.IterationFinished)[-1]
    assert finished.iteration == 1 and finished.changes.params == {"LR": 0.03} and finished.decision == "keep"
    (proposed,) = responses_to(rec, "inner", "propose")
    assert proposed.finish_reason == "stop"
    assert proposed.prompt_tokens > 0 and proposed.completion_tokens > 0  # streamed, with its usage: the cost counts it


async def test_a_reply_cut_off_at_length_is_recorded_and_reasked(tmp_path, long_server):
    engine, rec = await run_engine(real_config(tmp_path, long_server, **{
        "budget.iterations": 1, "endpoint.max_tokens": 16, "search.max_reasks": 1}))
    assert [r.finish_reason for r in responses_to(rec, "inner", "propose")] == ["length", "length"]  # ask, re-ask
    assert [r.kind for r in rec.of(ev.ProposalRejected)] == ["truncated", "truncated"]
    reask = requests_of(engine, rec, "inner", "propose")[1]["messages"][-1]["content"]
    assert "cut off" in reask and "max_tokens" not in reask  # the user's hint is not the model's
    assert rec.of(ev.IterationFinished)[-1].decision == "rejected"


async def test_a_context_too_small_stops_the_run_before_the_baseline_trains(tmp_path, small_context_server):
    engine, rec = await run_engine(real_config(tmp_path, small_context_server))
    assert engine.state.status == "failed" and "context window is too small" in engine.state.finished.reason
    assert "the server says 1024 tokens (llama.cpp /props" in engine.state.finished.reason  # read, not probed
    assert not rec.of(ev.TrainingStarted) and not rec.of(ev.LLMRequest)


async def test_the_context_the_server_states_sizes_the_prompts_in_one_short_check(tmp_path, garbage_server):
    # a history budget twice the context: trimmed to what the server's 8,192 tokens hold, not refused
    engine, rec = await run_engine(real_config(tmp_path, garbage_server, **{
        "search.history_tokens": 2 * N_CTX, "budget.iterations": 1, "endpoint.max_tokens": 4096}))
    assert engine.state.status == "completed", engine.state.finished
    (checked,) = rec.of(ev.EndpointChecked)
    assert checked.context_tokens == N_CTX and checked.applied and checked.source == "llama.cpp /props (n_ctx)"
    (check,) = requests_of(engine, rec, "inner", "endpoint_check")
    assert check["max_tokens"] == 16 and len(check["messages"][1]["content"]) < 2000  # short, whatever max_tokens
    # the tiny models' tokenizer has a token per byte: denser than our estimate, and the check says so
    assert checked.server_tokens > checked.estimated_tokens > 0 and "the server counted" in checked.note


async def test_a_wrong_key_stops_the_run_before_the_baseline_trains(tmp_path, garbage_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    engine, rec = await run_engine(real_config(tmp_path, garbage_server))
    assert engine.state.status == "failed" and "401" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted)


async def test_a_level1_answer_to_level15_is_rejected_and_reasked(tmp_path, garbage_server):
    # unconstrained ("off"): the model writes its Level 1 proposal whatever it is asked
    engine, rec = await run_engine(real_config(tmp_path, garbage_server, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 1, "search.max_reasks": 1,
        "endpoint.structured": "off"}))
    assert engine.state.status == "completed", engine.state.finished
    rejected = [r for r in rec.of(ev.ReplyRejected) if r.level == "strategy"]
    assert [r.attempt for r in rejected] == [1, 2] and all("Level 1 proposal" in r.reason for r in rejected)
    asked = requests_of(engine, rec, "strategy", "update")
    assert len(asked) == 2 and "Level 1 proposal" in asked[1]["messages"][-1]["content"]
    decision = rec.of(ev.StrategyDecision)[-1]
    assert decision.attempts == 2 and "no usable reply" in decision.error and not decision.guidance


async def test_the_freeze_rule_freezes_its_candidate_when_the_reply_names_nothing(tmp_path, both_levels_server):
    engine, rec = await run_engine(real_config(tmp_path, both_levels_server, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 2, "search.max_reasks": 2,
        "endpoint.structured": "off"}))
    assert engine.state.status == "completed", engine.state.finished
    assert [f.decision for f in rec.of(ev.IterationFinished)] == ["baseline", "discard", "rejected"]
    assert {r.kind for r in rec.of(ev.ProposalRejected)} == {"repeat"}  # the same discarded change, again
    first, second = rec.of(ev.StrategyDecision)
    assert first.candidates == [] and first.freeze == []
    assert second.candidates == ["LR"] and second.freeze == ["LR"] and not second.error
    assert second.kept == {} and second.guidance == "try WARMDOWN_RATIO next"  # the reply named nothing
    assert [f.name for f in rec.of(ev.ParamFrozen)] == ["LR"] and "LR" in engine.state.frozen

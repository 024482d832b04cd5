"""Our client, `doctor` and a Level 1 round against a real local server: llama-cpp-python's
OpenAI-compatible server (the `llm-local` extra) running a tiny GGUF model the suite writes.

The model (tests/support/tiny_gguf.py) always answers one unusable Level 1 proposal (a parameter
the script does not have), with the right name as its runner-up: only a schema the server
enforces turns it into a valid proposal. Every other assertion is about what a real server does
with our requests: streaming and usage, the response_format it accepts, its error statuses, its
context limit, its key check.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[llm-local]'")

from core.levels.reply_schemas import proposal_schema  # noqa: E402
from core.record import events as ev  # noqa: E402
from core.run.doctor import run_checks  # noqa: E402
from core.services.llm import LLMClient, LLMError, context_exceeded, probe_messages  # noqa: E402
from core.services.schema import infer_schema  # noqa: E402
from core.services.script import TrainScript  # noqa: E402
from tests.conftest import QUADRATIC, llm_config, run_engine  # noqa: E402
from tests.support.local_server import serve  # noqa: E402
from tests.support.tiny_gguf import answer_pieces, write_tiny_model  # noqa: E402

ANSWER = '{"changes": {"LEARNING_RATE": 0.03}, "hypothesis": "a lower learning rate converges better"}'
FORCED = ANSWER.replace("LEARNING_RATE", "LR")  # what the schema leaves the model to write
N_CTX = 8192
KEY_ENV = "BILEVEL_TEST_LOCAL_KEY"
KEY = "local-test-key"
MODEL = "tiny"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """llama_cpp.server on 127.0.0.1 with the tiny model, a key, and a context of N_CTX tokens."""
    folder = tmp_path_factory.mktemp("llama")
    model = write_tiny_model(folder / "tiny.gguf", ANSWER, second_choices={' {"LEARNING_RATE":': ' {"LR":'})

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--chat_format", "chatml",
                "--n_threads", "1", "--api_key", KEY]

    with serve(command, folder / "server.log", key=KEY, name="llama_cpp.server") as server:
        os.environ[KEY_ENV] = KEY
        try:
            yield server
        finally:
            os.environ.pop(KEY_ENV, None)


def client_for(server, **kw) -> LLMClient:
    return LLMClient(server.base_url, MODEL, api_key_env=KEY_ENV, temperature=0.0, max_retries=0, timeout_s=60.0,
                     **kw)


def real_config(tmp_path: Path, server, **overrides):
    return llm_config(tmp_path, server, **{"endpoint.model": MODEL, "endpoint.api_key_env": KEY_ENV,
                                           "endpoint.temperature": 0.0, "endpoint.timeout_s": 60.0,
                                           "search.history_tokens": 200, **overrides})


async def test_a_streamed_reply_arrives_in_pieces_with_its_usage(llama_server):
    pieces: list[str] = []
    async with client_for(llama_server) as client:
        result = await client.chat([{"role": "user", "content": "propose a change"}], stream=True,
                                   on_delta=lambda kind, text: pieces.append(text) if kind == "content" else None)
    assert result.content == ANSWER and "".join(pieces) == ANSWER
    assert len(pieces) >= len(answer_pieces(ANSWER))  # it streamed, piece by piece
    assert result.finish_reason == "stop" and result.model
    # llama-cpp-python 0.3.36 ignores stream_options: a streamed reply carries no usage (the plain one does)


async def test_a_plain_reply_carries_its_usage(llama_server):
    async with client_for(llama_server) as client:
        result = await client.chat([{"role": "user", "content": "propose a change"}], stream=False)
    assert result.content == ANSWER
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens >= len(answer_pieces(ANSWER))


async def test_the_schema_inside_json_object_turns_an_unusable_answer_into_a_valid_proposal(llama_server):
    params = infer_schema(TrainScript.parse(QUADRATIC.read_text()), locked=["DEPTH"])
    async with client_for(llama_server) as client:
        unconstrained = await client.chat([{"role": "user", "content": "propose"}], json=True)
        constrained = await client.chat([{"role": "user", "content": "propose"}], json=True,
                                        schema=proposal_schema(params, frozen=[]))
    assert unconstrained.content == ANSWER  # any JSON will do: the unknown parameter gets through
    # llama-cpp-python knows no json_schema; it reads the schema inside json_object
    assert client.structured_mode == "json_object" and "refused json_schema" in client.structured_reason
    assert constrained.content == FORCED


async def test_a_reply_cut_at_max_tokens_says_length(llama_server):
    async with client_for(llama_server) as client:
        result = await client.chat([{"role": "user", "content": "propose"}], max_tokens=2, stream=False)
    assert result.finish_reason == "length"
    assert result.content == "".join(answer_pieces(ANSWER)[:2])


async def test_a_malformed_request_fails_with_the_servers_words(llama_server):
    async with client_for(llama_server) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat([{"role": "robot", "content": "hello"}])
    # llama-cpp-python validates inside its handler: a 500 that names the field, not a 400
    assert caught.value.status == 500 and "validation error" in caught.value.message


async def test_a_prompt_longer_than_the_context_is_a_context_exceeded_400(llama_server):
    async with client_for(llama_server) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat(probe_messages(2 * N_CTX), max_tokens=16, stream=False)
    assert caught.value.status == 400 and context_exceeded(caught.value)


async def test_a_wrong_key_is_a_401_that_names_the_variable(llama_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    async with client_for(llama_server) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat([{"role": "user", "content": "hello"}])
    assert caught.value.kind == "auth" and caught.value.status == 401 and KEY_ENV in caught.value.message
    assert "not-the-key" not in caught.value.message


async def test_doctor_makes_the_chat_call_and_shows_the_response_format_in_force(tmp_path, llama_server):
    checks = {c.name: c for c in await run_checks(real_config(tmp_path, llama_server))}
    assert checks["endpoint"].ok and "(1 models)" in checks["endpoint"].detail
    assert checks["chat"].ok and checks["model"].ok
    assert "json_object" in checks["structured"].detail and "refused json_schema" in checks["structured"].detail


async def test_doctor_finds_a_context_too_small_for_our_prompts(tmp_path, llama_server):
    checks = await run_checks(real_config(tmp_path, llama_server, **{"search.history_tokens": 2 * N_CTX}))
    chat = next(c for c in checks if c.name == "chat")
    assert not chat.ok and "does not fit the model's context" in chat.detail


async def test_a_level1_round_through_the_engine_keeps_the_real_models_proposal(tmp_path, llama_server):
    engine, rec = await run_engine(real_config(tmp_path, llama_server, **{"budget.iterations": 1}))
    assert engine.state.status == "completed", engine.state.finished
    assert [m.mode for m in rec.of(ev.StructuredOutput)] == ["json_object"]
    finished = rec.of(ev.IterationFinished)[-1]
    assert finished.iteration == 1 and finished.changes.params == {"LR": 0.03} and finished.decision == "keep"
    responses = [r for r in rec.of(ev.LLMResponse) if r.level == "inner"]
    assert responses and all(r.finish_reason for r in responses)


async def test_without_structured_output_the_same_model_is_rejected_with_its_reason(tmp_path, llama_server):
    engine, rec = await run_engine(real_config(tmp_path, llama_server, **{"budget.iterations": 1,
                                                                          "endpoint.structured": "off"}))
    assert rec.of(ev.IterationFinished)[-1].decision == "rejected"
    rejected = rec.of(ev.ProposalRejected)
    assert rejected and all("LEARNING_RATE" in " ".join([r.reason, *r.errors]) for r in rejected)
    assert not rec.of(ev.TrainingStarted)[1:]  # only the baseline trained


async def test_a_context_too_small_stops_the_run_before_the_baseline_trains(tmp_path, llama_server):
    # streamed, llama-cpp-python reports the overflow inside a 200 stream; the check is never streamed
    engine, rec = await run_engine(real_config(tmp_path, llama_server, **{"search.history_tokens": 2 * N_CTX}))
    assert engine.state.status == "failed" and "context window is too small" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted)


async def test_a_wrong_key_stops_the_run_before_the_baseline_trains(tmp_path, llama_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    engine, rec = await run_engine(real_config(tmp_path, llama_server))
    assert engine.state.status == "failed" and "401" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted)


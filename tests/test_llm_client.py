"""The LLM client against a real OpenAI-protocol server on 127.0.0.1.

Every behaviour of core.services.llm is exercised over real sockets through ScriptedOpenAI;
backoff is shrunk to milliseconds so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import socket
import time

import httpx
import pytest

from core.services.llm import (
    ChatResult,
    LLMClient,
    LLMError,
    Usage,
    extract_json,
    parse_retry_after,
    redact,
    split_think,
)
from tests.support import scripted_openai  # noqa: F401  (registers the fixture)
from tests.support.openai_server import Reply, ScriptedOpenAI

HI = [{"role": "user", "content": "hi"}]
KEY = "sk-test-0123456789abcdefSECRET"
USAGE = {"prompt_tokens": 57, "completion_tokens": 21, "total_tokens": 78}


@pytest.fixture
def server(scripted_openai: ScriptedOpenAI) -> ScriptedOpenAI:
    return scripted_openai


def client_for(server: ScriptedOpenAI, **options: object) -> LLMClient:
    settings: dict = {"backoff_base_s": 0.001, "backoff_max_s": 0.01, "max_retries": 2, "timeout_s": 5.0}
    settings.update(options)
    return LLMClient(server.base_url, "test-model", **settings)


async def chat(server: ScriptedOpenAI, *replies: Reply | str, client_options: dict | None = None,
               **chat_options: object) -> ChatResult:
    server.enqueue(*replies)
    async with client_for(server, **(client_options or {})) as client:
        return await client.chat(HI, **chat_options)


async def failure(server: ScriptedOpenAI, *replies: Reply | str, client_options: dict | None = None,
                  **chat_options: object) -> LLMError:
    with pytest.raises(LLMError) as caught:
        await chat(server, *replies, client_options=client_options, **chat_options)
    return caught.value


# -- plain JSON and streaming ----------------------------------------------------------


async def test_plain_json_reply_returns_content_usage_and_finish_reason(server):
    result = await chat(server, "hello there", stream=False)
    assert result.content == "hello there"
    assert result.usage == Usage(**USAGE)
    assert result.finish_reason == "stop"
    assert result.model == "test-model"
    assert result.attempts == 1
    assert server.requests[0]["stream"] is False


async def test_streamed_content_arrives_as_deltas_in_order(server):
    deltas: list[tuple[str, str]] = []
    result = await chat(server, Reply(content="one two three four", chunks=4),
                        on_delta=lambda kind, text: deltas.append((kind, text)))
    assert result.content == "one two three four"
    assert [kind for kind, _ in deltas] == ["content"] * 4
    assert "".join(text for _, text in deltas) == "one two three four"
    assert result.finish_reason == "stop"


async def test_stream_request_sets_stream_and_asks_for_usage(server):
    await chat(server, "ok")
    body = server.requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "test-model"
    assert body["messages"] == HI


@pytest.mark.parametrize("stream", [True, False])
async def test_deepseek_reasoning_content_is_returned_as_reasoning(server, stream):
    deltas: list[tuple[str, str]] = []
    result = await chat(server, Reply(content="answer", reasoning="let me think step by step"), stream=stream,
                        on_delta=lambda kind, text: deltas.append((kind, text)))
    assert result.reasoning == "let me think step by step"
    assert result.content == "answer"
    if stream:
        assert "".join(t for k, t in deltas if k == "reasoning") == "let me think step by step"


@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning_field_is_returned_as_reasoning(server, stream):
    result = await chat(server, Reply(content="answer", reasoning="weighing options", reasoning_field="reasoning"),
                        stream=stream)
    assert (result.reasoning, result.content) == ("weighing options", "answer")


async def test_inline_think_is_moved_to_reasoning_when_streamed(server):
    text = '<think>try lr 0.01</think>\n{"lr": 0.01}'
    deltas: list[tuple[str, str]] = []
    # One character per delta, so the tags arrive split across chunks.
    result = await chat(server, Reply(content=text, chunks=len(text)),
                        on_delta=lambda kind, piece: deltas.append((kind, piece)))
    assert result.reasoning == "try lr 0.01"
    assert result.content == '{"lr": 0.01}'
    streamed_content = "".join(t for k, t in deltas if k == "content")
    assert "<think>" not in streamed_content and "</think>" not in streamed_content
    assert "".join(t for k, t in deltas if k == "reasoning") == "try lr 0.01"


async def test_inline_think_is_moved_to_reasoning_in_plain_json(server):
    result = await chat(server, "<think>hmm</think>final", stream=False)
    assert (result.reasoning, result.content) == ("hmm", "final")


@pytest.mark.parametrize("style", ["final_empty_choices", "on_finish_chunk", "final_null_choices"])
async def test_stream_usage_is_read_wherever_the_server_puts_it(server, style):
    result = await chat(server, Reply(content="ok", usage_style=style))
    assert result.usage == Usage(**USAGE)


@pytest.mark.parametrize("stream", [True, False])
async def test_missing_usage_counts_as_zero(server, stream):
    result = await chat(server, Reply(content="ok", usage=None), stream=stream)
    assert result.usage == Usage()
    assert result.content == "ok"


async def test_keepalive_comments_and_blank_lines_are_ignored(server):
    result = await chat(server, Reply(content="steady as she goes", keepalive=True, delay_s=0.15))
    assert result.content == "steady as she goes"
    assert result.usage == Usage(**USAGE)


async def test_stream_server_ignoring_stream_flag_is_read_as_json():
    # A server that answers stream=true with one JSON body; injected via `transport`.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]})

    async with LLMClient("http://llm.invalid/v1", "m", transport=httpx.MockTransport(handler)) as client:
        result = await client.chat(HI, stream=True)
    assert result.content == "whole"


# -- streams that go wrong -------------------------------------------------------------


async def test_error_inside_stream_that_looks_like_overload_is_retried(server):
    overloaded = Reply(content="half an answer here", stream_error={"message": "Overloaded", "type": "overloaded_error"})
    result = await chat(server, overloaded, "complete answer")
    assert result.content == "complete answer"
    assert result.attempts == 2


async def test_error_inside_stream_with_5xx_code_is_retried(server):
    result = await chat(server, Reply(content="a b c", stream_error={"message": "boom", "code": 502}), "fine")
    assert (result.content, result.attempts) == ("fine", 2)


async def test_error_inside_stream_that_is_not_transient_fails_without_retry(server):
    err = await failure(server, Reply(content="some text", stream_error={
        "message": "content violates policy", "type": "invalid_request_error"}), "never sent")
    assert err.kind == "stream" and not err.retryable
    assert "content violates policy" in err.message
    assert len(server.requests) == 1


async def test_stream_without_done_is_accepted_after_finish_reason(server):
    result = await chat(server, Reply(content="finished anyway", send_done=False))
    assert result.content == "finished anyway"
    assert result.attempts == 1


async def test_stream_without_done_or_finish_reason_is_retried_as_dropped(server):
    result = await chat(server, Reply(content="cut sho", send_done=False, finish_reason=None), "whole reply")
    assert result.content == "whole reply"
    assert result.attempts == 2


async def test_connection_dropped_mid_stream_is_retried(server):
    result = await chat(server, Reply(content="a b c d e f", drop_after_chunks=3), "recovered")
    assert (result.content, result.attempts) == ("recovered", 2)


async def test_connection_dropped_mid_json_body_is_retried(server):
    result = await chat(server, Reply(content="lost", drop_after_chunks=0), "recovered", stream=False)
    assert (result.content, result.attempts) == ("recovered", 2)


async def test_malformed_json_body_is_a_clear_retryable_error(server):
    result = await chat(server, Reply(malformed=True), "recovered", stream=False)
    assert (result.content, result.attempts) == ("recovered", 2)  # a garbled reply is the endpoint's fault
    err = await failure(server, *[Reply(malformed=True)] * 5, stream=False)
    assert err.kind == "malformed" and err.retryable
    assert "not valid JSON" in err.message and "chatcmpl-scripted" in err.message


async def test_malformed_stream_event_is_a_clear_retryable_error(server):
    err = await failure(server, *[Reply(content="x", malformed=True)] * 5)
    assert err.kind == "malformed" and err.retryable
    assert "not JSON" in err.message


async def test_refused_connection_is_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with LLMClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_base_s=0.001) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat(HI)
    assert caught.value.kind == "connection" and caught.value.retryable
    assert caught.value.attempts == 3
    assert f"127.0.0.1:{port}" in caught.value.message


# -- retries and backoff ---------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
async def test_transient_statuses_are_retried(server, status):
    result = await chat(server, Reply(status=status, error_body={"error": {"message": "later"}}), "ok")
    assert (result.content, result.attempts) == ("ok", 2)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried_and_name_status_and_message(server, status):
    err = await failure(server, Reply(status=status, error_body={"error": {"message": "you did it wrong"}}), "no")
    assert not err.retryable
    assert err.status == status
    assert f"HTTP {status}" in err.message and "you did it wrong" in err.message
    assert len(server.requests) == 1


@pytest.mark.parametrize("status, kind", [(400, "bad_request"), (401, "auth"), (403, "auth"), (404, "not_found"),
                                          (429, "rate_limit"), (503, "server")])
async def test_error_kind_follows_status(server, status, kind):
    err = await failure(server, Reply(status=status), client_options={"max_retries": 0})
    assert err.kind == kind


async def test_retry_count_is_bounded_by_max_retries(server):
    server.responder = lambda request: Reply(status=503, error_body={"error": {"message": "down"}})
    err = await failure(server, client_options={"max_retries": 3})
    assert err.kind == "server"
    assert err.attempts == 4
    assert len(server.requests) == 4
    assert "4 attempts" in err.message


async def test_backoff_grows_exponentially_and_is_capped(server):
    server.responder = lambda request: Reply(status=500)
    delays: list[float] = []
    options = {"max_retries": 6, "backoff_base_s": 0.002, "backoff_max_s": 0.016}
    await failure(server, client_options=options, on_retry=lambda attempt, err, delay: delays.append(delay))
    ceilings = [min(0.016, 0.002 * 2 ** i) for i in range(6)]
    assert len(delays) == 6
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings))


def test_backoff_uses_full_jitter():
    client = LLMClient("http://127.0.0.1:9/v1", "m", backoff_base_s=1.0, backoff_max_s=30.0)
    client._rng = random.Random(7)
    samples = [client._backoff_s(3, None) for _ in range(300)]  # ceiling 8 s
    assert all(0.0 <= s <= 8.0 for s in samples)
    assert min(samples) < 1.0 and max(samples) > 7.0  # spread over the whole range, not near the top


async def test_retry_after_seconds_is_honoured(server):
    delays: list[float] = []
    started = time.monotonic()
    result = await chat(server, Reply(status=429, headers={"Retry-After": "0.3"}), "ok",
                        client_options={"backoff_max_s": 5.0}, on_retry=lambda a, e, d: delays.append(d))
    assert result.content == "ok"
    assert delays == [pytest.approx(0.3)]
    assert time.monotonic() - started >= 0.3


async def test_retry_after_is_capped_by_backoff_max(server):
    far = email.utils.formatdate(time.time() + 3600, usegmt=True)
    delays: list[float] = []
    started = time.monotonic()
    await chat(server, Reply(status=503, headers={"Retry-After": far}), "ok",
               client_options={"backoff_max_s": 0.2}, on_retry=lambda a, e, d: delays.append(d))
    assert delays == [pytest.approx(0.2)]
    assert time.monotonic() - started < 2.0


def test_retry_after_http_date_is_parsed():
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- error bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"error": {"message": "bad temperature", "type": "invalid_request_error", "code": None}},
    {"message": "bad temperature"},
    "bad temperature",
    {"detail": "bad temperature"},
    {"detail": [{"loc": ["body", "temperature"], "msg": "bad temperature", "type": "value_error"}]},
    {"error": "bad temperature"},
], ids=["nested", "flat", "plain-string", "fastapi-detail", "fastapi-validation", "error-string"])
async def test_error_body_shapes_yield_the_server_message(server, body):
    err = await failure(server, Reply(status=400, error_body=body))
    assert err.kind == "bad_request"
    assert "bad temperature" in err.message
    assert "HTTP 400" in err.message


async def test_model_not_found_404_says_check_model_id_and_lists_models():
    with ScriptedOpenAI(models=("alpha-7b", "beta-70b")) as server:
        err = await failure(server, Reply(status=404, error_body={
            "error": {"message": "The model `test-model` does not exist", "code": "model_not_found"}}))
    assert err.kind == "not_found" and not err.retryable
    assert "check the model id" in err.message.lower()
    assert "alpha-7b" in err.message and "beta-70b" in err.message


async def test_deepseek_model_not_exist_400_is_not_found(server):
    err = await failure(server, Reply(status=400, error_body={
        "error": {"message": "Model Not Exist", "type": "invalid_request_error", "param": None,
                  "code": "invalid_request_error"}}))
    assert err.kind == "not_found"
    assert "Model Not Exist" in err.message and "check the model id" in err.message.lower()
    assert len(server.requests) == 1


async def test_insufficient_quota_429_is_not_retried(server):
    err = await failure(server, Reply(status=429, error_body={"error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota", "code": "insufficient_quota"}}), "never")
    assert err.kind == "quota" and not err.retryable
    assert len(server.requests) == 1


# -- JSON mode and parameter fallbacks -------------------------------------------------


async def test_json_mode_sends_response_format_only_when_asked(server):
    server.responder = lambda request: "{}"
    async with client_for(server) as client:
        await client.chat(HI, json=True)
        await client.chat(HI)
    async with client_for(server, json_mode=False) as client:
        await client.chat(HI, json=True)
    formats = [body.get("response_format") for body in server.requests]
    assert formats == [{"type": "json_object"}, None, None]


async def test_response_format_rejection_retries_without_it_and_remembers(server):
    server.enqueue(Reply(status=400, error_body={"error": {
        "message": "This response_format type is unavailable now", "type": "invalid_request_error"}}))
    server.responder = lambda request: '{"ok": true}'
    async with client_for(server, max_retries=0) as client:
        first = await client.chat(HI, json=True)
        await client.chat(HI, json=True)
    assert first.attempts == 2 and extract_json(first.content) == {"ok": True}
    assert ["response_format" in body for body in server.requests] == [True, False, False]


async def test_max_tokens_rejection_switches_to_max_completion_tokens_and_remembers(server):
    server.enqueue(Reply(status=400, error_body={"error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
        "param": "max_tokens", "code": "unsupported_parameter"}}))
    server.responder = lambda request: "ok"
    async with client_for(server, max_retries=0, max_tokens=256) as client:
        first = await client.chat(HI)
        await client.chat(HI, max_tokens=64)
    assert first.content == "ok" and first.attempts == 2
    sent = [{k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body} for body in server.requests]
    assert sent == [{"max_tokens": 256}, {"max_completion_tokens": 256}, {"max_completion_tokens": 64}]


# -- timeouts --------------------------------------------------------------------------


async def test_keepalives_do_not_defeat_the_overall_timeout(server):
    started = time.monotonic()
    err = await failure(server, Reply(content="too late", keepalive=True, delay_s=5.0),
                        client_options={"timeout_s": 0.4, "max_retries": 0})
    assert err.kind == "timeout"
    assert time.monotonic() - started < 2.0


async def test_slow_chunks_hit_the_overall_timeout(server):
    err = await failure(server, Reply(content="a b c d e f g h i j", chunk_delay_s=0.1),
                        client_options={"timeout_s": 0.3, "max_retries": 0})
    assert err.kind == "timeout" and err.retryable


async def test_timed_out_attempt_is_retried(server):
    result = await chat(server, Reply(content="slow", delay_s=2.0), "fast", client_options={"timeout_s": 0.3})
    assert (result.content, result.attempts) == ("fast", 2)


async def test_per_call_timeout_overrides_the_client_default(server):
    started = time.monotonic()
    err = await failure(server, Reply(content="slow", delay_s=3.0), client_options={"timeout_s": 60, "max_retries": 0},
                        timeout_s=0.3)
    assert err.kind == "timeout"
    assert time.monotonic() - started < 2.0


# -- API key ---------------------------------------------------------------------------


async def test_api_key_is_read_at_call_time_and_sent_as_bearer(server, monkeypatch):
    monkeypatch.delenv("BILEVEL_TEST_KEY", raising=False)
    async with client_for(server, api_key_env="BILEVEL_TEST_KEY") as client:
        monkeypatch.setenv("BILEVEL_TEST_KEY", KEY)
        server.enqueue("ok")
        await client.chat(HI)
        monkeypatch.setenv("BILEVEL_TEST_KEY", KEY + "-rotated")
        server.enqueue("ok")
        await client.chat(HI)
    assert [h["authorization"] for h in server.request_headers] == [f"Bearer {KEY}", f"Bearer {KEY}-rotated"]


async def test_missing_api_key_env_fails_before_any_request(server, monkeypatch):
    monkeypatch.delenv("BILEVEL_TEST_KEY", raising=False)
    err = await failure(server, "never", client_options={"api_key_env": "BILEVEL_TEST_KEY"})
    assert err.kind == "auth" and not err.retryable
    assert "$BILEVEL_TEST_KEY" in err.message
    assert server.requests == []


async def test_local_server_needs_no_key(server):
    await chat(server, "ok")
    assert "Authorization" not in server.request_headers[0]


def test_recorded_request_headers_ignore_case(server):
    httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": []},
               headers={"Authorization": "Bearer k", "X-Trace": "t1"})
    headers = server.request_headers[0]
    assert headers["Authorization"] == headers["authorization"] == "Bearer k"
    assert "x-trace" in headers and headers.get("X-TRACE") == "t1"


@pytest.mark.parametrize("status", [401, 400, 503])
async def test_api_key_never_appears_in_errors(server, monkeypatch, status):
    monkeypatch.setenv("BILEVEL_TEST_KEY", KEY)
    server.responder = lambda request: Reply(status=status, error_body={"error": {
        "message": f"Incorrect API key provided: {KEY}. Header was Bearer {KEY}"}})
    async with client_for(server, api_key_env="BILEVEL_TEST_KEY") as client:
        with pytest.raises(LLMError) as caught:
            await client.chat(HI)
        client_repr = repr(client)
    err = caught.value
    for text in (str(err), repr(err), err.message, " ".join(map(str, err.args)), client_repr):
        assert KEY not in text
    assert "Incorrect API key provided" in err.message


async def test_api_key_never_appears_in_returned_text(server, monkeypatch):
    monkeypatch.setenv("BILEVEL_TEST_KEY", KEY)
    result = await chat(server, Reply(content=f"your key is {KEY}", reasoning=f"they sent {KEY}"),
                        client_options={"api_key_env": "BILEVEL_TEST_KEY"})
    assert KEY not in result.content and KEY not in result.reasoning and KEY not in repr(result)


async def test_api_key_never_appears_in_connection_errors(monkeypatch):
    monkeypatch.setenv("BILEVEL_TEST_KEY", KEY)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with LLMClient(f"http://127.0.0.1:{port}/v1", "m", api_key_env="BILEVEL_TEST_KEY", max_retries=0) as c:
        with pytest.raises(LLMError) as caught:
            await c.chat(HI)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)


def test_redact_replaces_every_occurrence():
    assert redact(f"a {KEY} b {KEY}", KEY) == "a [REDACTED] b [REDACTED]"
    assert redact("nothing here", KEY) == "nothing here"
    assert redact("unchanged", None) == "unchanged"
    assert redact("unchanged", "") == "unchanged"


# -- usage accounting and models -------------------------------------------------------


async def test_usage_is_summed_per_level(server):
    server.enqueue(Reply(content="a", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
                   Reply(content="b", usage={"prompt_tokens": 1, "completion_tokens": 2}),
                   Reply(content="c", usage={"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}),
                   Reply(content="d", usage=None))
    async with client_for(server) as client:
        await client.chat(HI, level="inner")
        await client.chat(HI, level="inner", stream=False)
        await client.chat(HI, level="strategy")
        await client.chat(HI, level="strategy")
        assert client.usage_by_level == {"inner": Usage(11, 7, 18), "strategy": Usage(100, 50, 150)}
        assert client.total_usage == Usage(111, 57, 168)


async def test_list_models_returns_the_server_ids():
    with ScriptedOpenAI(models=("a", "b", "c")) as server:
        async with client_for(server) as client:
            assert await client.list_models() == ["a", "b", "c"]


async def test_client_works_from_concurrent_tasks(server):
    server.responder = lambda request: Reply(content=request["messages"][0]["content"].upper(), chunk_delay_s=0.01)
    async with client_for(server) as client:
        results = await asyncio.gather(*[client.chat([{"role": "user", "content": f"m{i}"}]) for i in range(8)])
    assert [r.content for r in results] == [f"M{i}" for i in range(8)]


# -- text helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    '{"lr": 0.01, "note": "x"}',
    '<think>maybe {"lr": 1}?</think>\n{"lr": 0.01, "note": "x"}',
    'Here you go:\n```json\n{"lr": 0.01, "note": "x"}\n```\nGood luck!',
    'Sure! The change is {"lr": 0.01, "note": "x"} as requested.',
    '```\n{"lr": 0.01, "note": "x",}\n```',
    'reasoning...</think>{"lr": 0.01, "note": "x"}',
], ids=["bare", "think", "fenced", "prose", "trailing-comma", "lone-close-think"])
def test_extract_json_finds_the_object_however_wrapped(text):
    assert extract_json(text) == {"lr": 0.01, "note": "x"}


def test_extract_json_skips_braces_inside_strings_and_keeps_nesting():
    text = 'Plan: {"hypothesis": "use {curly} } braces", "changes": {"LR": 0.02}} done'
    assert extract_json(text) == {"hypothesis": "use {curly} } braces", "changes": {"LR": 0.02}}


def test_extract_json_accepts_raw_newlines_inside_strings():
    assert extract_json('{"code": "def f():\n    return 1"}') == {"code": "def f():\n    return 1"}


def test_extract_json_reports_truncated_output():
    with pytest.raises(ValueError, match="never closes"):
        extract_json('{"changes": {"lr": 0.1}, "hypothesis": "bigger is')


def test_extract_json_reports_missing_object():
    with pytest.raises(ValueError, match="no JSON object.*begins: I cannot help"):
        extract_json("I cannot help with that.")


def test_extract_json_reports_reasoning_only_reply():
    with pytest.raises(ValueError, match="no content"):
        extract_json("<think>still thinking about {")


def test_split_think_handles_blocks_lone_close_and_unterminated():
    assert split_think("<think>a</think>\n\nb") == ("a", "b")
    assert split_think("a</think>b") == ("a", "b")
    assert split_think("b<think>cut off") == ("cut off", "b")
    assert split_think("no tags at all ") == ("", "no tags at all ")


def test_scripted_server_replies_500_when_nothing_is_scripted():
    with ScriptedOpenAI() as server:
        response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 500
    assert "no scripted reply" in json.dumps(response.json())


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


async def test_a_schema_is_sent_as_json_schema_and_auto_steps_down_on_refusal(server):
    server.refuse_json_schema = True
    server.responder = lambda request: '{"ok": true}'
    async with client_for(server, max_retries=0) as client:
        first = await client.chat(HI, json=True, schema=SCHEMA, schema_name="probe")
        await client.chat(HI, json=True, schema=SCHEMA)
        assert client.structured_mode == "json_object" and "refused json_schema" in client.structured_reason
    sent = [body["response_format"] for body in server.requests]
    assert sent[0] == {"type": "json_schema", "json_schema": {"name": "probe", "strict": False, "schema": SCHEMA}}
    assert sent[1:] == [{"type": "json_object", "schema": SCHEMA}] * 2 and first.attempts == 2


async def test_structured_json_schema_is_not_silently_downgraded(server):
    server.refuse_json_schema = True
    async with client_for(server, max_retries=0, structured="json_schema") as client:
        with pytest.raises(LLMError) as err:
            await client.chat(HI, json=True, schema=SCHEMA)
    assert err.value.kind == "bad_request" and "json_schema" in err.value.message and len(server.requests) == 1


async def test_a_schema_inside_json_object_that_the_endpoint_refuses_leaves_plain_json_object(server):
    server.refuse_json_schema = True
    server.responder = lambda request: (
        Reply(status=400, error_body={"error": {"message": "response_format.schema: extra inputs are not permitted"}})
        if "schema" in request["response_format"] else '{"ok": true}')
    async with client_for(server, max_retries=0) as client:
        result = await client.chat(HI, json=True, schema=SCHEMA)
        await client.chat(HI, json=True, schema=SCHEMA)
        assert client.structured_mode == "json_object" and "schema inside json_object" in client.structured_reason
    sent = [body["response_format"] for body in server.requests]
    assert [f["type"] for f in sent] == ["json_schema", "json_object", "json_object", "json_object"]
    assert "schema" in sent[1] and "schema" not in sent[2] and "schema" not in sent[3]
    assert result.content == '{"ok": true}' and result.attempts == 3


async def test_a_500_validation_error_naming_response_format_steps_down_like_a_400(server):
    said = "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type')}"
    server.responder = lambda request: (Reply(status=500, error_body={"error": {"message": said}})
                                        if request["response_format"]["type"] == "json_schema" else '{"ok": true}')
    async with client_for(server, max_retries=0) as client:
        result = await client.chat(HI, json=True, schema=SCHEMA)
        assert client.structured_mode == "json_object" and "refused json_schema" in client.structured_reason
    assert result.content == '{"ok": true}' and result.attempts == 2


async def test_a_schema_llama_server_cannot_compile_steps_down_like_a_refusal(server):
    said = "JSON schema conversion failed:\nUnresolved $ref #/$defs/nowhere"  # llama-server's 400
    server.responder = lambda request: (
        Reply(status=400, error_body={"error": {"code": 400, "message": said, "type": "invalid_request_error"}})
        if "schema" in request["response_format"] or "json_schema" in request["response_format"] else '{"ok": true}')
    async with client_for(server, max_retries=0) as client:
        result = await client.chat(HI, json=True, schema=SCHEMA)
        assert client.structured_mode == "json_object" and not client.inline_schema
    assert [body["response_format"]["type"] for body in server.requests] == ["json_schema", "json_object", "json_object"]
    assert result.content == '{"ok": true}' and result.attempts == 3

"""OpenAI-compatible chat client for every LLM call the levels make.

One `LLMClient` talks to one endpoint (OpenAI, DeepSeek, OpenRouter, vLLM, Ollama, ...)
over `httpx.AsyncClient`, in plain JSON or SSE streaming. It copes with what real
servers do: reasoning text in ``reasoning_content``, ``reasoning`` or inline
``<think>`` blocks; keep-alive comments; errors inside a 200 stream; streams without
``[DONE]``; usage in any of the places servers put it; dropped connections.

Failures surface as `LLMError` with a `kind` the engine can act on and a message a
user can act on. Transient failures (connection, timeout, 408/409/429/5xx) are retried
with exponential backoff and full jitter, honouring ``Retry-After``. Requests the
server rejects for a parameter it does not support (``response_format``,
``max_tokens``, ``stream_options``, ``temperature``) are retried once without it, and
the client remembers. The API key is read from the environment at call time and never
appears in anything this module raises or returns.

`extract_json`, `split_think` and `redact` are the text helpers callers need around it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import math
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any, AsyncIterator, Callable, Iterator

import httpx

DeltaCallback = Callable[[str, str], None]
RetryCallback = Callable[[int, "LLMError", float], None]


@dataclass(frozen=True)
class Usage:
    """Token counts as the server reports them (zeros when it reports none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: object) -> "Usage":
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    @classmethod
    def from_json(cls, data: object) -> "Usage":
        if not isinstance(data, dict):
            return cls()
        prompt = _as_int(data.get("prompt_tokens"))
        completion = _as_int(data.get("completion_tokens"))
        total = _as_int(data.get("total_tokens")) or prompt + completion
        return cls(prompt, completion, total)


@dataclass(frozen=True)
class ChatResult:
    """One successful chat call."""

    content: str  # the answer, with any inline <think> block removed
    reasoning: str  # reasoning_content / reasoning / inline <think> text
    usage: Usage
    model: str  # as the server names it (falls back to the requested id)
    finish_reason: str | None
    attempts: int  # HTTP requests made, retries and parameter fallbacks included
    duration_s: float


class LLMError(Exception):
    """A chat call that failed; `kind` says why, `retryable` whether trying again may help.

    Kinds: "auth", "not_found", "quota", "bad_request", "rate_limit", "server",
    "timeout", "connection", "stream" (an error sent inside a 200 reply), "protocol"
    (a reply that is not the OpenAI protocol).
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None, attempts: int = 1):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (f"LLMError(kind={self.kind!r}, status={self.status!r}, retryable={self.retryable!r}, "
                f"attempts={self.attempts}, message={self.message!r})")

    def _set_message(self, message: str) -> None:
        self.message = message
        self.args = (message,)


@dataclass
class _Reply:
    """What one attempt produced, before inline reasoning is split off."""

    raw_content: str
    reasoning: str
    usage: Usage
    model: str
    finish_reason: str | None


class LLMClient:
    """Chat with one model at one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0, max_retries: int = 4, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 30.0, stream: bool = True, json_mode: bool = True,
                 temperature: float | None = None, max_tokens: int | None = None,
                 extra_body: dict | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stream = stream
        self.json_mode = json_mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.usage_by_level: dict[str, Usage] = {}
        # What this server turned out not to accept; learned from 400 replies.
        self.unsupported: set[str] = set()
        self.max_tokens_field = "max_tokens"
        self._rng = random.Random()
        self._http = httpx.AsyncClient(transport=transport, timeout=self._timeout(timeout_s))

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def total_usage(self) -> Usage:
        return sum(self.usage_by_level.values(), Usage())

    # -- public calls ----------------------------------------------------------------

    async def chat(self, messages: list[dict], *, level: str = "inner", json: bool = False,
                   stream: bool | None = None, on_delta: DeltaCallback | None = None,
                   max_tokens: int | None = None, timeout_s: float | None = None,
                   on_retry: RetryCallback | None = None) -> ChatResult:
        """Send one chat request; retry what is transient; return the whole reply.

        `on_delta(kind, text)` gets each streamed piece, kind "content" or "reasoning";
        after a retry the pieces start again from the beginning. `timeout_s` (default:
        the client's) bounds each attempt from request to last byte, keep-alives or not.
        `on_retry(attempt, error, delay_s)` is told before each backoff sleep.
        """
        api_key = self._api_key()
        streaming = self.stream if stream is None else stream
        deadline_s = self.timeout_s if timeout_s is None else timeout_s
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        started = time.monotonic()
        attempts = retries = 0
        while True:
            attempts += 1
            body = self._request_body(messages, json_wanted=json, stream=streaming, max_tokens=max_tokens)
            try:
                reply = await self._attempt(body, streaming, on_delta, api_key, deadline_s)
                break
            except LLMError as err:
                err._set_message(redact(err.message, api_key))
                if self._learn_from(err, body):
                    continue  # same request without the parameter; not a retry
                if not err.retryable or retries >= self.max_retries:
                    err.attempts = attempts
                    if attempts > 1:
                        err._set_message(f"{err.message} (gave up after {attempts} attempts)")
                    raise err
                delay_s = self._backoff_s(retries, err.retry_after_s)
                retries += 1
                if on_retry is not None:
                    on_retry(attempts, err, delay_s)
                await asyncio.sleep(delay_s)

        reasoning_inline, content = split_think(reply.raw_content)
        reasoning = "\n".join(part for part in (reply.reasoning.strip(), reasoning_inline) if part)
        self.usage_by_level[level] = self.usage_by_level.get(level, Usage()) + reply.usage
        return ChatResult(
            content=redact(content, api_key), reasoning=redact(reasoning, api_key), usage=reply.usage,
            model=reply.model or self.model, finish_reason=reply.finish_reason, attempts=attempts,
            duration_s=time.monotonic() - started,
        )

    async def list_models(self) -> list[str]:
        """The model ids the server offers (``GET /models``)."""
        api_key = self._api_key()
        url = f"{self.base_url}/models"
        try:
            response = await self._http.get(url, headers=self._headers(api_key, stream=False),
                                            timeout=self._timeout(min(self.timeout_s, 30.0)))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc, url, api_key) from None
        text = response.text
        if response.status_code != 200:
            err = _status_error(response.status_code, text, response.headers, url=url, api_key_env=self.api_key_env)
            err._set_message(redact(err.message, api_key))
            raise err
        data = _loads(text, f"the model list from {url}")
        entries = data.get("data") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise LLMError(f"{url} did not answer with a model list: {_snippet(text)}", kind="protocol")
        return [str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e]

    # -- one attempt -----------------------------------------------------------------

    async def _attempt(self, body: dict, streaming: bool, on_delta: DeltaCallback | None,
                       api_key: str | None, deadline_s: float) -> _Reply:
        url = f"{self.base_url}/chat/completions"
        try:
            # The overall deadline: httpx's read timeout restarts with every keep-alive.
            return await asyncio.wait_for(self._exchange(url, body, streaming, on_delta, api_key, deadline_s),
                                          deadline_s)
        except asyncio.TimeoutError:
            raise LLMError(f"no complete reply from {url} within {deadline_s:g} s (timeout_s)", kind="timeout",
                           retryable=True) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc, url, api_key) from None

    async def _exchange(self, url: str, body: dict, streaming: bool, on_delta: DeltaCallback | None,
                        api_key: str | None, deadline_s: float) -> _Reply:
        headers = self._headers(api_key, stream=streaming)
        async with self._http.stream("POST", url, json=body, headers=headers,
                                     timeout=self._timeout(deadline_s)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", errors="replace")
                raise await self._http_error(response.status_code, text, response.headers, url)
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # Some servers ignore stream=true and answer in one piece.
                text = (await response.aread()).decode("utf-8", errors="replace")
                return _parse_completion(text, url)
            return await _read_stream(response.aiter_lines(), on_delta, url)

    async def _http_error(self, status: int, text: str, headers: httpx.Headers, url: str) -> LLMError:
        err = _status_error(status, text, headers, url=url, api_key_env=self.api_key_env)
        if err.kind == "not_found":
            err._set_message(await self._model_not_found_message(err.message))
        return err

    async def _model_not_found_message(self, server_said: str) -> str:
        message = f"model {self.model!r} was not found at {self.base_url} ({server_said}). Check the model id"
        try:
            models = await asyncio.wait_for(self.list_models(), min(5.0, self.timeout_s))
        except (LLMError, asyncio.TimeoutError):
            return message + "; listing the server's models failed too, so check base_url (it usually ends in /v1)"
        if self.model in models:
            return message + f"; the server does list {self.model!r}, so check base_url (it usually ends in /v1)"
        if models:
            shown = ", ".join(models[:20]) + (f", ... ({len(models)} in all)" if len(models) > 20 else "")
            return message + f"; the server offers: {shown}"
        return message

    def _transport_error(self, exc: Exception, url: str, api_key: str | None) -> LLMError:
        detail = redact(str(exc) or type(exc).__name__, api_key)
        if isinstance(exc, httpx.TimeoutException):
            return LLMError(f"timed out talking to {url}: {detail}", kind="timeout", retryable=True)
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return LLMError(f"bad base_url {self.base_url!r}: {detail}", kind="protocol")
        if isinstance(exc, httpx.ConnectError):
            return LLMError(f"cannot connect to {self.base_url}: {detail}", kind="connection", retryable=True)
        if isinstance(exc, httpx.TransportError):
            return LLMError(f"the connection to {self.base_url} dropped mid-reply: {detail}", kind="connection",
                            retryable=True)
        return LLMError(f"HTTP failure talking to {url}: {detail}", kind="protocol")

    # -- request shape ---------------------------------------------------------------

    def _request_body(self, messages: list[dict], *, json_wanted: bool, stream: bool,
                      max_tokens: int | None) -> dict:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream}
        if stream and "stream_options" not in self.unsupported:
            body["stream_options"] = {"include_usage": True}
        if json_wanted and self.json_mode and "response_format" not in self.unsupported:
            body["response_format"] = {"type": "json_object"}
        if self.temperature is not None and "temperature" not in self.unsupported:
            body["temperature"] = self.temperature
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        body.update(self.extra_body)
        return body

    def _learn_from(self, err: LLMError, body: dict) -> bool:
        """Adapt to a 400 about a parameter we sent; True if the request should go again."""
        if err.kind != "bad_request":
            return False
        complaint = _parameter_complaint(err.message)
        if complaint == "max_tokens" and self.max_tokens_field in body and self.max_tokens_field == "max_tokens":
            self.max_tokens_field = "max_completion_tokens"
            return True
        if complaint in ("response_format", "stream_options", "temperature") and complaint in body \
                and complaint not in self.unsupported:
            self.unsupported.add(complaint)
            return True
        return False

    def _headers(self, api_key: str | None, *, stream: bool) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise LLMError(f"the API key variable ${self.api_key_env} is not set or empty: export it, or leave "
                           "api_key_env unset for a local server that needs no key", kind="auth")
        return value

    def _timeout(self, total_s: float) -> httpx.Timeout:
        return httpx.Timeout(total_s, connect=min(self.connect_timeout_s, total_s))

    def _backoff_s(self, retry_index: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** retry_index))
        return self._rng.uniform(0.0, ceiling)  # full jitter


# -- reading replies -------------------------------------------------------------------


async def _read_stream(lines: AsyncIterator[str], on_delta: DeltaCallback | None, url: str) -> _Reply:
    acc = _StreamAccumulator(on_delta)
    done = False
    async for data_lines in _sse_events(lines):
        for payload in _event_payloads(data_lines, url):
            if payload == "[DONE]":
                done = True
                break
            acc.feed(payload, url)
        if done:
            break
    acc.flush()
    if not done and acc.finish_reason is None:
        raise LLMError(f"the stream from {url} ended before the reply was complete (no finish_reason, no [DONE])",
                       kind="connection", retryable=True)
    return acc.reply()


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    """Group SSE lines into events, yielding each event's data lines; comments are dropped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield data
                data = []
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield data


def _event_payloads(data_lines: list[str], url: str) -> Iterator[object]:
    joined = "\n".join(data_lines).strip()
    if joined == "[DONE]":
        yield "[DONE]"
        return
    try:
        yield _DECODER.decode(joined)
        return
    except ValueError:
        if len(data_lines) == 1:
            raise LLMError(f"{url} sent a stream event that is not JSON: {_snippet(joined)}",
                           kind="protocol") from None
    # Servers that forget the blank line between events: read each data line alone.
    for line in data_lines:
        yield "[DONE]" if line.strip() == "[DONE]" else _loads(line, f"a stream event from {url}")


class _StreamAccumulator:
    """Collects deltas from chat.completion.chunk objects."""

    def __init__(self, on_delta: DeltaCallback | None):
        self.on_delta = on_delta
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage = Usage()
        self.model = ""
        self.finish_reason: str | None = None
        self._think = _ThinkRouter()

    def feed(self, payload: object, url: str) -> None:
        if not isinstance(payload, dict):
            raise LLMError(f"{url} sent a stream event that is not an object: {_snippet(str(payload))}",
                           kind="protocol")
        if payload.get("error"):
            raise _embedded_error(payload["error"], url)
        if payload.get("usage"):
            self.usage = Usage.from_json(payload["usage"])
        if isinstance(payload.get("model"), str) and payload["model"]:
            self.model = payload["model"]
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return  # usage-only chunks carry [] or null
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(reasoning)
            self._emit("reasoning", reasoning)
        content = _text_of(delta.get("content"))
        if content:
            self.content.append(content)
            for kind, text in self._think.feed(content):
                self._emit(kind, text)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    def flush(self) -> None:
        for kind, text in self._think.flush():
            self._emit(kind, text)

    def reply(self) -> _Reply:
        return _Reply("".join(self.content), "".join(self.reasoning), self.usage, self.model, self.finish_reason)

    def _emit(self, kind: str, text: str) -> None:
        if self.on_delta is not None and text:
            self.on_delta(kind, text)


class _ThinkRouter:
    """Routes streamed content inside <think>…</think> to "reasoning", the rest to "content"."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""  # a tail that may be the start of a tag

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        buf, self.pending = self.pending + text, ""
        while buf:
            tag, kind = (_THINK_CLOSE, "reasoning") if self.inside else (_THINK_OPEN, "content")
            index = buf.find(tag)
            if index >= 0:
                out.append((kind, buf[:index]))
                buf = buf[index + len(tag):]
                self.inside = not self.inside
                continue
            keep = _partial_tag_length(buf, tag)
            out.append((kind, buf[: len(buf) - keep]))
            self.pending = buf[len(buf) - keep:]
            break
        return [(k, t) for k, t in out if t]

    def flush(self) -> list[tuple[str, str]]:
        text, self.pending = self.pending, ""
        return [("reasoning" if self.inside else "content", text)] if text else []


def _partial_tag_length(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def _parse_completion(text: str, url: str) -> _Reply:
    data = _loads(text, f"the reply from {url}")
    if not isinstance(data, dict):
        raise LLMError(f"{url} answered with JSON that is not an object: {_snippet(text)}", kind="protocol")
    if data.get("error"):
        raise _embedded_error(data["error"], url)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(f"{url} answered without choices: {_snippet(text)}", kind="protocol")
    message = choices[0].get("message") or {}
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return _Reply(
        raw_content=_text_of(message.get("content")),
        reasoning=reasoning if isinstance(reasoning, str) else "",
        usage=Usage.from_json(data.get("usage")),
        model=data.get("model") if isinstance(data.get("model"), str) else "",
        finish_reason=choices[0].get("finish_reason"),
    )


def _text_of(content: object) -> str:
    """Message content as text; some servers send a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# -- errors ----------------------------------------------------------------------------

_OVERLOAD_WORDS = ("overload", "server_error", "internal", "unavailable", "timeout", "timed out", "rate_limit",
                   "rate limit", "capacity", "try again", "busy")
_MODEL_MISSING = re.compile(
    r"model[^.\n]{0,100}?(does not exist|not exist|not found|is not a valid model)|(unknown|invalid|no such) model"
    r"|model_not_found", re.IGNORECASE)
_QUOTA = re.compile(r"insufficient_quota|exceeded your current quota|insufficient balance|out of credits?"
                    r"|billing", re.IGNORECASE)


def _status_error(status: int, text: str, headers: httpx.Headers, *, url: str, api_key_env: str | None) -> LLMError:
    """Map a non-200 reply to an LLMError whose message names the status and the server's words."""
    server_said = _error_message(text) or httpx.codes.get_reason_phrase(status) or "no message"
    retry_after = _retry_after_s(headers)
    kind, retryable = _classify(status, server_said)
    message = f"HTTP {status} from {url}: {server_said}"
    if kind == "auth":
        message += (f" (check the API key in ${api_key_env})" if api_key_env
                    else " (this server wants an API key: set api_key_env to the variable that holds it)")
    elif kind == "quota":
        message += " (the account is out of quota or credit; retrying will not help)"
    return LLMError(message, kind=kind, status=status, retryable=retryable, retry_after_s=retry_after)


def _classify(status: int, server_said: str) -> tuple[str, bool]:
    if status in (401, 403):
        return "auth", False
    if status == 402 or (status in (400, 429) and _QUOTA.search(server_said)):
        return "quota", False
    if status == 404 or (status in (400, 422) and _MODEL_MISSING.search(server_said)):
        return "not_found", False
    if status == 429:
        return "rate_limit", True
    if status == 408:
        return "timeout", True
    if status == 409 or status >= 500:
        return "server", True
    if 400 <= status < 500:
        return "bad_request", False
    return "protocol", False


def _error_message(text: str) -> str:
    """The server's own words from an error body: nested, flat, FastAPI or plain text."""
    try:
        body = _DECODER.decode(text)
    except ValueError:
        return _snippet(text.strip(), 500)
    return _message_of(body)


def _message_of(body: object) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        if body.get("error"):
            return _message_of(body["error"])
        if "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):  # FastAPI validation errors
                return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
            return _message_of(detail)
        if "message" in body:
            message = str(body["message"])
            tags: list[str] = []
            for key in ("type", "code"):
                value = body.get(key)
                if value not in (None, "") and str(value) not in tags and str(value) not in message:
                    tags.append(str(value))
            return message + (f" [{', '.join(tags)}]" if tags else "")
    return _snippet(jsonlib.dumps(body), 500)


def _embedded_error(error: object, url: str) -> LLMError:
    """An error object sent in a 200 reply; retryable when it reads like overload or 5xx."""
    said = _message_of({"error": error})
    codes = [error.get(k) for k in ("code", "status")] if isinstance(error, dict) else []
    numeric = [int(c) for c in codes if isinstance(c, int) or (isinstance(c, str) and c.isdigit())]
    retryable = any(c >= 500 or c in (408, 429) for c in numeric) or any(w in said.lower() for w in _OVERLOAD_WORDS)
    return LLMError(f"{url} reported an error mid-reply: {said}", kind="stream", retryable=retryable,
                    status=numeric[0] if numeric else None)


def _parameter_complaint(message: str) -> str | None:
    """Which request parameter a 400 message objects to, if it is one we can drop or rename."""
    lower = message.lower()
    if "max_completion_tokens" in lower or ("max_tokens" in lower and "support" in lower):
        return "max_tokens"
    if "response_format" in lower or "json_object" in lower or "json mode" in lower:
        return "response_format"
    if "stream_options" in lower:
        return "stream_options"
    if "temperature" in lower and "support" in lower:
        return "temperature"
    return None


def _retry_after_s(headers: httpx.Headers) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# -- text helpers ----------------------------------------------------------------------

_DECODER = jsonlib.JSONDecoder(strict=False)  # models put raw newlines inside strings
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by a marker."""
    if not secret or not text:
        return text
    return text.replace(secret, "[REDACTED]")


def split_think(text: str) -> tuple[str, str]:
    """Split inline reasoning off a reply: (reasoning, content).

    Handles ``<think>…</think>`` blocks, a lone ``</think>`` (templates that open the
    block themselves) and an unterminated ``<think>`` (a reply cut off while thinking).
    Text without tags comes back unchanged as content.
    """
    if _THINK_OPEN not in text and _THINK_CLOSE not in text:
        return "", text
    parts: list[str] = []
    close, opening = text.find(_THINK_CLOSE), text.find(_THINK_OPEN)
    if close >= 0 and (opening < 0 or close < opening):
        parts.append(text[:close])
        text = text[close + len(_THINK_CLOSE):]

    def keep_reasoning(match: re.Match) -> str:
        parts.append(match.group(1))
        return ""

    text = _THINK_BLOCK.sub(keep_reasoning, text)
    start = text.find(_THINK_OPEN)
    if start >= 0:
        parts.append(text[start + len(_THINK_OPEN):])
        text = text[:start]
    reasoning = "\n".join(p.strip() for p in parts if p.strip())
    return reasoning, text.strip()


def extract_json(text: str) -> dict:
    """The first JSON object in a model's reply, however it is wrapped.

    Strips ``<think>`` blocks, prefers a fenced block, else finds the first balanced
    ``{…}`` in surrounding prose; forgives trailing commas and raw newlines in strings.
    Raises ValueError saying what was found instead.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected the reply text, got {type(text).__name__}")
    reasoning, body = split_think(text)
    body = body.strip()
    if not body:
        extra = f" (only {len(reasoning)} characters of reasoning)" if reasoning else ""
        raise ValueError(f"the reply has no content to read JSON from{extra}")
    # Hostile or broken replies: a deep nest would overflow the decoder's recursion (and make
    # the brace search quadratic), so nesting is measured first, outside strings, at C speed.
    max_depth, depth = 64, 0
    for brace in re.finditer(r"[{}\[\]]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', body)):
        depth = depth + 1 if brace.group() in "{[" else max(0, depth - 1)
        if depth > max_depth:
            raise ValueError(f"the reply nests brackets more than {max_depth} levels deep; "
                             f"no proposal needs that ({len(body)} chars, begins: {_snippet(body, 80)})")
    try:
        whole = _try_object(body)
        if whole is not None:
            return whole
        problems: list[str] = []
        for block in _FENCE.findall(body):
            found = _try_object(block.strip())
            if found is None:
                found = _first_object(block, problems)
            if found is not None:
                return found
        found = _first_object(body, problems)
    except RecursionError:  # the measure above makes this unreachable; kept as the last line of defence
        raise ValueError(f"the reply nests too deeply to read as JSON ({len(body)} chars)") from None
    if found is not None:
        return found
    why = problems[0] if problems else "there is no '{' in it"
    raise ValueError(f"no JSON object in the reply: {why}. The reply ({len(body)} chars) begins: {_snippet(body, 200)}")


def _first_object(text: str, problems: list[str]) -> dict | None:
    start = text.find("{")
    while start >= 0:
        end = _matching_brace(text, start)
        if end < 0:
            problems.append(f"the object starting at character {start} never closes (was the reply cut off? "
                            "consider a larger max_tokens)")
            return None  # anything later is inside it: an inner object is not the answer
        candidate = text[start:end + 1]
        found = _try_object(candidate)
        if found is not None:
            return found
        try:
            _DECODER.decode(candidate)
        except ValueError as exc:
            problems.append(f"the {{…}} at character {start} is not valid JSON ({exc})")
        start = text.find("{", start + 1)
    return None


def _try_object(text: str) -> dict | None:
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            value = _DECODER.decode(attempt)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _matching_brace(text: str, start: int) -> int:
    """Index of the '}' closing the '{' at `start`, skipping braces inside strings; -1 if none."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _loads(text: str, what: str) -> Any:
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        raise LLMError(f"{what} is not valid JSON ({exc}): {_snippet(text)}", kind="protocol") from None


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0

"""OpenAI-compatible chat client for every LLM call the levels make.

One `LLMClient` talks to one endpoint (OpenAI, DeepSeek, OpenRouter, vLLM, Ollama, ...)
over `httpx.AsyncClient`, in plain JSON or SSE streaming; `core.services.llm_protocol`
reads the replies (reasoning fields, ``<think>`` blocks, SSE quirks, usage, error bodies).

Failures surface as `LLMError` with a `kind` the engine can act on and a message a
user can act on. Transient failures (connection, timeout, 408/409/429/5xx, a malformed or
oversized reply) are retried by tenacity with exponential backoff and full jitter, honouring
``Retry-After``, through an injectable ``sleep`` so tests never wait; past its retries such
a failure is an outage (`is_outage`), which the engine waits out instead of giving up.
A reply is read in chunks and counted: past ``max_reply_bytes`` it is cut (kind
"too_large"), so an endless line never grows the process. Requests the
server rejects for a parameter it does not support (``response_format``,
``max_tokens``, ``stream_options``, ``temperature``) are retried once without it, and
the client remembers.

Structured output (`structured`): a call that passes a JSON schema sends it as
``response_format`` ``json_schema`` (constrained decoding where the server has it); in
"auto" mode a refusal steps down to ``json_object``, then to plain text, and
`structured_mode` says which is in force. In ``json_object`` mode the schema rides along
inside ``response_format`` (llama-cpp-python's server constrains its output by it; servers that
object get plain ``json_object``). A schema only shapes the reply: callers still
validate every field. The API key is read from the environment at call time and never
appears in anything this module raises or returns.

`extract_json`, `split_think` and `redact` are the text helpers callers need around it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from core.services.llm_protocol import (THINK_CLOSE as _THINK_CLOSE, THINK_OPEN as _THINK_OPEN,
                                        JSON_DECODER as _DECODER, DeltaCallback, LLMError, Reply, Usage, loads,
                                        parameter_complaint, parse_completion, parse_retry_after, read_stream,
                                        snippet as _snippet, status_error)

__all__ = ["DEFAULT_MAX_REPLY_BYTES", "is_outage", "Sleep", "PROBE_SCHEMA", "PROBE_SYSTEM", "STRUCTURED_MODES", "context_exceeded", "probe_messages", "ChatResult", "DeltaCallback", "LLMClient", "LLMError", "RetryCallback", "Usage", "extract_json",
           "parse_retry_after", "redact", "split_think"]

RetryCallback = Callable[[int, "LLMError", float], None]
Sleep = Callable[[float], Awaitable[None]]
DEFAULT_MAX_REPLY_BYTES = 4_000_000  # far above any answer we ask for; an endless line stops here
STRUCTURED_MODES = ("auto", "json_schema", "json_object", "off")
_STEP_DOWN = {"json_schema": "json_object", "json_object": "off"}


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


class LLMClient:
    """Chat with one model at one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0, max_retries: int = 4, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 30.0, stream: bool = True, json_mode: bool = True,
                 temperature: float | None = None, max_tokens: int | None = None,
                 extra_body: dict | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 structured: str = "auto", max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
                 sleep: Sleep = asyncio.sleep):
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}, not {structured!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max(0, max_retries)
        self.max_reply_bytes = max(1, max_reply_bytes)
        self.sleep = sleep  # every backoff goes through it: tests inject one that does not wait
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
        self.structured = structured
        # The response_format in force: json_schema, json_object or off; "auto" steps down on refusals.
        self.structured_mode = ("off" if not json_mode or structured == "off"
                                else "json_object" if structured == "json_object" else "json_schema")
        self.structured_reason = f"configured: structured = {structured!r}" + ("" if json_mode else ", json_mode = false")
        self.inline_schema = True  # json_object carries the schema until the endpoint objects to it
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
                   on_retry: RetryCallback | None = None, schema: dict | None = None,
                   schema_name: str = "reply", max_retries: int | None = None) -> ChatResult:
        """Send one chat request; retry what is transient; return the whole reply.

        `on_delta(kind, text)` gets each streamed piece, kind "content" or "reasoning";
        after a retry the pieces start again from the beginning. `timeout_s` (default:
        the client's) bounds each attempt from request to last byte, keep-alives or not.
        `on_retry(attempt, error, delay_s)` is told before each backoff sleep.
        `schema` (a JSON schema of the answer, with `json`) is sent as ``json_schema``
        while the endpoint accepts it. `max_retries` overrides the client's for this call
        (the engine's probes of a down endpoint send one attempt each).
        """
        api_key = self._api_key()
        streaming = self.stream if stream is None else stream
        deadline_s = self.timeout_s if timeout_s is None else timeout_s
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        retries_allowed = self.max_retries if max_retries is None else max(0, max_retries)
        started = time.monotonic()
        attempts = 0

        async def one_attempt() -> Reply:
            nonlocal attempts
            while True:
                attempts += 1
                body = self._request_body(messages, json_wanted=json, stream=streaming, max_tokens=max_tokens,
                                          schema=schema, schema_name=schema_name)
                try:
                    return await self._attempt(body, streaming, on_delta, api_key, deadline_s)
                except LLMError as err:
                    err._set_message(redact(err.message, api_key))
                    if self._learn_from(err, body):
                        continue  # same request without the parameter; not a retry
                    err.attempts = attempts
                    raise

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None and state.next_action is not None:
                on_retry(attempts, state.outcome.exception(), state.next_action.sleep)

        retrying = AsyncRetrying(stop=stop_after_attempt(retries_allowed + 1), wait=self._wait,
                                 retry=retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable),
                                 sleep=self.sleep, before_sleep=before_sleep, reraise=True)
        try:
            reply = await retrying(one_attempt)
        except LLMError as err:
            if attempts > 1:
                err._set_message(f"{err.message} (gave up after {attempts} attempts)")
            raise

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
            err = status_error(response.status_code, text, response.headers, url=url, api_key_env=self.api_key_env)
            err._set_message(redact(err.message, api_key))
            raise err
        data = loads(text, f"the model list from {url}")
        entries = data.get("data") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise LLMError(f"{url} did not answer with a model list: {_snippet(text)}", kind="protocol")
        return [str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e]

    async def server_json(self, path: str, *, root: bool = False, timeout_s: float = 5.0) -> Any:
        """``GET`` one of the server's own pages (llama.cpp's ``/props``, the model list), parsed; None when
        the server has no such page or does not answer it in ``timeout_s``: these pages are optional."""
        base = self.base_url[:-3] if root and self.base_url.endswith("/v1") else self.base_url
        try:
            api_key = self._api_key()
            response = await self._http.get(f"{base}{path}", headers=self._headers(api_key, stream=False),
                                            timeout=self._timeout(min(self.timeout_s, timeout_s)))
        except (LLMError, httpx.HTTPError, httpx.InvalidURL):
            return None
        if response.status_code != 200 or len(response.content) > self.max_reply_bytes:
            return None
        try:
            return loads(response.text, f"{base}{path}")
        except LLMError:
            return None

    # -- one attempt -----------------------------------------------------------------

    async def _attempt(self, body: dict, streaming: bool, on_delta: DeltaCallback | None,
                       api_key: str | None, deadline_s: float) -> Reply:
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
                        api_key: str | None, deadline_s: float) -> Reply:
        headers = self._headers(api_key, stream=streaming)
        async with self._http.stream("POST", url, json=body, headers=headers,
                                     timeout=self._timeout(deadline_s)) as response:
            if response.status_code != 200:
                text = (await self._read_capped(response, url)).decode("utf-8", errors="replace")
                raise await self._http_error(response.status_code, text, response.headers, url)
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # Some servers ignore stream=true and answer in one piece.
                text = (await self._read_capped(response, url)).decode("utf-8", errors="replace")
                return parse_completion(text, url)
            return await read_stream(self._capped_lines(response, url), on_delta, url)

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        """The whole body, refused past max_reply_bytes (counted as it arrives, never buffered beyond)."""
        body = bytearray()
        async for chunk in response.aiter_bytes():
            if len(body) + len(chunk) > self.max_reply_bytes:
                raise self._too_large(url)
            body += chunk
        return bytes(body)

    async def _capped_lines(self, response: httpx.Response, url: str) -> AsyncIterator[str]:
        """The body's lines, read in chunks and counted: an endless line stops at max_reply_bytes."""
        seen, pending = 0, bytearray()
        async for chunk in response.aiter_bytes():
            seen += len(chunk)
            if seen > self.max_reply_bytes:
                raise self._too_large(url)
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue
            complete = bytes(pending[:cut])
            del pending[:cut + 1]
            for line in complete.split(b"\n"):
                yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if pending:
            yield bytes(pending).rstrip(b"\r").decode("utf-8", errors="replace")

    def _too_large(self, url: str) -> LLMError:
        return LLMError(f"the reply from {url} passed {self.max_reply_bytes} bytes (endpoint.max_reply_bytes) "
                        "and was cut off unread", kind="too_large", retryable=True)

    async def _http_error(self, status: int, text: str, headers: httpx.Headers, url: str) -> LLMError:
        err = status_error(status, text, headers, url=url, api_key_env=self.api_key_env)
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
                      max_tokens: int | None, schema: dict | None = None, schema_name: str = "reply") -> dict:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream}
        if stream and "stream_options" not in self.unsupported:
            body["stream_options"] = {"include_usage": True}
        if json_wanted and self.structured_mode == "json_schema" and schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": schema_name, "strict": False, "schema": schema}}
        elif json_wanted and self.structured_mode != "off":
            body["response_format"] = {"type": "json_object"}
            if schema is not None and self.inline_schema:
                body["response_format"]["schema"] = schema
        if self.temperature is not None and "temperature" not in self.unsupported:
            body["temperature"] = self.temperature
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        body.update(self.extra_body)
        return body

    def _learn_from(self, err: LLMError, body: dict) -> bool:
        """Adapt to a 400 about a parameter we sent; True if the request should go again."""
        # llama-cpp-python's server answers a request field it cannot validate with a 500
        validation_500 = err.status == 500 and "validation error" in err.message.lower()
        if err.kind != "bad_request" and not validation_500:
            return False
        complaint = parameter_complaint(err.message)
        if complaint == "max_tokens" and self.max_tokens_field in body and self.max_tokens_field == "max_tokens":
            self.max_tokens_field = "max_completion_tokens"
            return True
        if complaint == "response_format" and "response_format" in body:
            sent = body["response_format"].get("type", "json_object")
            if sent == "json_object" and "schema" in body["response_format"]:
                self.inline_schema = False  # plain json_object next, before giving up on it
                self.structured_reason += f"; it refused a schema inside json_object: {_snippet(err.message, 200)}"
                return True
            # "auto" steps down; json_object has always fallen back to plain text (json_mode's behaviour)
            if self.structured == "auto" or sent == "json_object":
                self.structured_mode = _STEP_DOWN[sent]
                self.structured_reason = f"the endpoint refused {sent}: {_snippet(err.message, 200)}"
                return True
            return False
        if complaint in ("stream_options", "temperature") and complaint in body \
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

    def _wait(self, state: RetryCallState) -> float:
        """tenacity's wait: Retry-After when the server sent one, else full-jitter exponential backoff."""
        err = state.outcome.exception() if state.outcome is not None else None
        return self._backoff_s(state.attempt_number - 1, getattr(err, "retry_after_s", None))

    def _backoff_s(self, retry_index: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** retry_index))
        return self._rng.uniform(0.0, ceiling)  # full jitter


def is_outage(err: LLMError) -> bool:
    """A failure of the endpoint, not of the request: what the client retries is waited out once retries end."""
    return err.retryable


# -- the endpoint check before a baseline -------------------------------------------------

PROBE_SYSTEM = 'bilevel endpoint check: reply with the JSON object {"ok": true} and nothing else.'
PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                "additionalProperties": False}
_CONTEXT_EXCEEDED = re.compile(r"context|too long|too many tokens|maximum.{0,20}length|n_ctx", re.IGNORECASE)


def probe_messages(prompt_tokens: int, sample: str = "") -> list[dict]:
    """A chat about as long as `prompt_tokens` (about a token a word): a context too small fails on it.

    ``sample`` (text like what the run sends: code, numbers) replaces the filler, so the server's
    count of the prompt can be set beside our estimate of it."""
    filler = sample or " ".join(["data"] * max(0, prompt_tokens))
    return [{"role": "system", "content": PROBE_SYSTEM},
            {"role": "user", "content": f'The text below only fills the context. Reply {{"ok": true}}.\n{filler}'}]


def context_exceeded(err: LLMError) -> bool:
    """A 400 that says the request does not fit the model's context window."""
    return err.kind == "bad_request" and bool(_CONTEXT_EXCEEDED.search(err.message))


# -- reading replies -------------------------------------------------------------------
# -- text helpers ----------------------------------------------------------------------

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


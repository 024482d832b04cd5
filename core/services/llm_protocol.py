"""The OpenAI chat protocol as data: replies (plain JSON or SSE streams), usage and errors.

`core.services.llm` sends the requests; this module reads what comes back. It copes
with what real servers do: reasoning text in ``reasoning_content``, ``reasoning`` or
inline ``<think>`` blocks; keep-alive comments; errors inside a 200 stream; streams
without ``[DONE]``; events without the blank line between them; usage in any of the
places servers put it. Error replies become an `LLMError` whose `kind` says what to do.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import math
import re
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any, AsyncIterator, Callable, Iterator

import httpx

DeltaCallback = Callable[[str, str], None]


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



class LLMError(Exception):
    """A chat call that failed; `kind` says why, `retryable` whether trying again may help.

    Kinds: "auth", "not_found", "quota", "bad_request", "rate_limit", "server",
    "timeout", "connection", "stream" (an error sent inside a 200 reply), "malformed"
    (a reply that is not valid protocol JSON), "too_large" (past max_reply_bytes),
    "protocol" (anything else that is not the OpenAI protocol, such as a bad base_url).
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
class Reply:
    """What one attempt produced, before inline reasoning is split off."""

    raw_content: str
    reasoning: str
    usage: Usage
    model: str
    finish_reason: str | None





async def read_stream(lines: AsyncIterator[str], on_delta: DeltaCallback | None, url: str) -> Reply:
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
        yield JSON_DECODER.decode(joined)
        return
    except ValueError:
        if len(data_lines) == 1:
            raise LLMError(f"{url} sent a stream event that is not JSON: {snippet(joined)}",
                           kind="malformed", retryable=True) from None
    # Servers that forget the blank line between events: read each data line alone.
    for line in data_lines:
        yield "[DONE]" if line.strip() == "[DONE]" else loads(line, f"a stream event from {url}")


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
            raise LLMError(f"{url} sent a stream event that is not an object: {snippet(str(payload))}",
                           kind="malformed", retryable=True)
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

    def reply(self) -> Reply:
        return Reply("".join(self.content), "".join(self.reasoning), self.usage, self.model, self.finish_reason)

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
            tag, kind = (THINK_CLOSE, "reasoning") if self.inside else (THINK_OPEN, "content")
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


def parse_completion(text: str, url: str) -> Reply:
    data = loads(text, f"the reply from {url}")
    if not isinstance(data, dict):
        raise LLMError(f"{url} answered with JSON that is not an object: {snippet(text)}", kind="malformed",
                       retryable=True)
    if data.get("error"):
        raise _embedded_error(data["error"], url)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(f"{url} answered without choices: {snippet(text)}", kind="malformed", retryable=True)
    message = choices[0].get("message") or {}
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return Reply(
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


def status_error(status: int, text: str, headers: httpx.Headers, *, url: str, api_key_env: str | None) -> LLMError:
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
        body = JSON_DECODER.decode(text)
    except ValueError:
        return snippet(text.strip(), 500)
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
    return snippet(jsonlib.dumps(body), 500)


def _embedded_error(error: object, url: str) -> LLMError:
    """An error object sent in a 200 reply; retryable when it reads like overload or 5xx."""
    said = _message_of({"error": error})
    codes = [error.get(k) for k in ("code", "status")] if isinstance(error, dict) else []
    numeric = [int(c) for c in codes if isinstance(c, int) or (isinstance(c, str) and c.isdigit())]
    retryable = any(c >= 500 or c in (408, 429) for c in numeric) or any(w in said.lower() for w in _OVERLOAD_WORDS)
    return LLMError(f"{url} reported an error mid-reply: {said}", kind="stream", retryable=retryable,
                    status=numeric[0] if numeric else None)


def parameter_complaint(message: str) -> str | None:
    """Which request parameter a 400 message objects to, if it is one we can drop or rename."""
    lower = message.lower()
    if "max_completion_tokens" in lower or ("max_tokens" in lower and "support" in lower):
        return "max_tokens"
    if "response_format" in lower or "json_object" in lower or "json_schema" in lower or "json mode" in lower:
        return "response_format"
    if "json schema" in lower:  # llama-server: "JSON schema conversion failed: ..." for a schema it cannot compile
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


# -- small helpers -------------------------------------------------------------------

JSON_DECODER = jsonlib.JSONDecoder(strict=False)  # models put raw newlines inside strings
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def loads(text: str, what: str) -> Any:
    try:
        return JSON_DECODER.decode(text)
    except ValueError as exc:
        raise LLMError(f"{what} is not valid JSON ({exc}): {snippet(text)}", kind="malformed",
                       retryable=True) from None


def snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0

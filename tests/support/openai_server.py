"""A real OpenAI-compatible HTTP server on 127.0.0.1, driven by scripted replies.

Tests enqueue `Reply` objects (or plain strings) and point a client at `base_url`.
The server speaks the parts of the protocol the product uses:

- ``POST /v1/chat/completions``: a JSON ``chat.completion`` when the request's
  ``stream`` is false or absent; otherwise Server-Sent Events (``text/event-stream``,
  chunked transfer encoding) with ``chat.completion.chunk`` objects and ``data: [DONE]``.
- ``GET /v1/models``: ``{"object": "list", "data": [{"id": ...}, ...]}``.
- Where the context is stated (``states_context``): llama.cpp's ``GET /props`` (``"props"``, n_ctx under
  default_generation_settings) or vLLM's ``max_model_len`` on each listed model (``"models"``).

Like a real server it checks a request's ``response_format`` (a malformed one is a 400),
refuses ``json_schema`` with a 400 when ``refuse_json_schema`` is set (and any
``response_format`` when ``refuse_response_format`` is), and refuses a request longer
than ``context_tokens`` (about four characters a token) with llama.cpp's context-exceeded
400. The engine's endpoint check (system prompt ``PROBE_SYSTEM``) is answered from
``probe_replies`` when any are queued, else with ``{"ok": true}``: it never takes a
reply scripted for the levels.

Usage is sent whenever ``Reply.usage`` is not None and ``usage_style`` is not "none",
whether or not the request asked for ``stream_options.include_usage`` (servers differ
here; sending it always keeps tests simple and exercises the client's parsing).

Faults (`fail_after`): after N good answers to the levels, the next requests get one fault each
(``FAULTS``: a reset connection, a 503, a malformed stream, an endless line, a hang, a reply of
the wrong shape), then the server recovers by itself. An endless line reports each megabyte it
writes to ``on_endless_mb`` (for measuring the client's memory at points fixed in bytes).

The server runs in a daemon thread (stdlib ``ThreadingHTTPServer``, port 0), so it
works from sync tests and from async tests that run their own event loop. ``stop()``
wakes every sleeping handler and never blocks for long.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Union


def _default_usage() -> dict:
    return {"prompt_tokens": 57, "completion_tokens": 21, "total_tokens": 78}


@dataclass
class Reply:
    """One scripted answer to one ``/chat/completions`` request."""

    content: str = ""
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"  # or "reasoning" (OpenRouter, vLLM)
    status: int = 200
    error_body: object | None = None  # JSON-able body (dict or str) for non-200 replies
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response starts (streams with keepalive: filled with comments)
    chunk_delay_s: float = 0.0  # between SSE events
    usage: dict | None = field(default_factory=_default_usage)  # None => omit usage entirely
    usage_style: str = "final_empty_choices"  # "on_finish_chunk", "final_null_choices", "none"
    keepalive: bool = False  # interleave ": keep-alive" comment lines and blank lines
    send_done: bool = True  # False => the stream ends without [DONE]
    stream_error: dict | None = None  # error object sent inside a 200 stream, halfway through
    drop_after_chunks: int | None = None  # close the connection after this many data events
    malformed: bool = False  # send a body (or one SSE event) that is not valid JSON
    chunks: int | None = None  # split content into this many deltas (default: word-sized)
    finish_reason: str | None = "stop"  # None => no chunk ever carries a finish_reason
    reset: bool = False  # close the connection before any response
    endless: bool = False  # a 200 whose one line never ends (until the client hangs up, or ENDLESS_LIMIT)


ENDLESS_LIMIT = 1_000_000_000  # an endless line gives up here even if the client never hangs up
FAULTS = {
    "reset": lambda: Reply(reset=True),
    "503": lambda: Reply(status=503, error_body={"error": {"message": "service unavailable"}}),
    "malformed": lambda: Reply(content="x", malformed=True),
    "endless": lambda: Reply(endless=True),
    "hang": lambda: Reply(content="too late", delay_s=3600.0),  # the client's timeout cuts it; stop() wakes it
    "wrong_shape": lambda: Reply(content='{"answer": 42}'),
}


Responder = Callable[[dict], Union[Reply, str]]
_USAGE_STYLES = ("final_empty_choices", "on_finish_chunk", "final_null_choices", "none")


class ScriptedOpenAI:
    """An OpenAI-protocol server answering from a FIFO of replies, then from `responder`.

    Use as a context manager::

        with ScriptedOpenAI() as server:
            server.enqueue("hello", Reply(status=503))
            client = LLMClient(server.base_url, "test-model")
    """

    def __init__(self, responder: Responder | None = None, models: tuple[str, ...] = ("test-model",),
                 *, refuse_json_schema: bool = False, refuse_response_format: bool = False,
                 context_tokens: int | None = None, states_context: str | None = None):
        self.responder = responder
        self.refuse_json_schema = refuse_json_schema
        self.refuse_response_format = refuse_response_format
        self.context_tokens = context_tokens
        if states_context not in (None, "props", "models"):
            raise ValueError(f"states_context must be None, 'props' or 'models', not {states_context!r}")
        self.states_context = states_context
        self.get_paths: list[str] = []  # every GET, in order
        self.probe_replies: collections.deque[Reply] = collections.deque()
        self.models = tuple(models)
        self.requests: list[dict] = []
        self.request_headers: list[dict] = []  # lookups ignore case: h["Authorization"] == h["authorization"]
        self.base_url = ""
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._fault: tuple[int, str, int] | None = None  # good answers first, the fault, how many times
        self.level_requests = 0  # requests other than the endpoint check, counted for fail_after
        self.faults_served = 0
        self.on_endless_mb: Callable[[int], None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "ScriptedOpenAI":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.scripted = self
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delays
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "ScriptedOpenAI":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------

    def enqueue(self, *replies: Reply | str) -> None:
        """Queue replies, answered first-in first-out; a str means Reply(content=str)."""
        with self._lock:
            self._queue.extend(_as_reply(r) for r in replies)

    def enqueue_probe(self, *replies: Reply | str) -> None:
        """Replies for the engine's endpoint check (see the module docstring)."""
        with self._lock:
            self.probe_replies.extend(_as_reply(r) for r in replies)

    def fail_after(self, good: int, fault: str, times: int) -> None:
        """After ``good`` answered level requests, answer the next ``times`` with ``fault`` (one of FAULTS)."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)}, not {fault!r}")
        with self._lock:
            self._fault = (self.level_requests + good, fault, times)

    def _record_and_pick(self, body: dict, headers: dict) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            number = len(self.requests)
            refusal = self._refusal(body)
            if refusal is not None:
                return refusal
            if _is_probe(body):
                return self.probe_replies.popleft() if self.probe_replies else Reply(content='{"ok": true}')
            self.level_requests += 1
            if self._fault is not None and self.level_requests > self._fault[0]:
                after, fault, times = self._fault
                if self.faults_served < times:
                    self.faults_served += 1
                    return FAULTS[fault]()
            if self._queue:
                return self._queue.popleft()
        if self.responder is None:
            return _scripting_error(f"ScriptedOpenAI: no scripted reply for request #{number} "
                                    "(queue empty and no responder)")
        try:
            return _as_reply(self.responder(body))
        except Exception as exc:  # surfaces the test's own bug to the client, loudly
            return _scripting_error(f"ScriptedOpenAI: responder raised {type(exc).__name__}: {exc}")

    def _refusal(self, body: dict) -> Reply | None:
        """The 400 a real server sends for this request, if any."""
        fmt = body.get("response_format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
            if kind not in ("json_object", "json_schema", "text"):
                return _bad_request(f"response_format.type must be json_object, json_schema or text, not {kind!r}")
            if kind == "json_schema" and not (isinstance(spec, dict) and isinstance(spec.get("schema"), dict)
                                              and isinstance(spec.get("name"), str)):
                return _bad_request("response_format.json_schema needs a name and a schema object")
            if self.refuse_response_format or (kind == "json_schema" and self.refuse_json_schema):
                return _bad_request(f"response_format type {kind} is not supported by this server")
        if self.context_tokens is not None:
            tokens = len(json.dumps(body.get("messages", ""))) // 4
            if tokens > self.context_tokens:
                return _bad_request(f"the request exceeds the available context size, try increasing it "
                                    f"({tokens} tokens > n_ctx {self.context_tokens})", "exceed_context_size_error")
        return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; False means stop now."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)


def _as_reply(reply: Reply | str) -> Reply:
    if isinstance(reply, Reply):
        if reply.usage_style not in _USAGE_STYLES:
            raise ValueError(f"usage_style must be one of {_USAGE_STYLES}, not {reply.usage_style!r}")
        return reply
    if isinstance(reply, str):
        return Reply(content=reply)
    raise TypeError(f"a scripted reply must be Reply or str, not {type(reply).__name__}")


def _is_probe(body: dict) -> bool:
    from core.services.llm import PROBE_SYSTEM

    messages = body.get("messages")
    return bool(isinstance(messages, list) and messages and isinstance(messages[0], dict)
                and messages[0].get("content") == PROBE_SYSTEM)


def _bad_request(message: str, kind: str = "invalid_request_error") -> Reply:
    return Reply(status=400, error_body={"error": {"message": message, "type": kind, "code": 400}})


def _scripting_error(message: str) -> Reply:
    return Reply(status=500, error_body={"error": {"message": message, "type": "scripting_error"}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default of 5 drops bursts of concurrent connects
    scripted: ScriptedOpenAI

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-reply is part of what tests do


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streams, so a dropped connection is detectable
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- routing ---------------------------------------------------------------------

    def do_GET(self) -> None:
        scripted = self.server.scripted
        path = self.path.split("?")[0].rstrip("/")
        with scripted._lock:
            scripted.get_paths.append(path)
        stated = scripted.context_tokens if scripted.states_context else None
        if path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "owned_by": "scripted"} for m in scripted.models]
            if stated is not None and scripted.states_context == "models":
                data = [{**d, "max_model_len": stated} for d in data]
            self._send_json(200, {"object": "list", "data": data})
        elif path == "/props" and stated is not None and scripted.states_context == "props":
            self._send_json(200, {"default_generation_settings": {"n_ctx": stated, "params": {}},
                                  "total_slots": 1, "model_path": "scripted.gguf"})
        else:
            self._send_json(404, _error(f"no route GET {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, _error(f"no route POST {self.path}", "not_found_error"))
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self._send_json(400, _error(f"request body is not JSON: {exc}", "invalid_request_error"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error("request body must be a JSON object", "invalid_request_error"))
            return
        headers = _Headers(self.headers.items())
        reply = self.server.scripted._record_and_pick(body, headers)
        try:
            self._serve(reply, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True

    # -- replies ---------------------------------------------------------------------

    def _serve(self, reply: Reply, request: dict) -> None:
        streaming = request.get("stream") is True
        scripted = self.server.scripted
        if reply.reset:
            return self._hang_up()
        if reply.endless:
            return self._send_endless(streaming)
        if not (streaming and reply.keepalive and reply.status == 200):
            if not scripted._sleep(reply.delay_s):
                return self._hang_up()
        if reply.status != 200:
            self._send_error_reply(reply)
        elif streaming:
            self._send_stream(reply, str(request.get("model", "")))
        else:
            self._send_completion(reply, str(request.get("model", "")))

    def _send_error_reply(self, reply: Reply) -> None:
        body = reply.error_body
        if body is None:
            body = _error(f"scripted HTTP {reply.status}", "server_error")
        if isinstance(body, str):
            self._send_bytes(reply.status, body.encode(), "text/plain; charset=utf-8", reply.headers)
        else:
            self._send_bytes(reply.status, json.dumps(body).encode(), "application/json", reply.headers)

    def _send_completion(self, reply: Reply, model: str) -> None:
        if reply.malformed:
            payload = b'{"id": "chatcmpl-scripted", "object": "chat.completion", "choices": [{"mess'
        else:
            message: dict = {"role": "assistant", "content": reply.content}
            if reply.reasoning is not None:
                message[reply.reasoning_field] = reply.reasoning
            completion: dict = {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            }
            if reply.usage is not None and reply.usage_style != "none":
                completion["usage"] = reply.usage
            payload = json.dumps(completion).encode()
        if reply.drop_after_chunks is not None:
            # Promise the whole body, deliver half, hang up.
            self._start_response(200, "application/json", reply.headers, length=len(payload))
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return self._hang_up()
        self._send_bytes(200, payload, "application/json", reply.headers)

    def _send_stream(self, reply: Reply, model: str) -> None:
        scripted = self.server.scripted
        self._start_response(200, "text/event-stream", {"Cache-Control": "no-cache", **reply.headers})
        if reply.keepalive and reply.delay_s > 0:
            # Like OpenRouter: comments keep the connection busy while the model "thinks".
            deadline = time.monotonic() + reply.delay_s
            while (left := deadline - time.monotonic()) > 0:
                self._write_chunk(b": keep-alive\n\n")
                if not scripted._sleep(min(0.05, left)):
                    return self._hang_up()
        sent = 0
        for event in _stream_events(reply, model):
            if reply.drop_after_chunks is not None and sent >= reply.drop_after_chunks:
                return self._hang_up()
            if sent and not scripted._sleep(reply.chunk_delay_s):
                return self._hang_up()
            if reply.keepalive:
                self._write_chunk(b": keep-alive\n\n\n")
            self._write_chunk(b"data: " + event.encode() + b"\n\n")
            sent += 1
        self._write_chunk(b"")  # the terminating zero-length chunk

    def _send_endless(self, streaming: bool) -> None:
        """One line that never ends: the client must stop reading it, not hold it."""
        scripted = self.server.scripted
        self._start_response(200, "text/event-stream" if streaming else "application/json", {})
        self._write_chunk(b'data: {"choices": [{"delta": {"content": "' if streaming else b'{"choices": "')
        block, written = b"x" * 65536, 0
        while written < ENDLESS_LIMIT and not scripted._stopping.is_set():
            self._write_chunk(block)  # raises once the client hangs up
            written += len(block)
            if scripted.on_endless_mb is not None and written % (1 << 20) == 0:
                scripted.on_endless_mb(written)
        self._hang_up()

    # -- low level -------------------------------------------------------------------

    def _start_response(self, status: int, content_type: str, headers: dict[str, str], *,
                        length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True

    def _send_bytes(self, status: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
        self._start_response(status, content_type, headers, length=len(payload))
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(self, status: int, body: object) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json", {})

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _hang_up(self) -> None:
        """Close the socket without finishing the body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Headers(dict):
    """Recorded request headers: keys stored lower-case, lookups ignore case as HTTP does."""

    def __init__(self, items: object = ()) -> None:
        super().__init__((str(k).lower(), v) for k, v in dict(items).items())  # type: ignore[call-overload]

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return super().get(key.lower(), default)


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": None}}


def _split(text: str, parts: int | None) -> list[str]:
    if not text:
        return []
    if parts is None:
        return re.findall(r"\S+\s*|\s+", text)
    parts = max(1, parts)
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _stream_events(reply: Reply, model: str) -> Iterator[str]:
    """The `data:` payloads of one streamed reply, in order."""
    created = int(time.time())

    def chunk(choices: list | None, **extra: object) -> str:
        body = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices, **extra}
        return json.dumps(body)

    def delta(d: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": d, "finish_reason": finish}]

    deltas = [{reply.reasoning_field: piece} for piece in _split(reply.reasoning or "", reply.chunks)]
    deltas += [{"content": piece} for piece in _split(reply.content, reply.chunks)]
    events = [chunk(delta({"role": "assistant", "content": ""}))]
    if reply.malformed:
        events.append('{"id": "chatcmpl-scripted", "choices": [{"delta": {"content": "trunc')
    for i, d in enumerate(deltas):
        if reply.stream_error is not None and i == len(deltas) // 2:
            break
        events.append(chunk(delta(d)))
    if reply.stream_error is not None:
        error = reply.stream_error if "error" in reply.stream_error else {"error": reply.stream_error}
        events.append(json.dumps(error))
        yield from events
        return

    usage = reply.usage if reply.usage_style != "none" else None
    if reply.finish_reason is not None:
        extra = {"usage": usage} if usage is not None and reply.usage_style == "on_finish_chunk" else {}
        events.append(chunk(delta({}, reply.finish_reason), **extra))
    if usage is not None and reply.usage_style == "final_empty_choices":
        events.append(chunk([], usage=usage))
    elif usage is not None and reply.usage_style == "final_null_choices":
        events.append(chunk(None, usage=usage))
    if reply.send_done:
        events.append("[DONE]")
    yield from events

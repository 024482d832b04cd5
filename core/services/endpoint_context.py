"""The model's context size, as the server states it: llama.cpp's ``/props`` and model list, vLLM's model list.

The check before the baseline asks here first, so it never has to send a prompt as long as the
run's longest to find out (minutes on a small CPU server). Servers that state nothing (hosted
APIs, Ollama's OpenAI endpoint, llama-cpp-python's server) get None: then the configured
``endpoint.context_tokens`` decides, or, with none, the long call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerContext:
    tokens: int
    source: str  # where it was read, for the event and the message


def _positive_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_props(props: Any) -> ServerContext | None:
    """llama.cpp's ``GET /props``: a slot's context under default_generation_settings (older builds: top level)."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    n = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else 0
    n = n or _positive_int(props.get("n_ctx"))
    return ServerContext(n, "llama.cpp /props (n_ctx)") if n else None


def from_models(listing: Any, model: str) -> ServerContext | None:
    """The model list: vLLM's ``max_model_len``, llama.cpp's ``meta.n_ctx`` (a slot's context, not n_ctx_train)."""
    entries = listing.get("data") if isinstance(listing, dict) else listing
    if not isinstance(entries, list):
        return None
    entries = [e for e in entries if isinstance(e, dict)]
    named = [e for e in entries if e.get("id") == model] or (entries if len(entries) == 1 else [])
    for entry in named:
        n = _positive_int(entry.get("max_model_len"))
        if n:
            return ServerContext(n, "vLLM /v1/models (max_model_len)")
        meta = entry.get("meta")
        n = _positive_int(meta.get("n_ctx")) if isinstance(meta, dict) else 0
        if n:
            return ServerContext(n, "llama.cpp /v1/models (meta.n_ctx)")
    return None


async def server_context(client: Any) -> ServerContext | None:
    """What the server says the model's context is, or None; a few seconds at most, never raises."""
    found = from_props(await client.server_json("/props", root=True))
    if found is None:
        found = from_models(await client.server_json("/models"), client.model)
    return found

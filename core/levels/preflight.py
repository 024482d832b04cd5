"""The check before the baseline: seconds, not minutes, before any training is spent.

1. The server's own statement of the model's context (llama.cpp ``/props``, vLLM's model list),
   when it makes one: a context smaller than this run needs stops the run; one smaller than
   ``endpoint.context_tokens`` (or any, with none configured) becomes the prompts' budget.
2. One short chat call with its own 16-token limit (``endpoint.max_tokens`` never raises it): a
   wrong or missing key, an unknown model, a server that is not there stops the run; it also
   settles the response_format the endpoint accepts, and its prompt, counted by the server and
   by us, shows whether our token estimate holds for this model's tokenizer.
3. Only when neither the server nor the config says how large the context is: one call as long as
   the run's longest prompt (the old check; a context too small answers it with a 400).
"""
from __future__ import annotations

import inspect
from typing import Any

import mechanisms.base as mechanism_base
from core.record import events as ev
from core.services.llm import PROBE_SCHEMA, LLMError, context_exceeded, probe_messages
from . import prompts
from .budget import MARGIN_TOKENS, MIN_REPLY_TOKENS, estimate_tokens, messages_tokens
from .context import FatalRunError, RunContext

PROBE_MAX_TOKENS = 16  # the check's reply: {"ok": true}
HISTORY_FLOOR = 200  # tokens of history a level's prompt keeps however small the context
SAMPLE_CHARS = 600  # the short call's text: the script's start (~200 tokens: seconds even on a loaded CPU server)


def needed_context_tokens(cfg: Any) -> int:
    """The smallest context this run's prompts fit in once trimmed, with the smallest reply and the margin."""
    def fixed(*names: str) -> int:
        return sum(estimate_tokens(prompts.load(n)) for n in names)

    floors = {"inner": fixed("inner_system", "inner_propose") + HISTORY_FLOOR + 300,  # 300: the schema and notes
              "strategy": fixed("strategy_system", "strategy_cycle") + HISTORY_FLOOR,
              "research": fixed("research_system", "research_explore") + HISTORY_FLOOR
              + estimate_tokens(inspect.getsource(mechanism_base))}
    levels = [lv for lv in floors if lv == "inner" or lv in cfg.search.active_levels]
    return max(floors[lv] for lv in levels) + MIN_REPLY_TOKENS + MARGIN_TOKENS


async def check_endpoint(ctx: RunContext, longest_prompt_tokens: int, sample: str) -> ev.EndpointChecked:
    """The check (see the module's docstring), recorded as EndpointChecked; FatalRunError says why it failed.
    ``sample``: text like the run's prompts (the script), for the short call."""
    cfg = ctx.cfg
    started = ctx.monotonic()
    configured = cfg.endpoint.context_tokens or 0
    needed = needed_context_tokens(cfg)
    stated = await ctx.endpoint_context()
    if stated is not None and stated.tokens < needed:
        raise FatalRunError(f"the model's context window is too small for this run: the server says {stated.tokens} "
                            f"tokens ({stated.source}), and this run's prompts need about {needed} at the least; "
                            "start the server with a larger context (llama-server -c)")
    if configured and configured < needed and (stated is None or configured <= stated.tokens):
        raise FatalRunError(f"endpoint.context_tokens = {configured} is too small for this run: its prompts need "
                            f"about {needed} tokens at the least")
    long_call = stated is None and not configured
    tokens = longest_prompt_tokens if long_call else 0
    messages = probe_messages(tokens, "" if long_call else sample[:SAMPLE_CHARS])
    try:  # never streamed: llama-cpp-python's server reports an overflow as a 200 with an empty stream
        result = await ctx.call_llm("inner", "endpoint_check", messages, iteration=0, json=True, schema=PROBE_SCHEMA,
                                    max_tokens=PROBE_MAX_TOKENS, stream=False, wait_out=False)
    except LLMError as exc:
        if context_exceeded(exc):
            raise FatalRunError(f"the model's context window is too small for this run's prompts (about "
                                f"{tokens} tokens; search.history_tokens sets most of it): {exc}") from exc
        raise FatalRunError(f"the LLM endpoint check before the baseline failed: {exc}") from exc
    estimated = messages_tokens(messages)
    counted = result.usage.prompt_tokens
    if stated is not None:
        applied = not configured or stated.tokens < configured
        context, source = (stated.tokens, stated.source) if applied else (configured, "configured")
    else:
        applied, context = False, configured
        source = "configured" if configured else "unknown: a prompt as long as the longest fitted"
    note = ""
    if configured and stated is not None and stated.tokens < configured:
        note = f"endpoint.context_tokens = {configured} is more than the server's {stated.tokens}: the server's is used"
    elif counted > estimated * 1.1:  # the tokenizer is denser than our estimate: budgets would overflow
        note = (f"the server counted {counted} prompt tokens where we estimated {estimated}: prompts may not fit; "
                "set endpoint.context_tokens lower")
    return ctx.emit(ev.EndpointChecked(context_tokens=context, source=source, applied=applied, needed_tokens=needed,
                                       server_tokens=counted, estimated_tokens=estimated,
                                       duration_s=ctx.monotonic() - started, note=note))

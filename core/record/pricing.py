"""What an LLM call costs: US dollars per million prompt and completion tokens, by model name.

The price of a session's model, first found wins: ``endpoint.price_in_per_m`` /
``price_out_per_m``; the config's ``[prices]`` table (model-name patterns, fnmatch,
case-insensitive, in file order); a local server (localhost, 127.0.0.1, ::1: your own
hardware, whose time the GPU-hour caps count) at $0; the built-in table below for the hosted
providers the README shows. Anything else has no known price: its tokens are counted and its
dollars are not, and the budget and the report say so. Works on plain data (a recorded
session config) as on a live one.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

# US dollars per million tokens (input, output), DeepSeek's list prices when this table was written;
# a provider changes them: `[prices]` or endpoint.price_in_per_m / price_out_per_m override.
DEFAULT_PRICES: tuple[tuple[str, float, float], ...] = (
    ("deepseek-v4-pro*", 0.55, 2.19),
    ("deepseek-reasoner*", 0.55, 2.19),
    ("deepseek-*", 0.27, 1.10),
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


@dataclass(frozen=True)
class Price:
    input: float  # $ per 1M prompt tokens
    output: float  # $ per 1M completion tokens
    source: str  # where it came from, said beside every dollar figure

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1e6 * self.input + completion_tokens / 1e6 * self.output


def price_of(config: Any) -> Price | None:
    """The price of the config's model (a Config or its plain data); None when no price is known."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(data, Mapping):
        return None
    endpoint = data.get("endpoint") if isinstance(data.get("endpoint"), Mapping) else {}
    if endpoint.get("provider", "offline") == "offline":
        return Price(0.0, 0.0, "offline: no LLM")
    pin, pout = endpoint.get("price_in_per_m"), endpoint.get("price_out_per_m")
    if pin is not None or pout is not None:
        return Price(float(pin or 0.0), float(pout or 0.0), "endpoint.price_in_per_m / price_out_per_m")
    model = str(endpoint.get("model", "")).lower()
    table = data.get("prices") if isinstance(data.get("prices"), Mapping) else {}
    for pattern, entry in table.items():
        if isinstance(entry, Mapping) and fnmatch.fnmatchcase(model, str(pattern).lower()):
            return Price(float(entry.get("input", 0.0)), float(entry.get("output", 0.0)), f"[prices] {pattern!r}")
    host = urlsplit(str(endpoint.get("base_url", ""))).hostname or ""
    if host in LOCAL_HOSTS:
        return Price(0.0, 0.0, f"a local server ({host}): no per-token price")
    for pattern, pin_default, pout_default in DEFAULT_PRICES:
        if fnmatch.fnmatchcase(model, pattern):
            return Price(pin_default, pout_default, f"built-in price of {pattern!r}")
    return None


def unknown_price_note(config: Any) -> str:
    """What the budget says when the model has no price: tokens counted, dollars not."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    model = (data.get("endpoint") or {}).get("model", "") if isinstance(data, Mapping) else ""
    return (f"no price known for model {model!r}: its tokens are counted, its dollars are not "
            "(set [prices] or endpoint.price_in_per_m / price_out_per_m)")

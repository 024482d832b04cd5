"""Events with every string in them made safe for a sink (see :mod:`core.record.safe_text`).

A sink that shows events (the headless printer, replay, the app) passes each one through
:func:`safe_event` before formatting it, so no field of any event type, today's or a
future one, reaches a terminal raw. Strings inside dicts and lists (a proposal's
changes, keys included) are cleaned too; an event with nothing to clean is returned as is.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import msgspec

from core.record.safe_text import safe_block, safe_line

E = TypeVar("E", bound=msgspec.Struct)


def safe_event(event: E, *, block: bool = False) -> E:
    """``event`` with its strings cleaned: one line each, or (``block``) newlines and tabs kept."""
    return _clean_struct(event, safe_block if block else safe_line)


def _clean_struct(struct: E, clean: Callable[[str], str]) -> E:
    changed: dict[str, Any] = {}
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        cleaned = _clean(value, clean)
        if cleaned is not value:
            changed[name] = cleaned
    return msgspec.structs.replace(struct, **changed) if changed else struct


def _clean(value: Any, clean: Callable[[str], str]) -> Any:
    kind = type(value)
    if kind is str:
        out = clean(value)
        return value if out == value else out
    if kind is dict:
        items = [(_clean(k, clean), _clean(v, clean)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items())):
            return value
        return dict(items)
    if kind in (list, tuple):
        cleaned = [_clean(v, clean) for v in value]
        if all(c is v for c, v in zip(cleaned, value)):
            return value
        return kind(cleaned)
    if isinstance(value, msgspec.Struct):  # a typed value inside an event (a proposal's change): its fields too
        return _clean_struct(value, clean)
    return value

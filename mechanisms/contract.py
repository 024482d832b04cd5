"""The written contract of what a mechanism's hooks receive and may return, as plain data.

One contract for both sides of the worker boundary and for every mechanism: the
validator's dry run, the engine's runtime calls of generated mechanisms (decoded from the
worker's JSON into fresh builtins) and the built-ins (which stay in-process) all pass
through :func:`check`. A value that breaks it deactivates the mechanism with the reason.

Wire form of each hook's return value (JSON):

| hook | may return |
|---|---|
| ``on_attach``, ``observe`` | ``null`` (anything else is ignored by the worker and sent as null) |
| ``shape_prompt`` | ``null`` or a string of at most ``MAX_TEXT`` characters |
| ``review_proposal`` | ``null``, ``{"veto": reason}`` or ``{"modify": {param: scalar}, "note": text}`` |
| ``decide`` | ``null``, ``"keep"`` or ``"discard"`` |

What hooks receive is plain data too. A proposal (``review_proposal``'s argument) is
``{"changes": {param: value}, "hypothesis": text}``, and each record of the state's trace
carries ``"changes": {param: value}``: the parameter part of the engine's typed change
(``core/record/change.py``), converted where the engine calls a hook (``core/levels/trace.py``'s
snapshot, ``core/engine/mechanism_host.py``), so mechanisms never see the engine's types.
``Modify(changes)`` replaces those parameters and keeps the rest of the change.

Names that come from generated code go through :func:`safe_name` before they reach a
path, a prompt or the screen. Standard library only.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from typing import Any, Optional

from mechanisms.base import HOOKS, Modify, SearchState, Veto

MAX_TEXT = 4000  # characters a prompt note, veto reason or note may carry
MAX_NAME = 40
MAX_CHANGES = 64
DECISIONS = ("keep", "discard")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# The code points core/record/safe_text.py never emits, newline and tab aside (tests/test_safe_text.py compares)
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\u3164\ud800-\udfff\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]")


class ContractError(ValueError):
    """A hook's return value breaks the contract; the message says how."""


_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,%d}\Z" % (MAX_NAME - 1))


def is_valid_name(name: Any) -> bool:
    """Whether a mechanism's class name or ``name`` may be used as it is (1-40 letters, digits, _ or -)."""
    return type(name) is str and bool(_VALID_NAME.match(name))


def safe_name(name: Any, fallback: str = "mechanism") -> str:
    """A name from generated code made fit for a path, a prompt and the screen."""
    text = name if type(name) is str else ""
    cleaned = _UNSAFE.sub("_", text).strip("_-")[:MAX_NAME]
    return cleaned or fallback


def clean_text(text: str) -> str:
    """Text from a mechanism without control or invisible characters (terminal escapes, bidi, tags), bounded."""
    return _CONTROL.sub("", text[:MAX_TEXT])


def state_to_wire(state: SearchState) -> dict[str, Any]:
    """The snapshot a hook receives, as JSON-ready data."""
    return dataclasses.asdict(state)


def state_from_wire(data: dict[str, Any]) -> SearchState:
    fields = {f.name for f in dataclasses.fields(SearchState)}
    return SearchState(**{k: v for k, v in data.items() if k in fields})


def to_wire(hook: str, value: Any) -> Any:
    """A hook's Python return value in wire form (run where the mechanism runs).

    Only exact builtin types are passed on, so nothing of the mechanism's own classes
    (a str subclass, a dict subclass) survives; anything else becomes a description
    that :func:`check` then refuses.
    """
    if hook in ("on_attach", "observe") or value is None:
        return None
    if type(value) is Veto:
        return {"veto": value.reason if type(value.reason) is str else _unsupported(value.reason)}
    if type(value) is Modify:
        return {"modify": value.changes if type(value.changes) is dict else _unsupported(value.changes),
                "note": value.note if type(value.note) is str else ""}
    if type(value) in (str, int, float, bool):
        return value
    return _unsupported(value)


_MARK = "$unsupported"  # no parameter name can collide: names are identifiers


def _unsupported(value: Any) -> dict[str, str]:
    return {_MARK: _describe(value)}


def _is_unsupported(value: Any) -> bool:
    return type(value) is dict and set(value) == {_MARK} and type(value[_MARK]) is str


def _describe(value: Any) -> str:
    """What a value is, without running any method of a mechanism's own class."""
    kind = type(value)
    if kind in (str, int, float, bool, type(None), dict, list, tuple, set):
        return f"{kind.__name__} {reprlib.repr(value)}"
    return f"an instance of {kind.__qualname__}"[:200]


def _is_scalar(v: Any) -> bool:
    if type(v) is float:
        return math.isfinite(v)
    return v is None or type(v) in (str, int, bool)


def _shown(value: Any) -> str:
    """A wire value as a refusal names it (wire values are fresh builtins)."""
    if _is_unsupported(value):
        text = value[_MARK]
    else:
        text = _describe(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check(hook: str, value: Any, schema: Optional[dict[str, Any]] = None) -> Any:
    """The value in its checked plain form, or ContractError with the reason.

    For ``review_proposal`` the result is None, ``Veto`` or ``Modify`` (fresh objects of
    our own classes); for the other hooks a builtin value.
    """
    if hook not in HOOKS:
        raise ContractError(f"unknown hook {hook!r}")
    if hook in ("on_attach", "observe"):
        return None
    if value is None:
        return None
    if hook == "shape_prompt":
        if type(value) is not str:
            raise ContractError(f"shape_prompt returned {_shown(value)}; it must return a str or None")
        return clean_text(value)
    if hook == "decide":
        if type(value) is str and value in DECISIONS:
            return value
        raise ContractError(f"decide returned {_shown(value)}; it must return 'keep', 'discard' or None")
    # review_proposal
    if type(value) is dict and set(value) == {"veto"}:
        reason = value["veto"]
        if type(reason) is not str:  # an unsupported marker is a dict
            raise ContractError(f"review_proposal returned Veto({_shown(reason)}); the reason must be a str")
        return Veto(clean_text(reason))
    if type(value) is dict and "modify" in value and set(value) <= {"modify", "note"}:
        changes, note = value["modify"], value.get("note", "")
        if type(changes) is not dict or _is_unsupported(changes):
            raise ContractError(f"review_proposal returned Modify({_shown(changes)}); the changes must be a dict")
        if len(changes) > MAX_CHANGES:
            raise ContractError(f"review_proposal returned Modify with {len(changes)} changes (at most {MAX_CHANGES})")
        bad = [k for k, v in changes.items() if type(k) is not str or not _is_scalar(v)]
        if bad:
            raise ContractError(f"review_proposal returned Modify with non-scalar or non-text entries: "
                                f"{', '.join(safe_name(k, '?') for k in bad)}")
        unknown = sorted(k for k in changes if schema and k not in schema)
        if unknown:
            raise ContractError(f"review_proposal returned Modify with unknown parameter(s) "
                                f"{', '.join(safe_name(k, '?') for k in unknown)}; known: {', '.join(schema or {})}")
        return Modify(dict(changes), clean_text(note) if type(note) is str else "")
    raise ContractError(f"review_proposal returned {_shown(value)}; it must return None, Veto(reason) or Modify(changes)")


def check_local(hook: str, value: Any, schema: Optional[dict[str, Any]] = None) -> Any:
    """:func:`check` for a mechanism that runs in this process (the built-ins)."""
    return check(hook, to_wire(hook, value), schema)

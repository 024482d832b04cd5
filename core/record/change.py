"""A proposed change to the training script: one typed value that every proposal event carries.

A tagged union (the JSON ``kind`` key names the variant), so the log says what a change is
rather than leaving it to be guessed from a dict's keys:

- :class:`ParamChange` — constant changes, parameter name → new value: what Level 1 proposes
  today (``{"kind": "params", "params": {"LR": 0.02}}``).
- :class:`CodeEdit` — exact-text find/replace blocks on the script, with constant changes
  beside them (``search.scope = "code"``; not proposed yet). It carries ``params`` too, so a
  reader that only wants the constants (the freeze rule's statistics, a repeat check) reads
  ``change.params`` whichever variant it holds.

Logs written before this type hold ``changes`` as a plain mapping of parameter → value; that
shape is read as a :class:`ParamChange` (:func:`as_change`, used by the event decoder and by
the events' constructors), so old sessions replay and resume unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Union

import msgspec

ChangeKind = Literal["params", "code"]
# Parameter name -> value: the content of a ParamChange, as a proposer or a mechanism hands it over.
Params = dict[str, Any]


class ParamChange(msgspec.Struct, frozen=True, kw_only=True, tag="params", tag_field="kind"):
    """New values for top-level constants of the script, by name (an empty mapping: no change)."""

    params: Params = {}


class EditBlock(msgspec.Struct, frozen=True, kw_only=True):
    """Replace the one exact occurrence of ``find`` in the script with ``replace``."""

    find: str
    replace: str


class CodeEdit(msgspec.Struct, frozen=True, kw_only=True, tag="code", tag_field="kind"):
    """Edits to the script's code, with constant changes beside them (code-level proposals)."""

    params: Params = {}
    edits: list[EditBlock] = []


Change = Union[ParamChange, CodeEdit]
NO_CHANGE = ParamChange()


def as_change(value: Any) -> Change:
    """A :data:`Change` from a change, the plain data of one, or an older log's name → value mapping.

    Plain data is recognised by its ``kind`` tag next to only the variant's own keys, so an old
    mapping is never mistaken for one (a parameter named ``kind`` would need ``params`` too).
    """
    if isinstance(value, (ParamChange, CodeEdit)):
        return value
    if value is None:
        return NO_CHANGE
    if not isinstance(value, Mapping):
        raise TypeError(f"a change must be a mapping of parameter -> value or a tagged change, got "
                        f"{type(value).__name__}")
    if is_tagged(value):
        return msgspec.convert(dict(value), Change)  # type: ignore[arg-type]
    return ParamChange(params=dict(value))


def is_tagged(value: Mapping[str, Any]) -> bool:
    """Whether plain data is a change's tagged form (else it is an older log's name -> value mapping)."""
    kind = value.get("kind")  # the variant's keys only: what they hold is msgspec's to check, and to refuse
    if kind == "params":
        return set(value) <= {"kind", "params"}
    if kind == "code":
        return set(value) <= {"kind", "params", "edits"}
    return False


def params_change(params: Mapping[str, Any]) -> ParamChange:
    """The change that sets these constants (a copy: the caller's mapping stays its own)."""
    return ParamChange(params=dict(params))


def with_params(change: Change, params: Mapping[str, Any]) -> Change:
    """``change`` with its constants replaced (validated values, a mechanism's modification); edits stay."""
    return msgspec.structs.replace(change, params=dict(params))

"""The JSON schema of each level's answer, sent as ``response_format`` ``json_schema``.

Each rule is written in the features a decoder enforces where there is one: Level 1
only the editable, unfrozen parameters, one to max_changes of them, as enums where the
set is discrete (without the current value) and integer ranges; Level 1.5 only freezes
of the rule's candidates and unfreezes of frozen parameters; the critique round only one
of its candidates. What a server does not enforce (llama.cpp: a number's minimum and
maximum, maxProperties) every level still checks, and re-asks with the reason.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from core.record.change import EditBlock
from core.services.schema import closed, narrowed
from core.services.literals import same_value

if TYPE_CHECKING:
    from core.services.script import ElementRange, ParamSpec

HYPOTHESIS_MAX_CHARS = 300
TEXT_MAX_CHARS = 600
GRID_STEPS = 6  # grid values each side of the current one (endpoint.float_grid)


def value_schema(spec: "ParamSpec", *, float_grid: bool = False) -> dict[str, Any]:
    """What one parameter's new value may be, in the schema features decoders enforce.

    Discrete sets (choices, bools, powers of two) are enums without the current value;
    an integer range is two ranges around it (llama.cpp compiles integer bounds and anyOf);
    a float range is sent as minimum/maximum, which llama.cpp ignores: ``float_grid``
    offers an enum of valid values around the current one instead (a tuple of bounded floats: the
    tuples that move one element along its grid).
    """
    spec = narrowed(spec)  # a frozen direction: its bound becomes the current value, its choice drops out
    current = spec.value
    if spec.kind == "bool":
        return {"enum": [not current]}
    if spec.choices is not None:
        others = [c for c in spec.choices if not same_value(c, current)]
        return {"enum": [list(c) if isinstance(c, tuple) else c for c in (others or list(spec.choices))]}
    if spec.kind == "int" and spec.pow2 and spec.minimum is not None and spec.maximum is not None:
        powers = [1 << k for k in range(0, 63) if spec.minimum <= (1 << k) <= spec.maximum and (1 << k) != current]
        if powers:
            return {"enum": powers}
    if spec.kind == "int":
        return _int_schema(spec.minimum, spec.maximum, current)
    if spec.kind == "float":
        if float_grid:
            grid = float_grid_values(spec)
            if grid:
                return {"enum": grid}
        out: dict[str, Any] = {"type": "number"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
        return out
    if spec.kind == "tuple" and isinstance(current, tuple):
        n = len(current)
        ranges = spec.elements or (None,) * n
        if float_grid and n and all(_grid_element(v, r) for v, r in zip(current, ranges)):
            # llama.cpp ignores an element's minimum/maximum: whole tuples that move one element along
            # its grid, the current tuple left out
            options = [list(current[:i]) + [v] + list(current[i + 1:])
                       for i, (x, r) in enumerate(zip(current, ranges)) for v in element_grid(x, r) if v != x]
            if options:
                return {"enum": options}
        items = [_element_schema(v, r) for v, r in zip(current, ranges)]
        return {"type": "array", "minItems": n, "maxItems": n, "prefixItems": items}
    return {"type": "string", "minLength": 1}


def _int_schema(lo: float | None, hi: float | None, current: object) -> dict[str, Any]:
    def rng(a: float | None, b: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        if a is not None:
            out["minimum"] = int(math.ceil(a))
        if b is not None:
            out["maximum"] = int(math.floor(b))
        return out
    if not isinstance(current, int) or (lo is not None and current < lo) or (hi is not None and current > hi):
        return rng(lo, hi)
    parts = [rng(lo, current - 1), rng(current + 1, hi)]
    parts = [p for p in parts if p.get("minimum", -math.inf) <= p.get("maximum", math.inf)]
    return parts[0] if len(parts) == 1 else {"anyOf": parts}


def float_grid_values(spec: "ParamSpec", steps: int = GRID_STEPS) -> list[float]:
    """Valid values around a float's current one: ratios of sqrt(2) on a log scale (or for an unbounded
    positive value), else a twentieth of its range per step; within bounds, the current value left out."""
    x = spec.value
    assert isinstance(x, (int, float))
    lo, hi = spec.minimum, spec.maximum
    if spec.log_scale or ((lo is None or hi is None) and x > 0):
        raw = [x * 2 ** (k / 2) for k in range(-steps, steps + 1)]
    elif lo is not None and hi is not None:
        step = (hi - lo) / 20
        raw = [x + k * step for k in range(-steps, steps + 1)]
    else:
        raw = [x + k * 0.1 for k in range(-steps, steps + 1)]
    out: list[float] = []
    for v in raw:
        v = float(f"{v:.3g}")
        if (lo is not None and v < lo) or (hi is not None and v > hi) or same_value(v, float(x)) or v in out:
            continue
        out.append(v)
    return out


def element_grid(value: float, bounds: "ElementRange", steps: int = GRID_STEPS) -> list[float]:
    """A bounded float element's valid values, a twentieth of its range apart, its current value included."""
    lo, hi = bounds.minimum, bounds.maximum
    assert lo is not None and hi is not None
    out: list[float] = []
    for k in range(-steps, steps + 1):
        v = float(f"{value + k * (hi - lo) / 20:.3g}")
        if v < lo or v > hi or (bounds.below and v >= hi) or v in out:
            continue
        out.append(v)
    return out


def _grid_element(value: object, bounds: "ElementRange | None") -> bool:
    return (isinstance(value, float) and bounds is not None and bounds.minimum is not None
            and bounds.maximum is not None)


def _element_schema(value: object, bounds: "ElementRange | None") -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        out: dict[str, Any] = {"type": "integer" if isinstance(value, int) else "number"}
        if bounds is not None and bounds.minimum is not None:
            out["minimum"] = bounds.minimum
        if bounds is not None and bounds.maximum is not None:
            out["exclusiveMaximum" if bounds.below else "maximum"] = bounds.maximum
        return out
    return {"type": "string"}


def proposal_schema(schema: Mapping[str, "ParamSpec"], frozen: Iterable[str], *, max_changes: int = 3,
                    float_grid: bool = False, max_edits: int = 0) -> dict:
    """Level 1: ``{"changes": [{"name": ACTIVE_PARAM, "value": v}, ...1 to max_changes], "hypothesis": "..."}``.

    A list of name/value items, not an object: llama.cpp's grammar ignores maxProperties
    but enforces maxItems, and an anyOf per parameter ties each value to its name's type.
    ``max_edits`` > 0 (``search.scope = "code"``): an ``edits`` list of up to that many exact
    find/replace blocks beside the changes, which may then be empty (a pure code edit).
    """
    skip = set(frozen)
    items = [{"type": "object",
              "properties": {"name": {"enum": [name]}, "value": value_schema(spec, float_grid=float_grid)},
              "required": ["name", "value"], "additionalProperties": False}
             for name, spec in schema.items() if not spec.locked and name not in skip and not closed(spec)]
    change: dict[str, Any] = {"anyOf": items} if items else {"type": "object"}
    out = {
        "type": "object",
        "properties": {
            "changes": {"type": "array", "items": change, "minItems": 1, "maxItems": max_changes},
            "hypothesis": {"type": "string", "minLength": 1, "maxLength": HYPOTHESIS_MAX_CHARS},
        },
        "required": ["changes", "hypothesis"],
        "additionalProperties": False,
    }
    if max_edits > 0:
        out["properties"]["changes"]["minItems"] = 0
        out["properties"]["edits"] = {"type": "array", "items": EDIT_SCHEMA, "minItems": 0, "maxItems": max_edits}
        out["required"] = ["changes", "edits", "hypothesis"]
    return out


EDIT_MAX_CHARS = 4000
EDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"find": {"type": "string", "minLength": 1, "maxLength": EDIT_MAX_CHARS},
                   "replace": {"type": "string", "maxLength": EDIT_MAX_CHARS}},
    "required": ["find", "replace"],
    "additionalProperties": False,
}


def edits_of(value: Any) -> list[EditBlock]:
    """A reply's edit blocks from the schema's list of ``{"find", "replace"}`` items; ValueError says what is wrong."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError('"edits" must be a list of {"find": ..., "replace": ...} items')
    out = []
    for item in value:
        if (not isinstance(item, dict) or set(item) != {"find", "replace"}
                or not isinstance(item["find"], str) or not isinstance(item["replace"], str)):
            raise ValueError(f'each edit must be {{"find": EXACT_TEXT, "replace": NEW_TEXT}}, got {str(item)[:80]}')
        out.append(EditBlock(find=item["find"], replace=item["replace"]))
    return out


def proposals_schema(schema: Mapping[str, "ParamSpec"], frozen: Iterable[str], k: int, *, max_changes: int = 3,
                     float_grid: bool = False, max_edits: int = 0) -> dict:
    """Level 1 over parallel trials: ``{"proposals": [k proposals]}``, one for each free slot."""
    one = proposal_schema(schema, frozen, max_changes=max_changes, float_grid=float_grid, max_edits=max_edits)
    return {
        "type": "object",
        "properties": {"proposals": {"type": "array", "items": one, "minItems": k, "maxItems": k}},
        "required": ["proposals"],
        "additionalProperties": False,
    }


def changes_of(value: Any) -> dict[str, Any]:
    """A reply's changes as parameter: value, from the schema's list of ``{"name", "value"}`` items or
    the object ``{"NAME": value}`` free text may use; ValueError says what is wrong (a name with two values too: small models repeat one change, which is
    the same change once)."""
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, list):
        raise ValueError('"changes" must be a list of {"name": ..., "value": ...} items')
    out: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) != {"name", "value"} or not isinstance(item["name"], str):
            raise ValueError(f'each change must be {{"name": PARAMETER, "value": VALUE}}, got {str(item)[:80]}')
        if item["name"] in out and not same_value(out[item["name"]], item["value"]):
            raise ValueError(f'{item["name"]} is changed twice in one proposal')  # the same change twice is one
        out[item["name"]] = item["value"]
    return out

def _names_array(names: list[str]) -> dict[str, Any]:
    if not names:
        return {"type": "array", "maxItems": 0}
    return {"type": "array", "items": {"enum": names}, "uniqueItems": True, "maxItems": len(names)}


def strategy_schema(candidates: list[str], unfreezable: list[str]) -> dict:
    """Level 1.5: freeze only the rule's candidates, unfreeze only frozen parameters, keep with a reason."""
    text = {"type": "string", "maxLength": TEXT_MAX_CHARS}
    keep: dict[str, Any] = {"type": "object", "additionalProperties": False,
                            "properties": {n: {"type": "string", "minLength": 1, "maxLength": 300}
                                           for n in candidates}}
    return {
        "type": "object",
        "properties": {"diagnosis": text, "freeze": _names_array(candidates),
                       "unfreeze": _names_array(unfreezable), "keep": keep,
                       "guidance": {"type": "string", "minLength": 1, "maxLength": 400}, "reasoning": text},
        "required": ["diagnosis", "freeze", "unfreeze", "keep", "guidance", "reasoning"],
        "additionalProperties": False,
    }


def critique_schema(candidates: list[str]) -> dict:
    """The critique round: scores, and ``selected`` one of the explore round's candidates when they are known."""
    selected: dict[str, Any] = {"enum": candidates} if candidates else {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "properties": {"scores": {"type": "object", "additionalProperties": {"type": "number"}},
                       "selected": selected, "reason": {"type": "string", "maxLength": TEXT_MAX_CHARS}},
        "required": ["scores", "selected", "reason"],
        "additionalProperties": False,
    }


def compact(schema: Any, *, max_enum: int = 6) -> str:
    """A JSON schema in one short line for people (``bilevel doctor``): types, bounds, enums, counts."""
    if not isinstance(schema, dict):
        return "?"
    if "enum" in schema:
        values = [json.dumps(v) for v in schema["enum"]]
        shown = values if len(values) <= max_enum else values[:max_enum - 1] + ["…", values[-1]]
        return "{" + "|".join(shown) + "}"
    if "anyOf" in schema:
        return " or ".join(compact(s, max_enum=max_enum) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        fields = [f"{k}{'' if k in required else '?'}: {compact(v, max_enum=max_enum)}"
                  for k, v in schema["properties"].items()]
        return "{" + ", ".join(fields) + "}"
    if kind == "array":
        if "prefixItems" in schema:
            return "[" + ", ".join(compact(s, max_enum=max_enum) for s in schema["prefixItems"]) + "]"
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        count = f"{lo}..{hi}" if hi is not None else f"{lo}+"
        return f"[{count} × {compact(schema.get('items', {}), max_enum=max_enum)}]"
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        if lo is None and hi is None:
            return kind
        return f"{kind} in [{'' if lo is None else lo}, {'' if hi is None else hi}{')' if 'exclusiveMaximum' in schema else ']'}"
    if kind == "string" and "maxLength" in schema:
        return f"string ≤{schema['maxLength']}"
    return str(kind)

"""The JSON schema of each level's answer, sent as ``response_format`` ``json_schema``.

A server with constrained decoding (llama.cpp, vLLM, OpenAI) can then only write a reply
of this shape: Level 1 only the editable, unfrozen parameters with their types, bounds
and allowed values; Level 1.5 only freezes of the rule's candidates and unfreezes of
frozen parameters; the critique round only one of its candidates. These shape the reply
and nothing more: every level still validates what comes back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

from core.services.schema import closed, narrowed

if TYPE_CHECKING:
    from core.services.script import ParamSpec

HYPOTHESIS_MAX_CHARS = 300
TEXT_MAX_CHARS = 600


def value_schema(spec: "ParamSpec") -> dict[str, Any]:
    """What one parameter's value may be, as far as JSON schema can say (pow2 and log scale it cannot)."""
    spec = narrowed(spec)  # a frozen direction: its bound becomes the current value, its choice drops out
    if spec.choices is not None and spec.kind != "bool":
        return {"enum": list(spec.choices)}
    if spec.kind == "bool":
        return {"type": "boolean"}
    if spec.kind in ("int", "float"):
        out: dict[str, Any] = {"type": "integer" if spec.kind == "int" else "number"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
        return out
    if spec.kind == "tuple" and isinstance(spec.value, tuple):
        n = len(spec.value)
        items = [_element_schema(v) for v in spec.value]
        return {"type": "array", "minItems": n, "maxItems": n, "prefixItems": items}
    return {"type": "string", "minLength": 1}


def _element_schema(value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    return {"type": "string"}


def proposal_schema(schema: Mapping[str, "ParamSpec"], frozen: Iterable[str], *, max_changes: int = 3) -> dict:
    """Level 1: ``{"changes": {ACTIVE_PARAM: value, ...}, "hypothesis": "..."}``."""
    skip = set(frozen)
    active = {name: value_schema(spec) for name, spec in schema.items()
              if not spec.locked and name not in skip and not closed(spec)}
    return {
        "type": "object",
        "properties": {
            "changes": {"type": "object", "properties": active, "additionalProperties": False,
                        "minProperties": 1, "maxProperties": max_changes},
            "hypothesis": {"type": "string", "minLength": 1, "maxLength": HYPOTHESIS_MAX_CHARS},
        },
        "required": ["changes", "hypothesis"],
        "additionalProperties": False,
    }


def proposals_schema(schema: Mapping[str, "ParamSpec"], frozen: Iterable[str], k: int, *, max_changes: int = 3) -> dict:
    """Level 1 over parallel trials: ``{"proposals": [k proposals]}``, one for each free slot."""
    one = proposal_schema(schema, frozen, max_changes=max_changes)
    return {
        "type": "object",
        "properties": {"proposals": {"type": "array", "items": one, "minItems": k, "maxItems": k}},
        "required": ["proposals"],
        "additionalProperties": False,
    }

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

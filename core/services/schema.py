"""The search space of a training script: a schema of bounds, and validating proposals against it.

:func:`infer_schema` turns a script's parameters into :class:`~core.services.script.ParamSpec`
entries (kinds, bounds, choices, log scale, powers of two), with the config's locks and
bounds applied; :func:`validate_changes` checks a proposed change against that schema and
says, per bad change, what is wrong in words an LLM can act on.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from core.services.literals import CoercionError, coerce, format_value, is_power_of_two, same_value
from core.services.script import (ElementRange, Param, ParamSpec, ProposalError, TrainScript, choice_text,
                                  range_text, unknown_message)

__all__ = ["infer_schema", "validate_changes", "direction_of", "directions", "open_directions", "narrowed",
           "step_toward", "closed", "DIRECTION_WORDS"]

_BOUND_KEYS = {"min", "max", "choices", "log_scale", "pow2"}


def infer_schema(
    script: TrainScript,
    *,
    locked: Iterable[str] = (),
    bounds: Mapping[str, Mapping] | None = None,
) -> dict[str, ParamSpec]:
    """Default bounds for every parameter, with config overrides and locks applied.

    Unknown names in ``locked`` or ``bounds`` raise ValueError: a typo there would
    otherwise leave a parameter silently unprotected.
    """
    bounds = dict(bounds or {})
    locked_set = set(locked)
    unknown = sorted((set(bounds) | locked_set) - set(script.params))
    if unknown:
        raise ValueError(
            "unknown parameter(s) in config bounds/locks: "
            + ", ".join(unknown_message(name, script.params, prefix=False) for name in unknown)
        )
    schema: dict[str, ParamSpec] = {}
    for name, param in script.params.items():
        spec = _default_spec(param)
        if name in bounds:
            if not isinstance(bounds[name], Mapping):
                raise ValueError(f"{name}: bounds must be a table of min/max/choices, got {bounds[name]!r}")
            spec = _override(spec, bounds[name])
        if name in locked_set:
            spec = _replace(spec, locked=True)
        schema[name] = spec
    return schema


def _nice(x: float) -> float:
    """Trim float noise from derived bounds (0.04/100 -> 0.0004, not 0.00039999999999999996)."""
    return float(f"{x:.12g}")


def _default_spec(param: Param) -> ParamSpec:
    name, kind, value = param.name, param.kind, param.value
    base = ParamSpec(name=name, kind=kind, value=value)
    if kind == "bool":
        return _replace(base, choices=(True, False))
    if param.choices is not None:  # the script's own list: what any proposer can pick from
        return _replace(base, choices=param.choices)
    if kind == "tuple" and isinstance(value, tuple):
        return _replace(base, elements=tuple(element_range(v) for v in value))
    if kind not in ("int", "float"):
        return base
    number = value
    assert isinstance(number, (int, float))
    if name.endswith("_LR") or "DECAY" in name:
        if number == 0:
            return _replace(base, minimum=0, maximum=1)
        if number > 0:
            return _replace(base, minimum=_nice(number / 100), maximum=_nice(number * 100), log_scale=True)
        return base
    if kind == "int":
        assert isinstance(number, int)
        named_pow2 = "BATCH_SIZE" in name or "TOKENS" in name
        if is_power_of_two(number) and (param.pow2 or named_pow2):
            return _replace(base, minimum=max(1, number // 16), maximum=number * 16, pow2=True)
        if number > 0:
            return _replace(base, minimum=1, maximum=number * 4)
        return base
    if "RATIO" in name or "FRAC" in name:
        return _replace(base, minimum=min(0.0, number), maximum=max(1.0, number))
    return base


def element_range(value: object) -> ElementRange | None:
    """A tuple element's default range, inferred from its value in the script.

    A float in [0, 1) is a coefficient like Adam's betas: it stays in [0, 1) (a beta of 1 or
    below 0 diverges). Any other positive number keeps its magnitude within a factor of 100
    (ints: 1 to 4x). Strings, bools and non-positive numbers are not bounded.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and 0.0 <= value < 1.0:
        return ElementRange(0.0, 1.0, below=True)
    if isinstance(value, int) and value > 0:
        return ElementRange(1, value * 4)
    if value > 0:
        return ElementRange(_nice(value / 100), _nice(value * 100))
    return None


def _tuple_bounds(spec: ParamSpec, override: Mapping) -> tuple[ElementRange | None, ...]:
    """A tuple's element ranges with config min/max applied: a number bounds every element, a list each one."""
    assert isinstance(spec.value, tuple)
    n = len(spec.value)
    ranges = list(spec.elements or (None,) * n)

    def per_element(key: str) -> list[float | None] | None:
        if key not in override:
            return None
        raw = override[key]
        items = list(raw) if isinstance(raw, (list, tuple)) else [raw] * n
        if len(items) != n or any(x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)))
                                  for x in items):
            raise ValueError(f"{spec.name}: {key} must be a number or a list of {n} numbers, got {raw!r}")
        return items

    lows, highs = per_element("min"), per_element("max")
    for i, v in enumerate(spec.value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if (lows and lows[i] is not None) or (highs and highs[i] is not None):
                raise ValueError(f"{spec.name}: element {i} is a {type(v).__name__}, which min/max cannot bound")
            continue
        r = ranges[i] or ElementRange()
        if lows is not None:
            r = dataclasses.replace(r, minimum=lows[i])
        if highs is not None:
            r = dataclasses.replace(r, maximum=highs[i], below=False)  # a configured max is inclusive
        if r.minimum is not None and r.maximum is not None and r.minimum > r.maximum:
            raise ValueError(f"{spec.name}: element {i}: min {r.minimum} is greater than max {r.maximum}")
        ranges[i] = r
    return tuple(ranges)


def _override(spec: ParamSpec, override: Mapping) -> ParamSpec:
    name = spec.name
    bad_keys = sorted(set(override) - _BOUND_KEYS)
    if bad_keys:
        raise ValueError(f"{name}: unknown bound key(s) {bad_keys}; allowed: {sorted(_BOUND_KEYS)}")
    changes: dict[str, object] = {}
    if spec.kind == "tuple" and isinstance(spec.value, tuple) and ({"min", "max"} & set(override)):
        changes["elements"] = _tuple_bounds(spec, override)
    for key, attr in (("min", "minimum"), ("max", "maximum")):
        if key in override and spec.kind != "tuple":
            bound = override[key]
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                raise ValueError(f"{name}: {key} must be a number, got {bound!r}")
            if spec.kind not in ("int", "float"):
                raise ValueError(f"{name}: {key} applies to numbers, not {spec.kind}")
            changes[attr] = bound
    if "choices" in override:
        raw = override["choices"]
        if raw is not None:
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable) or not list(raw):
                raise ValueError(f"{name}: choices must be a non-empty list, got {raw!r}")
            try:
                raw = tuple(coerce(c, spec.kind, spec.value, strict_tuple=True) for c in raw)
            except CoercionError as exc:
                raise ValueError(f"{name}: bad choice: {exc}") from None
        changes["choices"] = raw
    for key in ("log_scale", "pow2"):
        if key in override:
            if not isinstance(override[key], bool):
                raise ValueError(f"{name}: {key} must be true or false, got {override[key]!r}")
            changes[key] = override[key]
    result = _replace(spec, **changes)
    lo, hi = result.minimum, result.maximum
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name}: min {lo} is greater than max {hi}")
    if result.log_scale and lo is not None and lo <= 0:
        if override.get("log_scale") is True:
            raise ValueError(f"{name}: log_scale needs min > 0, got min {lo}")
        result = _replace(result, log_scale=False)  # e.g. weight decay allowed down to 0
    if result.pow2 and spec.kind != "int":
        raise ValueError(f"{name}: pow2 applies to ints, not {spec.kind}")
    return result


def _replace(spec: ParamSpec, **changes: object) -> ParamSpec:
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Directions: what Level 1.5's direction freeze (strategy.freeze = "direction") freezes
#
# A number (int, float, power of two) moves "up" or "down" from its current value; a parameter
# with choices (bools included) moves "→VALUE" to one specific other choice. A tuple or a free
# string has no direction: only the whole parameter can be frozen.

DIRECTION_WORDS = {"up": "increase", "down": "decrease"}


def choice_direction(value: object) -> str:
    """``→SL`` for the choice "SL", ``→False`` for a bool: a direction names the value moved to."""
    return "→" + (value if isinstance(value, str) else choice_text(value))


def direction_of(spec: ParamSpec, old: object, new: object) -> str:
    """The direction of a change from ``old`` to ``new`` ("" when the parameter has none)."""
    if spec.choices is not None:
        return "" if same_value(old, new) else choice_direction(new)
    if spec.kind in ("int", "float") and isinstance(old, (int, float)) and isinstance(new, (int, float)) \
            and not isinstance(old, bool) and not isinstance(new, bool) and old != new:
        return "up" if new > old else "down"
    return ""


def directions(spec: ParamSpec) -> list[str]:
    """Every direction the parameter can move in from its current value, ignoring freezes and bounds."""
    if spec.choices is not None:
        return [choice_direction(c) for c in spec.choices if not same_value(c, spec.value)]
    if spec.kind in ("int", "float") and not isinstance(spec.value, bool):
        return ["up", "down"]
    return []


def _room(spec: ParamSpec, direction: str) -> bool:
    value = spec.value
    if direction == "up":
        return spec.maximum is None or (isinstance(value, (int, float)) and value < spec.maximum)
    if direction == "down":
        return spec.minimum is None or (isinstance(value, (int, float)) and value > spec.minimum)
    return True


def open_directions(spec: ParamSpec) -> list[str]:
    """The directions a proposer may move this parameter in now: not frozen, with room within the bounds."""
    if spec.locked:
        return []
    return [d for d in directions(spec) if d not in spec.frozen_directions and _room(spec, d)]


def closed(spec: ParamSpec) -> bool:
    """Whether direction freezes leave this parameter no direction to move in (then it is as good as frozen)."""
    return bool(spec.frozen_directions) and not open_directions(spec)


def narrowed(spec: ParamSpec) -> ParamSpec:
    """The spec with its frozen directions cut off: a bound becomes the current value, frozen choices drop out."""
    if not spec.frozen_directions:
        return spec
    changes: dict[str, object] = {}
    if spec.choices is not None:
        changes["choices"] = tuple(c for c in spec.choices
                                   if same_value(c, spec.value) or choice_direction(c) not in spec.frozen_directions)
    elif isinstance(spec.value, (int, float)):
        if "up" in spec.frozen_directions:
            changes["maximum"] = spec.value
        if "down" in spec.frozen_directions:
            changes["minimum"] = spec.value
    return _replace(spec, **changes)


def step_toward(spec: ParamSpec, direction: str) -> object | None:
    """One plain step from the current value in ``direction``, within the bounds (None: no room, no such step).

    What a mechanism offers when it wants a parameter moved: ×2 or ÷2 for powers of two and
    log-scale rates, a quarter of the value (at least 1) for other ints, a tenth of the range
    (or of the value) for other floats, the named value for a choice.
    """
    if direction not in open_directions(spec):
        return None
    if spec.choices is not None:
        return next((c for c in spec.choices if choice_direction(c) == direction), None)
    value = spec.value
    assert isinstance(value, (int, float))
    sign = 1 if direction == "up" else -1
    if spec.pow2 and isinstance(value, int) and value > 0:
        new: float = value * 2 if sign > 0 else value // 2
    elif spec.log_scale and value > 0:
        new = value * 2 if sign > 0 else value / 2
    elif spec.kind == "int":
        new = value + sign * max(1, round(abs(value) * 0.25))
    else:
        span = (spec.maximum - spec.minimum) if spec.minimum is not None and spec.maximum is not None else abs(value)
        new = value + sign * 0.1 * (span or 1.0)
    if spec.minimum is not None:
        new = max(spec.minimum, new)
    if spec.maximum is not None:
        new = min(spec.maximum, new)
    new = int(new) if spec.kind == "int" else float(f"{new:.4g}")
    if spec.pow2 and not is_power_of_two(int(new)):
        return None  # a bound that is no power of two: no plain step there
    return None if new == value else new


# ---------------------------------------------------------------------------
# Validation


def validate_changes(
    changes: Mapping[str, object],
    schema: Mapping[str, ParamSpec],
    frozen: Iterable[str] = (),
    *,
    max_changes: int | None = None,
) -> dict[str, object]:
    """The coerced changes, or ProposalError listing every bad change with a reason.

    ``max_changes``: the most changes one proposal may make (search.max_changes); None: no limit.
    """
    if not changes:
        raise ProposalError(["empty change set: propose at least one parameter change"])
    if max_changes is not None and len(changes) > max_changes:
        raise ProposalError([f"{len(changes)} changes ({', '.join(map(str, changes))}): propose at most "
                             f"{max_changes}, testing one hypothesis"])
    frozen_set = set(frozen)
    errors: list[str] = []
    accepted: dict[str, object] = {}
    for name, value in changes.items():
        spec = schema.get(name)
        if spec is None:
            errors.append(unknown_message(name, schema))
            continue
        if spec.locked:
            errors.append(f"{name} is locked by the experiment config and cannot be changed")
            continue
        if name in frozen_set:
            errors.append(f"{name} is frozen by the search strategy; change a different parameter")
            continue
        try:
            accepted[name] = _check_one(spec, value)
        except CoercionError as exc:
            errors.append(f"{name}: {exc}")
            continue
        blocked = _frozen_direction(spec, accepted[name])
        if blocked:
            del accepted[name]
            errors.append(blocked)
    if errors:
        raise ProposalError(errors)
    return accepted


def _frozen_direction(spec: ParamSpec, value: object) -> str:
    """Why a change moves in a direction Level 1.5 froze, or ""."""
    direction = direction_of(spec, spec.value, value)
    if not direction or direction not in spec.frozen_directions:
        return ""
    what = DIRECTION_WORDS.get(direction, f"moving to {direction[1:]}")
    still = open_directions(spec)
    other = (f"; still open: {', '.join(DIRECTION_WORDS.get(d, 'to ' + d[1:]) for d in still)}" if still
             else "; no direction is open")
    return (f"{spec.name}: {what} from {format_value(spec.value, pow2=spec.pow2)} is frozen by the search "
            f"strategy (it was tried repeatedly without gain){other}")


def _check_one(spec: ParamSpec, value: object) -> object:
    coerced = coerce(value, spec.kind, spec.value, strict_tuple=True)
    if spec.kind == "str" and coerced == "":
        raise CoercionError("empty string is not allowed")
    if spec.choices is not None and not any(same_value(coerced, c) for c in spec.choices):
        options = ", ".join(choice_text(c) for c in spec.choices)
        raise CoercionError(f"{choice_text(coerced)} is not one of {options}")
    if spec.kind in ("int", "float"):
        assert isinstance(coerced, (int, float))
        lo, hi = spec.minimum, spec.maximum
        if (lo is not None and coerced < lo) or (hi is not None and coerced > hi):
            allowed = range_text(lo, hi, spec.pow2)
            raise CoercionError(
                f"{format_value(coerced, pow2=spec.pow2)} is out of bounds; allowed {allowed}"
            )
        if spec.pow2 and not (isinstance(coerced, int) and is_power_of_two(coerced)):
            raise CoercionError(f"{coerced} is not a power of two{_nearest_pow2(coerced)}")
    if spec.kind == "tuple" and spec.elements:
        assert isinstance(coerced, tuple)
        for i, (x, r) in enumerate(zip(coerced, spec.elements)):
            if r is not None and isinstance(x, (int, float)) and not isinstance(x, bool) and not r.contains(x):
                raise CoercionError(f"element {i}: {format_value(x)} is out of bounds; allowed {r.describe()}")
    if same_value(coerced, spec.value):
        raise CoercionError(
            f"{format_value(coerced, pow2=spec.pow2)} equals the current value; propose a different value"
        )
    return coerced


def _nearest_pow2(value: float) -> str:
    if value <= 1:
        return " (try 1, 2, 4, ...)"
    low = 1 << (int(value).bit_length() - 1)
    return f" (nearest: 2**{low.bit_length() - 1}={low} or 2**{low.bit_length()}={low * 2})"

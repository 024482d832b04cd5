"""Hyperparameter values as Python literals: read safely, written back in style, coerced to a kind.

The constant evaluator reads ``NAME = literal`` values (literals, tuples, unary signs and
arithmetic on numbers; never ``eval``, with limits a hostile ``10**10**10`` cannot pass);
:func:`format_value` writes a value back as source that parses to an equal value of the
same kind, keeping the original's style; :func:`coerce` converts a proposed value to a
parameter's kind or says why it cannot. Used by :mod:`core.services.script` and
:mod:`core.services.schema`.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Callable

_POW2_SOURCE_RE = re.compile(r"\s*2\s*\*\*\s*\d+\s*\Z")
_SCI_FLOAT_RE = re.compile(r"\s*-?\s*(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*\Z")
_UNDERSCORE_INT_RE = re.compile(r"\s*-?\s*\d+(_\d+)+\s*\Z")

# Limits for the constant evaluator: generous for hyperparameters, small enough
# that a hostile `10**10**10` cannot hang the parser.
_MAX_EXPONENT = 4096
_MAX_INT_BITS = 4096


# --- the safe constant evaluator ---------------------------------------------


class NotLiteral(Exception):
    pass


_BINARY: dict[type, Callable[[object, object], object]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(node: ast.expr) -> object:
    """Evaluate a constant expression: literals, tuples, unary +/-, and arithmetic on numbers."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise NotLiteral  # e.g. 1e999: cannot be written back as a literal
            return node.value
        raise NotLiteral
    if isinstance(node, ast.Tuple):
        return tuple(evaluate(elt) for elt in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = evaluate(node.operand)
        if not _is_number(operand):
            raise NotLiteral
        return -operand if isinstance(node.op, ast.USub) else +operand  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = evaluate(node.left), evaluate(node.right)
        if not (_is_number(left) and _is_number(right)):
            raise NotLiteral
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:  # type: ignore[arg-type]
            raise NotLiteral
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            raise NotLiteral from None
        if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
            raise NotLiteral
        if not _is_number(result) or (isinstance(result, float) and not math.isfinite(result)):
            raise NotLiteral  # complex from a negative base, or overflow to inf
        return result
    raise NotLiteral


def is_pow2_node(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and isinstance(node.left, ast.Constant)
        and type(node.left.value) is int
        and node.left.value == 2
        and isinstance(node.right, ast.Constant)
        and type(node.right.value) is int
        and node.right.value >= 0
    )


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, tuple):
        return "tuple"
    raise TypeError(f"not a parameter value: {value!r}")


# --- writing values back as source ------------------------------------------


def format_value(value: object, *, pow2: bool = False, original_source: str | None = None) -> str:
    """Python source for ``value`` that parses back to an equal value of the same kind.

    ``original_source`` (the text being replaced) carries style forward: the quote
    character of a string, ``2**k`` for powers of two, scientific notation for floats,
    ``_`` digit grouping for ints.
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return _format_int(value, pow2=pow2 or _matches(_POW2_SOURCE_RE, original_source),
                           grouped=_matches(_UNDERSCORE_INT_RE, original_source))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number and has no literal form")
        if _matches(_SCI_FLOAT_RE, original_source):
            return _scientific(value)
        return repr(value)
    if isinstance(value, str):
        return _quote(value, _quote_char(original_source))
    if isinstance(value, tuple):
        items = [format_value(item) for item in value]
        if len(items) == 1:
            return f"({items[0]},)"
        return "(" + ", ".join(items) + ")"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a parameter literal")


def _matches(pattern: re.Pattern[str], source: str | None) -> bool:
    return source is not None and pattern.match(source) is not None


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _format_int(value: int, *, pow2: bool, grouped: bool) -> str:
    if pow2 and is_power_of_two(value):
        return f"2**{value.bit_length() - 1}"
    return f"{value:_}" if grouped else str(value)


def _scientific(value: float) -> str:
    """Shortest round-tripping scientific form, e.g. 0.0003 -> '3e-4'."""
    for digits in range(17):
        text = f"{value:.{digits}e}"
        if float(text) == value:
            break
    mantissa, exponent = text.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    exp = int(exponent)
    if "." not in mantissa and exp == 0:
        return mantissa + ".0"  # `5e0` would be fine too, but keep it obviously a float
    return f"{mantissa}e{exp}"


def _quote_char(source: str | None) -> str | None:
    if not source:
        return None
    stripped = source.lstrip("( \t\r\n").lstrip("rRbBuUfF")
    return stripped[0] if stripped[:1] in ("'", '"') else None


def _quote(value: str, quote: str | None) -> str:
    if quote is None:  # repr's own preference
        quote = '"' if "'" in value and '"' not in value else "'"
    out = [quote]
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + quote)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # \n, \t, \x00, \u2028, lone surrogates ...
    out.append(quote)
    return "".join(out)


def same_value(a: object, b: object) -> bool:
    """Equality that also tells 1 from 1.0 from True and 0.0 from -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]
    return a == b



# --- coercing proposed values to a parameter's kind --------------------------



class CoercionError(ValueError):
    pass


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    return {list: "list", tuple: "tuple", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _parse_literal_text(text: str) -> object:
    """A string like '3e-4', '2**19' or '(0.9, 0.95)' read with the safe evaluator."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        return evaluate(node)
    except (SyntaxError, ValueError, NotLiteral):
        raise CoercionError from None


def coerce(value: object, kind: str, current: object, *, strict_tuple: bool) -> object:
    """``value`` converted to ``kind``, or CoercionError with a readable reason."""
    if kind == "str":
        if not isinstance(value, str):
            raise CoercionError(f"expected str, got {_type_name(value)} {_show(value)}")
        return value
    if isinstance(value, str) and kind != "str":
        try:
            parsed = _parse_literal_text(value)
        except CoercionError:
            if kind == "bool" and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise CoercionError(f"expected {kind}, got str {_show(value)}") from None
        if isinstance(parsed, str):
            raise CoercionError(f"expected {kind}, got str {_show(value)}")
        value = parsed
    if kind == "bool":
        if not isinstance(value, bool):
            raise CoercionError(f"expected bool (True/False), got {_type_name(value)} {_show(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CoercionError(f"expected int, got {_type_name(value)} {_show(value)}")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise CoercionError(f"expected int, got non-integral float {_show(value)}")
            return int(value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CoercionError(f"expected float, got {_type_name(value)} {_show(value)}")
        try:
            result = float(value)
        except OverflowError:
            raise CoercionError(f"{_show(value)} is too large for a float") from None
        if not math.isfinite(result):
            raise CoercionError(f"expected a finite float, got {_show(value)}")
        return result
    if kind == "tuple":
        return _coerce_tuple(value, current, strict=strict_tuple)
    raise CoercionError(f"unsupported parameter kind {kind!r}")


def _coerce_tuple(value: object, current: object, *, strict: bool) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise CoercionError(f"expected tuple, got {_type_name(value)} {_show(value)}")
    old = current if isinstance(current, tuple) else ()
    if len(value) != len(old):
        if strict:
            raise CoercionError(
                f"expected a tuple of {len(old)} elements ({element_kinds(old)}), "
                f"got {len(value)} elements {_show(tuple(value))}"
            )
        # Lenient (apply): any tuple of literals, each keeping its own kind.
        items = []
        for item in value:
            try:
                kind_of(item)
            except TypeError:
                raise CoercionError(f"tuple element {_show(item)} is not a literal") from None
            items.append(coerce(item, kind_of(item), item, strict_tuple=False))
        return tuple(items)
    items = []
    for index, (item, was) in enumerate(zip(value, old)):
        try:
            items.append(coerce(item, kind_of(was), was, strict_tuple=strict))
        except CoercionError as exc:
            raise CoercionError(f"element {index}: {exc}") from None
    return tuple(items)


def element_kinds(value: tuple) -> str:
    return ", ".join(kind_of(item) for item in value) or "empty"

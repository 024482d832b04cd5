"""The training script as data.

A training script's hyperparameters are module-level constants written as
``NAME = literal`` (UPPER_CASE names). This module finds them with ``ast``,
evaluates them with a tiny safe evaluator (never ``eval``), applies typed edits
by replacing only the exact source span of a value (so comments and every
untouched line stay byte-identical), infers a schema of bounds for the search,
validates proposed changes with reasons an LLM can act on, and renders diffs.

Rules worth knowing:

* Only statements directly in the module body count; a constant assigned inside
  ``if``/``def``/``class`` is not a parameter.
* A name bound more than once at module level: the last binding wins. If that
  last binding is a literal assignment it is the parameter (edits rewrite that
  line; earlier definitions are left untouched). If anything else rebinds the
  name later (a call, a conditional reassignment, an import), editing the
  literal would have no effect, so the name is not a parameter; it is listed in
  ``TrainScript.shadowed`` so a user can be told why.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

__all__ = [
    "KINDS",
    "Param",
    "ParamSpec",
    "ProposalError",
    "TrainScript",
    "format_value",
    "infer_schema",
    "unified_diff",
    "validate_changes",
]

KINDS = ("int", "float", "str", "bool", "tuple")

_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_POW2_SOURCE_RE = re.compile(r"\s*2\s*\*\*\s*\d+\s*\Z")
_SCI_FLOAT_RE = re.compile(r"\s*-?\s*(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*\Z")
_UNDERSCORE_INT_RE = re.compile(r"\s*-?\s*\d+(_\d+)+\s*\Z")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")  # the line breaks Python's tokenizer counts

# Limits for the constant evaluator: generous for hyperparameters, small enough
# that a hostile `10**10**10` cannot hang the parser.
_MAX_EXPONENT = 4096
_MAX_INT_BITS = 4096


# ---------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class Param:
    """One hyperparameter as it appears in the script."""

    name: str
    kind: str  # one of KINDS
    value: object  # the evaluated Python value
    lineno: int  # 1-based line of the assignment
    source: str  # exact source text of the value expression
    pow2: bool  # the source was written as 2**k (keep writing it that way)


@dataclass(frozen=True)
class ParamSpec:
    """Schema entry used by the engine and the LLM prompt."""

    name: str
    kind: str
    value: object
    locked: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    log_scale: bool = False
    pow2: bool = False

    def describe(self) -> str:
        """One compact line for the prompt."""
        head = f"{self.name}: {self.kind} = {format_value(self.value, pow2=self.pow2)}"
        notes: list[str] = []
        if self.locked:
            notes.append("locked")
        if self.log_scale:
            notes.append("log scale")
        if self.pow2:
            notes.append("power of two")
        if self.choices is not None and self.kind != "bool":
            notes.append("one of " + "|".join(_choice_text(c) for c in self.choices))
        bounds = _range_text(self.minimum, self.maximum, self.pow2)
        if bounds:
            notes.append(bounds)
        if self.kind == "str" and self.choices is None:
            notes.append("any non-empty string")
        if self.kind == "tuple" and isinstance(self.value, tuple):
            notes.append(f"{len(self.value)} elements: {_element_kinds(self.value)}")
        return head + (f" ({', '.join(notes)})" if notes else "")


class ProposalError(ValueError):
    """A proposal (or edit) was rejected; ``errors`` has one reason per bad change."""

    def __init__(self, errors: Iterable[str]):
        self.errors: list[str] = list(errors)
        super().__init__("; ".join(self.errors) if self.errors else "invalid proposal")


@dataclass(frozen=True)
class _Span:
    """Character offsets of a value expression (and of its elements, for tuples)."""

    start: int
    end: int
    elements: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class TrainScript:
    """A parsed training script. Build it with :meth:`parse`; edits return a new one."""

    text: str
    params: dict[str, Param]  # in file order
    shadowed: dict[str, int] = field(default_factory=dict)  # name -> line of the overriding binding
    _spans: dict[str, _Span] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> TrainScript:
        """Parse ``text``; a script that is not valid Python raises ValueError with the line."""
        # A UTF-8 BOM (a file read with encoding="utf-8") runs fine but does not parse as str.
        skip = 1 if text.startswith("\ufeff") else 0
        try:
            module = ast.parse(text[skip:])
        except SyntaxError as exc:
            line = (exc.text or "").strip()
            where = f"line {exc.lineno}" if exc.lineno else "unknown line"
            detail = f": {line}" if line else ""
            raise ValueError(f"train script does not parse ({where}: {exc.msg}){detail}") from exc
        except ValueError as exc:  # e.g. null bytes in the source
            raise ValueError(f"train script does not parse: {exc}") from exc
        locate = _Locator(text, skip)
        params: dict[str, Param] = {}
        spans: dict[str, _Span] = {}
        shadowed: dict[str, int] = {}
        for stmt in module.body:
            found = _literal_assignment(stmt, locate)
            for name in _bound_names(stmt):
                if name in params:  # a literal overridden by a later binding
                    shadowed[name] = stmt.lineno
                params.pop(name, None)
                spans.pop(name, None)
            if found is not None:
                param, span = found
                shadowed.pop(param.name, None)
                params[param.name] = param
                spans[param.name] = span
        ordered = dict(sorted(params.items(), key=lambda item: spans[item[0]].start))
        return cls(text=text, params=ordered, shadowed=shadowed, _spans=spans)

    def values(self) -> dict[str, object]:
        """Parameter name -> evaluated value, in file order."""
        return {name: p.value for name, p in self.params.items()}

    def apply(self, changes: Mapping[str, object]) -> TrainScript:
        """Return a new script with ``changes`` written in (coerced to each parameter's kind).

        No schema validation happens here beyond the kind; see :func:`validate_changes`.
        A change equal to the current value leaves the source untouched.
        """
        errors: list[str] = []
        coerced: dict[str, object] = {}
        for name, value in changes.items():
            param = self.params.get(name)
            if param is None:
                errors.append(_unknown_message(name, self.params))
                continue
            try:
                coerced[name] = _coerce(value, param.kind, param.value, strict_tuple=False)
            except _CoercionError as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise ProposalError(errors)
        edits: list[tuple[int, int, str]] = []
        for name, value in coerced.items():
            edits.extend(self._edits_for(self.params[name], value))
        new = TrainScript.parse(_splice(self.text, edits))
        _check_written(new, coerced)
        return new

    def _edits_for(self, param: Param, value: object) -> Iterator[tuple[int, int, str]]:
        if _same_value(value, param.value):
            return
        span = self._spans[param.name]
        old = param.value
        if (
            span.elements is not None
            and isinstance(value, tuple)
            and isinstance(old, tuple)
            and len(value) == len(old)
        ):
            # Element-wise edits keep the layout (and comments) of a multi-line tuple.
            for (start, end), new_item, old_item in zip(span.elements, value, old):
                if not _same_value(new_item, old_item):
                    yield start, end, format_value(new_item, original_source=self.text[start:end])
            return
        yield span.start, span.end, format_value(value, pow2=param.pow2, original_source=param.source)


# ---------------------------------------------------------------------------
# Parsing


class _Locator:
    """Maps ast (line, UTF-8 byte column) positions to character offsets in the text."""

    def __init__(self, text: str, skip: int = 0):
        self.text = text
        starts = [skip]  # `skip` characters before line 1 are invisible to the parser (a BOM)
        starts.extend(m.end() for m in _NEWLINE_RE.finditer(text))
        self._starts = starts

    def offset(self, lineno: int, byte_col: int) -> int:
        start = self._starts[lineno - 1]
        end = self._starts[lineno] if lineno < len(self._starts) else len(self.text)
        line_bytes = self.text[start:end].encode("utf-8", "surrogatepass")
        return start + len(line_bytes[:byte_col].decode("utf-8", "surrogatepass"))

    def span(self, node: ast.expr) -> tuple[int, int]:
        assert node.end_lineno is not None and node.end_col_offset is not None
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )


def _literal_assignment(stmt: ast.stmt, locate: _Locator) -> tuple[Param, _Span] | None:
    """The parameter defined by ``stmt``, if it is ``NAME = literal`` (or annotated)."""
    if isinstance(stmt, ast.Assign):
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            return None
        name, node, annotation = stmt.targets[0].id, stmt.value, None
    elif isinstance(stmt, ast.AnnAssign):
        if not (stmt.simple and isinstance(stmt.target, ast.Name) and stmt.value is not None):
            return None
        name, node, annotation = stmt.target.id, stmt.value, stmt.annotation
    else:
        return None
    if not _NAME_RE.match(name):
        return None
    try:
        value = _evaluate(node)
    except _NotLiteral:
        return None
    kind = _kind_of(value)
    if kind == "int" and isinstance(annotation, ast.Name) and annotation.id == "float":
        kind, value = "float", float(value)  # `LR: float = 1` is a float parameter
    start, end = locate.span(node)
    elements = None
    if isinstance(node, ast.Tuple):
        elements = tuple(locate.span(elt) for elt in node.elts)
    param = Param(
        name=name,
        kind=kind,
        value=value,
        lineno=stmt.lineno,
        source=locate.text[start:end],
        pow2=_is_pow2_node(node),
    )
    return param, _Span(start, end, elements)


def _bound_names(stmt: ast.stmt) -> set[str]:
    """Module-level names a statement binds (not descending into nested scopes)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            for deco in node.decorator_list:
                visit(deco)
            return  # the body is another scope
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return  # `X: int` declares, it does not bind
        if isinstance(node, ast.comprehension):
            for part in (node.iter, *node.ifs):
                visit(part)
            return  # the loop variable lives in the comprehension's own scope
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return names


class _NotLiteral(Exception):
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


def _evaluate(node: ast.expr) -> object:
    """Evaluate a constant expression: literals, tuples, unary +/-, and arithmetic on numbers."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise _NotLiteral  # e.g. 1e999: cannot be written back as a literal
            return node.value
        raise _NotLiteral
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(elt) for elt in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _evaluate(node.operand)
        if not _is_number(operand):
            raise _NotLiteral
        return -operand if isinstance(node.op, ast.USub) else +operand  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if not (_is_number(left) and _is_number(right)):
            raise _NotLiteral
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:  # type: ignore[arg-type]
            raise _NotLiteral
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            raise _NotLiteral from None
        if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
            raise _NotLiteral
        if not _is_number(result) or (isinstance(result, float) and not math.isfinite(result)):
            raise _NotLiteral  # complex from a negative base, or overflow to inf
        return result
    raise _NotLiteral


def _is_pow2_node(node: ast.expr) -> bool:
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


def _kind_of(value: object) -> str:
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


# ---------------------------------------------------------------------------
# Writing values back


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


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _format_int(value: int, *, pow2: bool, grouped: bool) -> str:
    if pow2 and _is_power_of_two(value):
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


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _check_written(script: TrainScript, intended: Mapping[str, object]) -> None:
    """Re-read every edited value: a value that does not read back is a bug, never a silent edit."""
    for name, value in intended.items():
        param = script.params.get(name)
        if param is None or not _same_value(param.value, value):
            got = "missing" if param is None else repr(param.value)
            raise RuntimeError(f"edit of {name} did not read back: wrote {value!r}, read {got}")


def _same_value(a: object, b: object) -> bool:
    """Equality that also tells 1 from 1.0 from True and 0.0 from -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]
    return a == b


# ---------------------------------------------------------------------------
# Coercion (shared by apply and validate_changes)


class _CoercionError(ValueError):
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
        return _evaluate(node)
    except (SyntaxError, ValueError, _NotLiteral):
        raise _CoercionError from None


def _coerce(value: object, kind: str, current: object, *, strict_tuple: bool) -> object:
    """``value`` converted to ``kind``, or _CoercionError with a readable reason."""
    if kind == "str":
        if not isinstance(value, str):
            raise _CoercionError(f"expected str, got {_type_name(value)} {_show(value)}")
        return value
    if isinstance(value, str) and kind != "str":
        try:
            parsed = _parse_literal_text(value)
        except _CoercionError:
            if kind == "bool" and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise _CoercionError(f"expected {kind}, got str {_show(value)}") from None
        if isinstance(parsed, str):
            raise _CoercionError(f"expected {kind}, got str {_show(value)}")
        value = parsed
    if kind == "bool":
        if not isinstance(value, bool):
            raise _CoercionError(f"expected bool (True/False), got {_type_name(value)} {_show(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _CoercionError(f"expected int, got {_type_name(value)} {_show(value)}")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise _CoercionError(f"expected int, got non-integral float {_show(value)}")
            return int(value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _CoercionError(f"expected float, got {_type_name(value)} {_show(value)}")
        try:
            result = float(value)
        except OverflowError:
            raise _CoercionError(f"{_show(value)} is too large for a float") from None
        if not math.isfinite(result):
            raise _CoercionError(f"expected a finite float, got {_show(value)}")
        return result
    if kind == "tuple":
        return _coerce_tuple(value, current, strict=strict_tuple)
    raise _CoercionError(f"unsupported parameter kind {kind!r}")


def _coerce_tuple(value: object, current: object, *, strict: bool) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _CoercionError(f"expected tuple, got {_type_name(value)} {_show(value)}")
    old = current if isinstance(current, tuple) else ()
    if len(value) != len(old):
        if strict:
            raise _CoercionError(
                f"expected a tuple of {len(old)} elements ({_element_kinds(old)}), "
                f"got {len(value)} elements {_show(tuple(value))}"
            )
        # Lenient (apply): any tuple of literals, each keeping its own kind.
        items = []
        for item in value:
            try:
                _kind_of(item)
            except TypeError:
                raise _CoercionError(f"tuple element {_show(item)} is not a literal") from None
            items.append(_coerce(item, _kind_of(item), item, strict_tuple=False))
        return tuple(items)
    items = []
    for index, (item, was) in enumerate(zip(value, old)):
        try:
            items.append(_coerce(item, _kind_of(was), was, strict_tuple=strict))
        except _CoercionError as exc:
            raise _CoercionError(f"element {index}: {exc}") from None
    return tuple(items)


def _element_kinds(value: tuple) -> str:
    return ", ".join(_kind_of(item) for item in value) or "empty"


# ---------------------------------------------------------------------------
# Schema


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
            + ", ".join(_unknown_message(name, script.params, prefix=False) for name in unknown)
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
        if _is_power_of_two(number) and (param.pow2 or named_pow2):
            return _replace(base, minimum=max(1, number // 16), maximum=number * 16, pow2=True)
        if number > 0:
            return _replace(base, minimum=1, maximum=number * 4)
        return base
    if "RATIO" in name or "FRAC" in name:
        return _replace(base, minimum=min(0.0, number), maximum=max(1.0, number))
    return base


def _override(spec: ParamSpec, override: Mapping) -> ParamSpec:
    name = spec.name
    bad_keys = sorted(set(override) - _BOUND_KEYS)
    if bad_keys:
        raise ValueError(f"{name}: unknown bound key(s) {bad_keys}; allowed: {sorted(_BOUND_KEYS)}")
    changes: dict[str, object] = {}
    for key, attr in (("min", "minimum"), ("max", "maximum")):
        if key in override:
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
                raw = tuple(_coerce(c, spec.kind, spec.value, strict_tuple=True) for c in raw)
            except _CoercionError as exc:
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
# Validation


def validate_changes(
    changes: Mapping[str, object],
    schema: Mapping[str, ParamSpec],
    frozen: Iterable[str] = (),
) -> dict[str, object]:
    """The coerced changes, or ProposalError listing every bad change with a reason."""
    if not changes:
        raise ProposalError(["empty change set: propose at least one parameter change"])
    frozen_set = set(frozen)
    errors: list[str] = []
    accepted: dict[str, object] = {}
    for name, value in changes.items():
        spec = schema.get(name)
        if spec is None:
            errors.append(_unknown_message(name, schema))
            continue
        if spec.locked:
            errors.append(f"{name} is locked by the experiment config and cannot be changed")
            continue
        if name in frozen_set:
            errors.append(f"{name} is frozen by the search strategy; change a different parameter")
            continue
        try:
            accepted[name] = _check_one(spec, value)
        except _CoercionError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise ProposalError(errors)
    return accepted


def _check_one(spec: ParamSpec, value: object) -> object:
    coerced = _coerce(value, spec.kind, spec.value, strict_tuple=True)
    if spec.kind == "str" and coerced == "":
        raise _CoercionError("empty string is not allowed")
    if spec.choices is not None and not any(_same_value(coerced, c) for c in spec.choices):
        options = ", ".join(_choice_text(c) for c in spec.choices)
        raise _CoercionError(f"{_choice_text(coerced)} is not one of {options}")
    if spec.kind in ("int", "float"):
        assert isinstance(coerced, (int, float))
        lo, hi = spec.minimum, spec.maximum
        if (lo is not None and coerced < lo) or (hi is not None and coerced > hi):
            allowed = _range_text(lo, hi, spec.pow2)
            raise _CoercionError(
                f"{format_value(coerced, pow2=spec.pow2)} is out of bounds; allowed {allowed}"
            )
        if spec.pow2 and not (isinstance(coerced, int) and _is_power_of_two(coerced)):
            raise _CoercionError(f"{coerced} is not a power of two{_nearest_pow2(coerced)}")
    if _same_value(coerced, spec.value):
        raise _CoercionError(
            f"{format_value(coerced, pow2=spec.pow2)} equals the current value; propose a different value"
        )
    return coerced


def _nearest_pow2(value: float) -> str:
    if value <= 1:
        return " (try 1, 2, 4, ...)"
    low = 1 << (int(value).bit_length() - 1)
    return f" (nearest: 2**{low.bit_length() - 1}={low} or 2**{low.bit_length()}={low * 2})"


def _unknown_message(name: object, known: Iterable[str], *, prefix: bool = True) -> str:
    known = list(known)
    text = f"unknown parameter {name!r}" if prefix else repr(name)
    if isinstance(name, str):
        by_upper = {k.upper(): k for k in known}
        close = difflib.get_close_matches(name.upper(), list(by_upper), n=3, cutoff=0.6)
        if close:
            return text + " (did you mean " + " or ".join(by_upper[c] for c in close) + "?)"
    return text


# ---------------------------------------------------------------------------
# Rendering


def _bound_text(x: float, pow2: bool) -> str:
    if pow2 and isinstance(x, int) and _is_power_of_two(x):
        return f"2**{x.bit_length() - 1}"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _range_text(lo: float | None, hi: float | None, pow2: bool) -> str:
    if lo is not None and hi is not None:
        return f"{_bound_text(lo, pow2)}..{_bound_text(hi, pow2)}"
    if lo is not None:
        return f">= {_bound_text(lo, pow2)}"
    if hi is not None:
        return f"<= {_bound_text(hi, pow2)}"
    return ""


def _choice_text(value: object) -> str:
    return format_value(value) if isinstance(value, (bool, int, float, str, tuple)) else repr(value)


def _split_lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def unified_diff(old: str, new: str, name: str = "train.py", context: int = 3) -> str:
    """A unified diff from ``old`` to ``new`` (empty when they are equal)."""
    if old == new:
        return ""
    out: list[str] = []
    for line in difflib.unified_diff(
        _split_lines(old), _split_lines(new), fromfile=f"a/{name}", tofile=f"b/{name}", n=context
    ):
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)

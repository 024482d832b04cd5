"""The training script as data.

A training script's hyperparameters are module-level constants written as
``NAME = literal`` (UPPER_CASE names). This module finds them with ``ast``,
evaluates them with a tiny safe evaluator (never ``eval``), applies typed edits
by replacing only the exact source span of a value (so comments and every
untouched line stay byte-identical), and renders diffs. Reading and writing single values (the safe evaluator,
formatting, coercion) is :mod:`core.services.literals`; the search's schema of bounds
and the validation of proposed changes are :mod:`core.services.schema`.

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
import difflib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from core.services.literals import (CoercionError, NotLiteral, coerce, evaluate, format_value,
                                    is_pow2_node, is_power_of_two, kind_of, same_value)

__all__ = [
    "KINDS",
    "ElementRange",
    "Param",
    "ParamSpec",
    "ProposalError",
    "TrainScript",
    "format_value",
    "unified_diff",
]

KINDS = ("int", "float", "str", "bool", "tuple")

_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")  # the line breaks Python's tokenizer counts
_HUNK_RE = re.compile(r"-(\d+)(,\d+)? \+(\d+)(,\d+)?")


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
    # Declared by the script in the line's comment (``X = "a"  # ... choices: "a", "b"``): the values a
    # proposer may pick for a string, which no range describes.
    choices: tuple | None = None


@dataclass(frozen=True)
class ElementRange:
    """The range of one numeric element of a tuple parameter (``below``: the maximum itself is excluded)."""

    minimum: float | None = None
    maximum: float | None = None
    below: bool = False

    def contains(self, x: float) -> bool:
        if self.minimum is not None and x < self.minimum:
            return False
        if self.maximum is not None and (x >= self.maximum if self.below else x > self.maximum):
            return False
        return True

    def describe(self) -> str:
        if self.minimum is None and self.maximum is None:
            return ""
        lo = "-inf" if self.minimum is None else _bound_text(self.minimum, False)
        hi = "inf" if self.maximum is None else _bound_text(self.maximum, False)
        return f"[{lo}, {hi}{')' if self.below else ']'}"


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
    elements: tuple[ElementRange | None, ...] | None = None  # a tuple's per-element ranges (None: unbounded)
    frozen_directions: tuple[str, ...] = ()  # directions Level 1.5 froze ("up", "down", "→VALUE")

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
            notes.append("one of " + "|".join(choice_text(c) for c in self.choices))
        bounds = range_text(self.minimum, self.maximum, self.pow2)
        if bounds:
            notes.append(bounds)
        if self.kind == "str" and self.choices is None:
            notes.append("any non-empty string")
        if self.kind == "tuple" and isinstance(self.value, tuple):
            kinds = [kind_of(v) + (f" in {r.describe()}" if r is not None and r.describe() else "")
                     for v, r in zip(self.value, self.elements or (None,) * len(self.value))]
            notes.append(f"{len(self.value)} elements: {', '.join(kinds)}")
        if self.frozen_directions:
            notes.append("frozen direction(s): " + ", ".join(self.frozen_directions))
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
        """Parse ``text``; a script that is not valid Python raises ValueError with the line.

        One iteration reads the same text several times (proposal, validation, the run, the
        record), and a parse of a long script costs milliseconds: the last few parses are kept
        (each caller gets its own dicts).
        """
        cached = _PARSED.get(text)
        if cached is None:
            cached = cls._parse(text)
            _PARSED.put(text, cached)
        return cls(text=text, params=dict(cached.params), shadowed=dict(cached.shadowed), _spans=cached._spans)

    @classmethod
    def _parse(cls, text: str) -> TrainScript:
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

    def skeleton(self) -> str:
        """The text with every constant's value cut out: two scripts that differ only in their constants have one skeleton."""
        cuts = sorted((s.start, s.end) for s in self._spans.values())
        out, at = [], 0
        for start, end in cuts:
            out.append(self.text[at:start])
            at = end
        return "\x00".join(out) + "\x00" + self.text[at:]

    def apply(self, changes: Mapping[str, object]) -> TrainScript:
        """Return a new script with ``changes`` written in (coerced to each parameter's kind).

        No schema validation happens here beyond the kind; see :func:`core.services.schema.validate_changes`.
        A change equal to the current value leaves the source untouched.
        """
        errors: list[str] = []
        coerced: dict[str, object] = {}
        for name, value in changes.items():
            param = self.params.get(name)
            if param is None:
                errors.append(unknown_message(name, self.params))
                continue
            try:
                coerced[name] = coerce(value, param.kind, param.value, strict_tuple=False)
            except CoercionError as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise ProposalError(errors)
        edits: list[tuple[int, int, str]] = []
        for name, value in coerced.items():
            edits.extend(self._edits_for(self.params[name], value))
        text = _splice(self.text, edits)
        new = self._respliced(text, edits)
        if new is None:
            new = TrainScript.parse(text)
        else:
            _PARSED.put(text, new)
        _check_written(new, coerced)
        return new

    def _respliced(self, text: str, edits: list[tuple[int, int, str]]) -> TrainScript | None:
        """The parse of ``text`` (this script with ``edits``) without parsing it again, or None.

        Only for edits on one line of a whole scalar value or of a tuple's elements (what a
        search writes): the rest of the text is unchanged, so every other constant only moves.
        Anything else (a value over lines, a kind that changes) is parsed in full.
        """
        where: dict[int, tuple[str, int]] = {}  # an edit's start -> (constant, element index or -1)
        for name, span in self._spans.items():
            where[span.start] = (name, -1)
            for i, (a, _) in enumerate(span.elements or ()):
                where.setdefault(a, (name, i))  # a tuple's first element starts after its "("
        changed: dict[str, dict[int, str]] = {}
        for start, end, source in edits:
            name, index = where.get(start, ("", -1))
            span = self._spans.get(name)
            if span is None or (span.end if index < 0 else span.elements[index][1]) != end:
                return None
            if (index < 0 and span.elements is not None) or any(c in source + self.text[start:end] for c in "\r\n"):
                return None
            changed.setdefault(name, {})[index] = source
        shifts = [(end, len(source) - (end - start)) for start, end, source in edits]

        def moved(pos: int) -> int:
            return pos + sum(d for end, d in shifts if end <= pos)

        params: dict[str, Param] = {}
        spans: dict[str, _Span] = {}
        for name, param in self.params.items():
            span = self._spans[name]
            start, end = moved(span.start), moved(span.end)
            elements = None if span.elements is None else tuple((moved(a), moved(b)) for a, b in span.elements)
            spans[name] = _Span(start, end, elements)
            if name not in changed:
                params[name] = param
                continue
            try:
                if elements is None:
                    node = ast.parse(changed[name][-1], mode="eval").body
                    value = evaluate(node)
                    pow2 = is_pow2_node(node)
                else:
                    old = list(param.value)
                    for i, source in changed[name].items():
                        elements = tuple((a, a + len(source)) if k == i else (a, b)
                                         for k, (a, b) in enumerate(elements))
                        item = evaluate(ast.parse(source, mode="eval").body)
                        if kind_of(item) != kind_of(old[i]):
                            return None
                        old[i] = item
                    value, pow2 = tuple(old), param.pow2
                    spans[name] = _Span(start, end, elements)
            except (SyntaxError, ValueError, NotLiteral):
                return None
            if kind_of(value) != param.kind:
                return None
            params[name] = Param(name=name, kind=param.kind, value=value, lineno=param.lineno, source=text[start:end],
                                 pow2=pow2, choices=_declared_choices(text, end, value))
        return TrainScript(text=text, params=params, shadowed=dict(self.shadowed), _spans=spans)

    def _edits_for(self, param: Param, value: object) -> Iterator[tuple[int, int, str]]:
        if same_value(value, param.value):
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
                if not same_value(new_item, old_item):
                    yield start, end, format_value(new_item, original_source=self.text[start:end])
            return
        yield span.start, span.end, format_value(value, pow2=param.pow2, original_source=param.source)


class _Parses:
    """The last few parses by text (:meth:`TrainScript.parse`, and what :meth:`TrainScript.apply` derived)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._by_text: OrderedDict[str, TrainScript] = OrderedDict()
        self._lock = threading.Lock()  # parses also happen in worker threads

    def get(self, text: str) -> TrainScript | None:
        with self._lock:
            found = self._by_text.get(text)
            if found is not None:
                self._by_text.move_to_end(text)
            return found

    def put(self, text: str, script: TrainScript) -> None:
        with self._lock:
            self._by_text[text] = script
            self._by_text.move_to_end(text)
            while len(self._by_text) > self._keep:
                self._by_text.popitem(last=False)


_PARSED = _Parses(32)


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
        value = evaluate(node)
    except NotLiteral:
        return None
    kind = kind_of(value)
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
        pow2=is_pow2_node(node),
        choices=_declared_choices(locate.text, end, value),
    )
    return param, _Span(start, end, elements)


_CHOICES_RE = re.compile(r"#.*?\bchoices:\s*(?P<list>.+)$")


def _declared_choices(text: str, end: int, value: object) -> tuple | None:
    """The ``choices: "a", "b"`` a constant's trailing comment declares; None without one (or a bad one)."""
    line_end = text.find("\n", end)
    rest = text[end:line_end if line_end >= 0 else len(text)]
    found = _CHOICES_RE.search(rest)
    if found is None:
        return None
    try:
        parsed = ast.literal_eval(f"({found['list'].strip()},)")
    except (ValueError, SyntaxError):
        return None
    options = tuple(dict.fromkeys(parsed))
    if not options or any(kind_of(o) != kind_of(value) for o in options) or value not in options:
        return None  # choices must be of the constant's kind and hold its value
    return options


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


# ---------------------------------------------------------------------------
# Editing


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _check_written(script: TrainScript, intended: Mapping[str, object]) -> None:
    """Re-read every edited value: a value that does not read back is a bug, never a silent edit."""
    for name, value in intended.items():
        param = script.params.get(name)
        if param is None or not same_value(param.value, value):
            got = "missing" if param is None else repr(param.value)
            raise RuntimeError(f"edit of {name} did not read back: wrote {value!r}, read {got}")


def unknown_message(name: object, known: Iterable[str], *, prefix: bool = True) -> str:
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
    if pow2 and isinstance(x, int) and is_power_of_two(x):
        return f"2**{x.bit_length() - 1}"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def range_text(lo: float | None, hi: float | None, pow2: bool) -> str:
    if lo is not None and hi is not None:
        return f"{_bound_text(lo, pow2)}..{_bound_text(hi, pow2)}"
    if lo is not None:
        return f">= {_bound_text(lo, pow2)}"
    if hi is not None:
        return f"<= {_bound_text(hi, pow2)}"
    return ""


def choice_text(value: object) -> str:
    return format_value(value) if isinstance(value, (bool, int, float, str, tuple)) else repr(value)


def _split_lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def unified_diff(old: str, new: str, name: str = "train.py", context: int = 3) -> str:
    """A unified diff from ``old`` to ``new`` (empty when they are equal)."""
    if old == new:
        return ""
    a, b = _split_lines(old), _split_lines(new)
    # Edits within lines (constants): the lines both share at the start and the end can be in a
    # hunk only as context, so the matcher is given the rest (a long script costs milliseconds
    # otherwise) and the hunks' line numbers are put back; where equal lines could pair either
    # way (a blank line removed and another added) the hunk may pair them the other valid way.
    # Lines added or removed: the whole text.
    head = tail = 0
    if len(a) == len(b):
        while head < len(a) and a[head] == b[head]:
            head += 1
        while tail < len(a) - head and a[-1 - tail] == b[-1 - tail]:
            tail += 1
    skip, keep_tail = max(0, head - context), max(0, tail - context)
    out: list[str] = []
    for line in difflib.unified_diff(
        a[skip:len(a) - keep_tail], b[skip:len(b) - keep_tail], fromfile=f"a/{name}", tofile=f"b/{name}", n=context
    ):
        if skip and line.startswith("@@"):
            line = _HUNK_RE.sub(lambda m: f"-{int(m[1]) + skip}{m[2] or ''} +{int(m[3]) + skip}{m[4] or ''}", line, 1)
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)

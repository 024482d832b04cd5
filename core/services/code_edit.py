"""Code-scope edits to the training script: exact find/replace blocks, checked before anything runs.

A :class:`~core.record.change.CodeEdit` carries find/replace blocks; :func:`apply_edits` writes
them into the best script or says every reason it cannot, one line each, for the re-ask:

- a block's ``find`` must occur exactly once (counting overlapping matches) and blocks may not overlap;
- no block may touch the protected protocol: a region between ``# >>> protocol`` and ``# <<< protocol``
  lines (the data loader, the evaluation, the export, the summary) or a top-level constant's line
  (constants change as parameters, where locks, bounds and the freeze rule apply); nor may the edited
  script bind again, outside those regions, a name the protocol defines (a later ``def evaluate_bpb``
  would replace it);
- the edited script must parse, and every module it newly imports must be installed.

What the wall and the evaluation do not stop is said in :mod:`core.services.code_run`; the score
never depends on these checks, which keep the protocol's text intact and give the model its reasons
early (an edit can still patch a protocol function at run time; the trusted evaluation ignores it).
"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

from core.record.change import EditBlock
from core.services.script import ProposalError, TrainScript

BEGIN, END = "# >>> protocol", "# <<< protocol"
_MARKER = re.compile(r"^[ \t]*# (>>>|<<<) protocol", re.M)


@dataclass(frozen=True)
class Protected:
    """A span of the script no edit may touch, and what it is (for the reason given)."""

    start: int
    end: int
    what: str


def protected_spans(text: str) -> list[Protected]:
    """The protocol's regions (marker line to marker line, both included) and the constants' lines."""
    spans: list[Protected] = []
    begin: tuple[int, int] | None = None
    for m in _MARKER.finditer(text):
        line_no = text.count("\n", 0, m.start()) + 1
        if m.group(1) == ">>>":
            begin = (m.start(), line_no)
        elif begin is not None:
            end = text.find("\n", m.end())
            spans.append(Protected(begin[0], len(text) if end < 0 else end + 1,
                                   f"the protected protocol (lines {begin[1]}-{line_no})"))
            begin = None
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    try:
        params = TrainScript.parse(text).params
    except ValueError:
        params = {}
    for name, param in params.items():
        i = param.lineno - 1
        if 0 <= i < len(lines):
            spans.append(Protected(offsets[i], offsets[i + 1],
                                   f"the constant {name} (line {param.lineno}: change it as a parameter)"))
    return spans


def has_protocol(text: str) -> bool:
    """Whether the script marks a protected protocol region (code scope needs one)."""
    return any(p.what.startswith("the protected protocol") for p in protected_spans(text))


def occurrences(text: str, find: str) -> list[int]:
    """Every start of ``find`` in ``text``, overlapping ones too."""
    found, i = [], text.find(find)
    while i >= 0:
        found.append(i)
        i = text.find(find, i + 1)
    return found


def apply_edits(text: str, edits: Sequence[EditBlock], *, max_edits: int | None = None) -> str:
    """``text`` with every block applied, or ProposalError listing each reason it cannot be."""
    problems: list[str] = []
    if max_edits is not None and len(edits) > max_edits:
        problems.append(f"{len(edits)} edit blocks: at most {max_edits} in one proposal")
    protected = protected_spans(text)
    placed: list[tuple[int, int, int]] = []  # (start, end, block number)
    for k, edit in enumerate(edits, 1):
        label = f"edit {k}"
        if not edit.find:
            problems.append(f"{label}: its find text is empty")
            continue
        if edit.find == edit.replace:
            problems.append(f"{label}: its replace text is its find text (no change)")
            continue
        if _MARKER.search(edit.replace) or _MARKER.search(edit.find):
            problems.append(f"{label}: it may not write or remove a protocol marker line")
            continue
        hits = occurrences(text, edit.find)
        if not hits:
            problems.append(f"{label}: its find text matches nothing in the script (copy it exactly, "
                            f"whitespace included): {_quote(edit.find)}")
            continue
        if len(hits) > 1:
            problems.append(f"{label}: its find text matches {len(hits)} places: include enough of the "
                            f"surrounding lines to match exactly one: {_quote(edit.find)}")
            continue
        start, end = hits[0], hits[0] + len(edit.find)
        touched = next((p for p in protected if start < p.end and p.start < end), None)
        if touched is not None:
            problems.append(f"{label}: it touches {touched.what}; edits may change only the code outside it")
            continue
        clash = next((j for s, e, j in placed if start < e and s < end), None)
        if clash is not None:
            problems.append(f"{label}: it overlaps edit {clash}")
            continue
        placed.append((start, end, k))
    if problems:
        raise ProposalError(problems)
    out = text
    for start, end, k in sorted(placed, reverse=True):
        out = out[:start] + edits[k - 1].replace + out[end:]
    problems = check_edited(text, out)
    if problems:
        raise ProposalError(problems)
    return out


def check_edited(before: str, after: str) -> list[str]:
    """Why the edited script may not run: it does not parse, rebinds a protocol name, imports what is missing."""
    try:
        tree = ast.parse(after)
    except SyntaxError as exc:
        return [f"the edited script does not parse (line {exc.lineno}: {exc.msg}): {(exc.text or '').strip()[:120]}"]
    problems = []
    guarded = protocol_names(before)
    spans = [p for p in protected_spans(after) if p.what.startswith("the protected protocol")]
    starts = _line_offsets(after)
    for stmt in tree.body:
        at = starts[stmt.lineno - 1]
        if any(p.start <= at < p.end for p in spans):
            continue
        for name in _bound(stmt):
            if name in guarded:
                problems.append(f"the edit binds {name} again outside the protected protocol (line {stmt.lineno}); "
                                "the protocol's names may not be replaced")
    for top in sorted(set(imported(tree)) - set(imported(ast.parse(before)))):
        if not installed(top):
            problems.append(f"the edit imports {top}, which is not installed for the training script")
    return problems


def protocol_names(text: str) -> set[str]:
    """The top-level names the protocol's regions define (functions, classes, assignments)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    spans = [p for p in protected_spans(text) if p.what.startswith("the protected protocol")]
    starts = _line_offsets(text)
    names: set[str] = set()
    for stmt in tree.body:
        if any(p.start <= starts[stmt.lineno - 1] < p.end for p in spans):
            names.update(_bound(stmt))
    return names


def imported(tree: ast.AST) -> Iterable[str]:
    """The top-level module of every absolute import in ``tree``, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def installed(top: str) -> bool:
    """Whether ``top`` is importable here (the standard library or an installed package); nothing is run."""
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _bound(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    out = []
    for t in targets:
        out += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return out


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _quote(text: str, limit: int = 80) -> str:
    one = text.replace("\n", "\\n")
    return repr(one if len(one) <= limit else one[:limit] + "…")

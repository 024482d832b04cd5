"""The private Textual names the app uses are the ones tui/__init__.py lists with why each stays.

A new one (a subclass overriding a private method, an attribute reached on a widget) fails here
until the note says why no public name serves; one the app stops using must leave the note.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import sys
from pathlib import Path

from textual.app import App, Screen
from textual.css.stylesheet import Stylesheet
from textual.widgets import DataTable

import tui
import tui.app  # noqa: F401 - the app and every pane it imports, read by the scan

TUI = Path(tui.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def _classes_in(module: str) -> dict[str, ast.ClassDef]:
    """A module's top-level classes, parsed once (inspect.getsource walks the whole module per class)."""
    source = inspect.getsource(sys.modules[module])
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}


@functools.cache
def _defined_by(cls: type) -> frozenset[str]:
    """The private names one Textual class defines: its members and the ``self._x`` its ``__init__`` sets."""
    names = {n for n in vars(cls) if _private(n)}
    node = _classes_in(cls.__module__).get(cls.__qualname__)
    inits = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"] if node else []
    for inner in (n for f in inits for n in ast.walk(f)):
        if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id == "self":
            names.add(inner.attr)
    return frozenset(n for n in names if _private(n))


def _textual(cls: type) -> set[str]:
    return set().union(*(_defined_by(b) for b in cls.__mro__ if b.__module__.startswith("textual")))


def _names_in(node: ast.AST) -> list[tuple[str, bool]]:
    """Each private name under ``node`` and whether it is reached on ``self``/``super()`` (or defined here)."""
    out = []
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((inner.name, True))
        elif isinstance(inner, ast.Attribute):
            own = isinstance(inner.value, ast.Name) and inner.value.id == "self" or isinstance(inner.value, ast.Call)
            out.append((inner.attr, own))
        elif isinstance(inner, ast.Constant) and isinstance(inner.value, str):
            out.append((inner.value, False))  # getattr(stylesheet, "_x")
    return [(n, own) for n, own in out if _private(n)]


def _used() -> set[str]:
    elsewhere = _textual(App) | _textual(Screen) | _textual(DataTable) | _textual(Stylesheet)  # reached on others
    used: set[str] = set()
    ours: set[str] = set()  # the app's own private names (some are also an unrelated Textual class's)
    others: set[str] = set()
    for path in sorted(TUI.rglob("*.py")):
        module = importlib.import_module(".".join(path.relative_to(TUI.parent).with_suffix("").parts)
                                         .removesuffix(".__init__"))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if inspect.isclass(cls):
                textual_here = _textual(cls)
                for name, own in _names_in(node):
                    if own:
                        (used if name in textual_here else ours).add(name)
        others |= {name for name, own in _names_in(tree) if not own and name in elsewhere}
    return used | (others - ours)


def test_every_private_textual_name_the_app_uses_is_in_the_note_with_why():
    used = _used()
    assert {"_render_line", "_compositor", "_process_component_classes"} <= used  # the scan still reads the app
    noted = set(re.findall(r"``(?:\w+\.)?(_\w+)``", tui.__doc__))
    assert used - noted == set(), "private Textual names the app uses that tui/__init__.py does not list with why"
    assert noted - used == set(), "names tui/__init__.py lists that the app no longer uses"

"""The layers a newcomer sees in the folders are the layers the imports keep.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked here by running
``lint-imports``; cycles across core/, tui/, mechanisms/ and baseline/ are counted with every
import, deferred and type-only ones included; mechanisms/ may use only the standard library and its own modules.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import importlib
import sys
from pathlib import Path

import pytest

from tests.support.import_graph import cycles, import_graph, imported_names, module_files
from tests.support.patience import patience

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "tui", "mechanisms", "baseline")


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    found = str(exe) if exe.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([found, "--no-cache"], cwd=project, env=env, capture_output=True, text=True, timeout=patience(300))


def test_layer_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("core/record/state.py", "def _late():\n    from core.engine import engine  # noqa: F401\n",
     "core.record is not allowed to import core.engine"),
    ("core/levels/trace.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tui.app  # noqa: F401\n",
     "core.levels is not allowed to import tui"),
    ("mechanisms/tabu.py", "def _late():\n    import core.record.events  # noqa: F401\n",
     "mechanisms is not allowed to import core"),
    ("mechanisms/tabu.py", "def _late():\n    from mechanisms.sandbox import validator  # noqa: F401\n",
     "mechanisms.tabu is not allowed to import mechanisms.sandbox"),
    ("mechanisms/sandbox/isolation.py", "def _late():\n    import mechanisms.bandit  # noqa: F401\n",
     "mechanisms.sandbox is not allowed to import mechanisms.bandit"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a", encoding="utf-8") as f:
        f.write("\n\n" + line)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout


def test_no_import_cycles_in_the_product() -> None:
    # One graph over every package, so a cycle through two packages counts as one under core/ would.
    assert cycles(import_graph(*(ROOT / p for p in PACKAGES))) == []


def test_the_cycle_count_crosses_packages(tmp_path: Path) -> None:
    for pkg, body in (("low", "def f():\n    import high.top\n"), ("high", "from low import base\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / ("base.py" if pkg == "low" else "top.py")).write_text(body)
    assert cycles(import_graph(tmp_path / "low")) == []
    assert cycles(import_graph(tmp_path / "low", tmp_path / "high")) == [["high.top", "low.base"]]


def test_no_import_cycles_under_mechanisms() -> None:
    assert cycles(import_graph(ROOT / "mechanisms")) == []


def test_the_cycle_count_sees_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    (pkg / "c.py").write_text("def f():\n    from . import d\n")
    (pkg / "d.py").write_text("import pkg.c\n")
    (pkg / "e.py").write_text("import pkg.a\n")
    assert sorted(cycles(import_graph(pkg))) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]


def test_mechanisms_import_only_the_standard_library_and_themselves() -> None:
    outside = {}
    for module, path in module_files(ROOT / "mechanisms").items():
        for name in imported_names(module, path):
            top = name.split(".")[0]
            if top != "mechanisms" and top not in sys.stdlib_module_names:
                outside.setdefault(module, set()).add(top)
    # A built-in that needs a third-party package must name it in its docstring and be listed here.
    named = {"mechanisms.cmaes_hint": {"cmaes", "numpy"}}
    assert outside == named, f"mechanisms/ imports beyond the standard library: {outside}"
    for module, packages in named.items():
        doc = importlib.import_module(module).__doc__ or ""
        assert all(p in doc for p in packages), f"{module} must name {packages} in its docstring"


def test_the_import_scan_reads_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "mechanisms"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .base import X\n")
    (pkg / "base.py").write_text("import json\ndef f():\n    import numpy\n")
    names = set()
    for module, path in module_files(pkg).items():
        names |= imported_names(module, path)
    assert {"mechanisms.base", "json", "numpy"} <= names

"""The engine must stay free of Textual: proven at run time, not only by grep."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import core


def test_importing_every_core_module_imports_no_textual():
    modules = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
    assert "core.engine.engine" in modules and "core.levels.inner" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(core.__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core imported Textual modules: {out.stdout.strip()}"


def test_no_source_file_under_core_mentions_a_textual_import():
    root = Path(core.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.lstrip().startswith(("import textual", "from textual"))
                        for line in p.read_text().splitlines())]
    assert offenders == []

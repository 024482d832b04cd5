"""A training script together with the folder it lives in: what it imports, what it fixes.

The public autoresearch ``train.py`` takes ``TIME_BUDGET``, ``MAX_SEQ_LEN`` and
``EVAL_TOKENS`` from its sibling ``prepare.py`` and seeds torch with a literal 42. Run as
it is, it would train for its own 300 s whatever ``--budget`` says, and every "seed" of a
noise or confirmation run would be the same seed. This module finds both:

- constants the script imports from a module next to it (``from prepare import
  TIME_BUDGET``) are set in a per-run copy of the folder, never in the user's files; a
  budget that cannot be set that way refuses the run with the reason;
- literal seeds (``torch.manual_seed(42)``) are reported with what bilevel can and cannot
  vary, for noise and confirm to say;
- constants that only measure the hardware (peak FLOPs, device names) are named, so the
  search leaves them alone.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.services.script import TrainScript

# Imported protocol constants that bilevel sets in the per-run copy (the rest are only read).
BUDGET_NAME = "TIME_BUDGET"
PROTOCOL_NAMES = ("TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS")

# H100_BF16_PEAK_FLOPS, PEAK_TFLOPS, GPU_NAME, DEVICE_NAME, MEM_BANDWIDTH — not FLOPS_BUDGET_LR.
_MEASUREMENT_NAME = re.compile(r"(?:^|_)(?:T|G)?FLOPS$|(?:^|_)PEAK(?:_|$)|(?:^|_)(?:GPU|DEVICE)_(?:NAME|MODEL)$|"
                               r"(?:^|_)BANDWIDTH$")
MEASUREMENT_REASON = ("measures the hardware (for the reported MFU or throughput); changing it changes "
                      "no training, only the numbers the run reports")

_SEED_CALLS = ("manual_seed", "manual_seed_all", "seed", "set_seed", "default_rng", "RandomState")
_SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                           ".ipynb_checkpoints", "node_modules", "sessions"})
COPY_LIMIT_BYTES = 4 * 2**20  # larger files (data, checkpoints) are linked into the copy, not copied
MAX_COPIED_FILES = 5000


@dataclass(frozen=True)
class SiblingConstant:
    """A constant the script takes from a module in its own folder."""

    module: str  # "prepare"
    name: str  # "TIME_BUDGET"
    value: object
    lineno: int  # in the module

    def where(self) -> str:
        return f"{self.module}.py:{self.lineno}"


@dataclass(frozen=True)
class FixedSeed:
    """A random seed written as a literal in a call: ``torch.manual_seed(42)``."""

    call: str
    value: int
    lineno: int


@dataclass(frozen=True)
class ScriptFolder:
    """What a script takes from its folder and what it fixes; see the module docstring."""

    script: Path
    modules: tuple[str, ...]  # sibling modules it imports (their folder is copied per run)
    constants: tuple[SiblingConstant, ...]  # protocol constants found in those modules
    fixed_seeds: tuple[FixedSeed, ...]
    reads_env_seed: bool  # honours BILEVEL_SEED
    problems: tuple[str, ...]  # reasons the run must be refused

    @property
    def needs_copy(self) -> bool:
        return bool(self.modules)

    def constant(self, name: str) -> SiblingConstant | None:
        return next((c for c in self.constants if c.name == name), None)

    def seed_note(self) -> str:
        """What a run's seed can and cannot vary; empty when the seed reaches the script."""
        if not self.fixed_seeds or self.reads_env_seed:
            return ""
        calls = ", ".join(f"{s.call} (line {s.lineno})" for s in self.fixed_seeds)
        return (f"{self.script.name} fixes its seed with {calls}: bilevel cannot vary the initialisation "
                "or anything else that seed decides, so runs with different seeds differ only by "
                "non-deterministic kernels and timing; noise measures that jitter at one seed and a "
                "confirmation re-runs the same seed. To vary it, seed from the environment, e.g. "
                "torch.manual_seed(int(os.environ.get('BILEVEL_SEED', 42))).")

    def changes(self, budget_s: float, extra: Mapping[str, object] | None = None) -> dict[str, dict[str, object]]:
        """Edits per sibling module for one run: the budget, plus ``extra`` (preset values)
        for imported constants that the module defines."""
        budget: object = int(budget_s) if float(budget_s).is_integer() else budget_s
        wanted = {**dict(extra or {}), BUDGET_NAME: budget}
        edits: dict[str, dict[str, object]] = {}
        for c in self.constants:
            if c.name in wanted and wanted[c.name] != c.value:
                edits.setdefault(c.module, {})[c.name] = wanted[c.name]
        return edits


def inspect(script: Path, text: str) -> ScriptFolder:
    """Read ``text`` (the script at ``script``) and the sibling modules it imports."""
    tree = ast.parse(text)
    folder = script.parent
    imported = _sibling_imports(tree, folder)
    constants: list[SiblingConstant] = []
    problems: list[str] = []
    for module, names in imported.items():
        path = folder / f"{module}.py"
        try:
            params = TrainScript.parse(path.read_text(encoding="utf-8")).params
        except (OSError, ValueError, SyntaxError) as exc:
            problems.append(f"{script.name} imports {module}.py, which cannot be read as Python: {exc}")
            continue
        wanted = PROTOCOL_NAMES if names is None else [n for n in names if n in PROTOCOL_NAMES]
        for name in wanted:
            if name in params:
                p = params[name]
                constants.append(SiblingConstant(module, name, p.value, p.lineno))
            elif name == BUDGET_NAME and names is not None:
                problems.append(
                    f"{script.name} takes {BUDGET_NAME} from {module}.py, where it is not a literal constant: "
                    f"bilevel cannot give the run its budget (write `{BUDGET_NAME} = 300` in {module}.py)")
    return ScriptFolder(script=script, modules=tuple(imported), constants=tuple(constants),
                        fixed_seeds=tuple(fixed_seeds(tree, text)), reads_env_seed="BILEVEL_SEED" in text,
                        problems=tuple(problems))


def _sibling_imports(tree: ast.Module, folder: Path) -> dict[str, list[str] | None]:
    """Top-level imports of modules that are files in ``folder``: module -> names (None: all)."""
    found: dict[str, list[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level and "." not in node.module:
            if (folder / f"{node.module}.py").is_file():
                names = [a.name for a in node.names]
                known = found.get(node.module, [])
                found[node.module] = None if "*" in names or known is None else [*known, *names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if "." not in alias.name and (folder / f"{alias.name}.py").is_file():
                    found[alias.name] = None  # module.CONSTANT: any of them may be read
    return found


def fixed_seeds(tree: ast.AST, text: str) -> list[FixedSeed]:
    """Calls such as ``torch.manual_seed(42)`` or ``random.seed(0)`` whose seed is a literal."""
    seeds = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        arg = node.args[0]
        if name in _SEED_CALLS and isinstance(arg, ast.Constant) and type(arg.value) is int:
            seeds.append(FixedSeed(ast.get_source_segment(text, node) or f"{name}({arg.value})",
                                   arg.value, node.lineno))
    return seeds


def measurement_params(script: TrainScript) -> dict[str, str]:
    """Constants that only measure the hardware, each with the reason it is locked."""
    return {name: MEASUREMENT_REASON for name in script.params if _MEASUREMENT_NAME.search(name)}


def materialise(folder: ScriptFolder, text: str, dest: Path,
                changes: Mapping[str, Mapping[str, object]]) -> Path:
    """Copy the script's folder into ``dest`` (replacing an earlier copy), write ``text`` as
    the script and apply ``changes`` to the sibling modules; returns the script's path there.

    Python files and small files are copied; large ones are linked; caches, virtual
    environments, version control and session folders are left out.
    """
    source = folder.script.parent.resolve()
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    avoid = dest.resolve()
    count = 0
    for root, dirs, files in os.walk(source):
        here = Path(root)
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not _contains(here / d, avoid)]
        target = dest / here.relative_to(source)
        target.mkdir(exist_ok=True)
        for name in files:
            count += 1
            if count > MAX_COPIED_FILES:
                raise ValueError(f"{source} holds over {MAX_COPIED_FILES} files: too many to copy for each run; "
                                 "put the training script in a folder of its own")
            src = here / name
            if name.endswith(".py") or src.stat().st_size <= COPY_LIMIT_BYTES:
                shutil.copy2(src, target / name)
            else:
                (target / name).symlink_to(src)
    script = dest / folder.script.name
    script.write_text(text, encoding="utf-8")
    for module, edits in changes.items():
        path = dest / f"{module}.py"
        edited = TrainScript.parse(path.read_text(encoding="utf-8")).apply(dict(edits))
        path.write_text(edited.text, encoding="utf-8")
    return script


def _contains(directory: Path, path: Path) -> bool:
    try:
        return path == directory.resolve() or path.is_relative_to(directory.resolve())
    except OSError:
        return False


def fixed_seed_note(text: str, name: str = "the script") -> str:
    """``seed_note`` from the script's text alone (no folder needed); empty if unparseable."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return ""
    folder = ScriptFolder(script=Path(name), modules=(), constants=(), fixed_seeds=tuple(fixed_seeds(tree, text)),
                          reads_env_seed="BILEVEL_SEED" in text, problems=())
    return folder.seed_note()

"""`bilevel doctor`'s checks of the training script: its own interpreter (torch, CUDA, the
modules it imports), its constants (editable and locked, with the reason), what it takes
from its folder or fixes itself, and how often a run would repeat its data."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.run.check import Check
from core.services import script_folder
from core.services.data_budget import estimate, repeat_warning
from core.services.script import TrainScript
from core.services.seeds import seed_params

if TYPE_CHECKING:
    from core.record.config import Config

_PROBE = """
import importlib.util, json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.is_available()
    out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
out["missing"] = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
print(json.dumps(out))
"""

PROTOCOL_REASON = "protocol: it defines the budget or the eval, so runs stay comparable"
SEED_REASON = "the engine's seed (acceptance.allow_seed_tuning = false)"


def imported_modules(text: str, folder: Path) -> list[str]:
    """Top-level package names the script imports, without modules of its own folder."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    own = {n for n in names if (folder / f"{n}.py").is_file() or (folder / n / "__init__.py").is_file()}
    return sorted(names - own - {"__future__"})


CUDA_ONLY_MODULES = ("kernels", "flash_attn", "flash_attn_interface", "triton")  # GPU kernels with no CPU path
_CUDA_SAFE_CALLS = {"torch.cuda.is_available", "torch.cuda.device_count"}  # asking is fine; using is not


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return node.id if isinstance(node, ast.Name) else ""


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """Every node that runs at import: the module body, without function and class bodies (a class's
    own statements run at import too, but a CUDA call there is rare enough to miss)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            out += node.decorator_list if not isinstance(node, ast.Lambda) else []
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def cuda_requirements(text: str) -> list[str]:
    """What makes a script need CUDA at import, with lines: torch.cuda calls and a "cuda" device in
    module-level code, imports of GPU-only kernel packages; [] when it has none (or does not parse)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    found: list[tuple[int, str]] = []
    for node in _module_level(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in CUDA_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in CUDA_ONLY_MODULES:
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.startswith("torch.cuda.") and name not in _CUDA_SAFE_CALLS:
                found.append((node.lineno, f"{name}()"))
            elif name in ("torch.device", "torch.set_default_device") and any(
                    isinstance(a, ast.Constant) and str(a.value).startswith("cuda") for a in node.args):
                found.append((node.lineno, f"{name}({node.args[0].value!r})"))  # type: ignore[attr-defined]
    return [f"line {line}: {what}" for line, what in sorted(set(found))]


def cuda_check(text: str, cuda_available: bool) -> "Check | None":
    """Whether the script can run here: one that needs CUDA at import cannot run without a CUDA device."""
    needs = cuda_requirements(text)
    if not needs:
        return None
    shown = "; ".join(needs[:4]) + (f"; and {len(needs) - 4} more" if len(needs) > 4 else "")
    if cuda_available:
        return Check("script CUDA", True, f"the script needs CUDA ({shown}); CUDA is available")
    return Check("script CUDA", False, f"the script needs CUDA at import ({shown}) and this machine has no CUDA "
                                       "device: it cannot run here")


def interpreter_checks(python: str, text: str, folder: Path) -> list["Check"]:

    modules = imported_modules(text, folder)
    try:
        out = subprocess.run([python, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=120,
                             cwd=folder)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("script python", False, f"{python}: cannot run it ({exc})")]
    if out.returncode != 0:
        return [Check("script python", False, f"{python}: {out.stderr.strip().splitlines()[-1:]}")]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    checks = [Check("script python", True, f"{python} (Python {info['python']})")]
    if "torch" in info:
        gpus = ", ".join(info["gpus"])
        checks.append(Check("script torch", True, f"{info['torch']}, CUDA " + (gpus if info["cuda"] else "not available"),
                            warning=not info["cuda"]))
    elif "torch" in modules:
        checks.append(Check("script torch", False, f"{python} cannot import torch: {info.get('torch_error')}"))
    if (cuda := cuda_check(text, bool(info.get("cuda")))) is not None:
        checks.append(cuda)
    missing = info["missing"]
    checks.append(Check("script imports", not missing,
                        f"{python} cannot import {', '.join(missing)}" if missing
                        else f"all {len(modules)} imported packages found ({', '.join(modules)})"))
    return checks


def constant_checks(cfg: "Config | None", path: Path, text: str) -> list["Check"]:
    from core.engine.engine import PROTOCOL_PARAMS

    try:
        script = TrainScript.parse(text)
    except ValueError as exc:
        return [Check("script", False, f"{path}: {exc}")]
    reasons = {n: PROTOCOL_REASON for n in PROTOCOL_PARAMS}
    reasons |= {n: "search.locked in the config" for n in (cfg.search.locked if cfg else [])}
    if not (cfg and cfg.acceptance.allow_seed_tuning):
        reasons |= {n: SEED_REASON for n in seed_params(script)}
    reasons |= script_folder.measurement_params(script)
    locked = {n: r for n, r in reasons.items() if n in script.params}
    editable = [n for n in script.params if n not in locked]
    checks = [Check("script", True, f"{path}: {len(editable)} editable constants: {', '.join(editable) or 'none'}")]
    checks += [Check("locked", True, f"{n}: {r}") for n, r in locked.items()]
    folder = script_folder.inspect(path, text)
    for c in folder.constants:
        checks.append(Check("imported", True, f"{c.name} = {c.value!r} from {c.where()}: each run's copy of the "
                            "folder sets it" if c.name == script_folder.BUDGET_NAME else
                            f"{c.name} = {c.value!r} from {c.where()}: {PROTOCOL_REASON}"))
    checks += [Check("script", False, p) for p in folder.problems]
    if folder.seed_note():
        checks.append(Check("seed", False, folder.seed_note(), warning=True))
    return checks


def constant_schema(cfg: "Config") -> "dict | None":
    """The search space of the config's script as the engine builds it (protocol and seed constants locked),
    or None when the script cannot be read."""
    from core.engine.engine import PROTOCOL_PARAMS
    from core.services.schema import infer_schema

    try:
        script = TrainScript.parse(cfg.script_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    locked = set(cfg.search.locked) | set(PROTOCOL_PARAMS) | set(script_folder.measurement_params(script))
    if not cfg.acceptance.allow_seed_tuning:
        locked |= set(seed_params(script))
    try:
        return infer_schema(script, locked=[n for n in locked if n in script.params], bounds=cfg.search.bounds)
    except ValueError:
        return None


def data_epochs_check(cfg: "Config | None", data_dir: Path | None) -> "Check | None":

    if data_dir is None or not (data_dir / "meta.json").is_file():
        return None
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    budget = cfg.budget.time_s if cfg else 300.0
    warning = repeat_warning(meta, budget)
    return Check("epochs", warning is None, warning or estimate(meta, budget), warning=warning is not None)


def script_checks(cfg: "Config | None") -> list["Check"]:
    """Every check of the script ``cfg`` names (the bundled train.py without a config)."""
    from core.record.config import BASELINE_SCRIPT

    path = cfg.script_path() if cfg else BASELINE_SCRIPT
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [Check("script", False, f"cannot read {path}: {exc.strerror or exc}")]
    python = (cfg.script.python if cfg else "") or sys.executable
    return interpreter_checks(python, text, path.parent) + constant_checks(cfg, path, text)

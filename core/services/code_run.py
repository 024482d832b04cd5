"""Code scope's runs (``search.scope = "code"``): edited code behind the training wall, scored by the trusted evaluation.

Every run of a code-scope session — the baseline, each trial, a confirmation — gets a run folder of its
own and trains behind :mod:`mechanisms.sandbox.training_wall`: it reads the interpreter, its packages,
the script's folder and a view of the data holding the training split only (links to ``train.bin``,
``meta.json`` and ``tokenizer.json``; ``val.bin`` is neither linked nor readable); it writes only its run
folder and a compile cache of its own (never the cache constants-scope runs load). The script's
``val_bpb`` line does not count: its trained model, exported to the run folder, goes to
``baseline/trusted_eval.py`` (the project's file, in a process of its own behind the same wall, the
validation split readable there only), which checks causality and computes val_bpb. The engine's clock
times the training.

What this does not stop: the trained model may be any causal function of the tokens, so a model that
learned the training split by heart is scored as what it is; the run may use the whole grace period
past its budget (the engine records the time it took, and kills it at the deadline); the check of
causality is a probe on random windows, not a proof; a script can read anything the interpreter, its
packages, ``/etc``, ``/proc`` and ``/sys`` hold (paths are not hidden: no private root), and spend the
compute and memory of its slot; the exported program is loaded by ``torch.export.load``, whose
deserialiser is trusted.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import platformdirs

from core.services import process_control as pc
from mechanisms.sandbox.training_wall import BOOT, PREFIX, REFUSED
from mechanisms.sandbox.worker_client import PACKAGE_ROOT

TRUSTED_EVAL = Path(PACKAGE_ROOT) / "baseline" / "trusted_eval.py"
MODEL_FILE = "model.pt2"
TRAIN_FILES = ("meta.json", "tokenizer.json", "train.bin")
PROTOCOL_CONSTANTS = ("MAX_SEQ_LEN", "EVAL_TOKENS", "DEVICE_BATCH_SIZE", "DEVICE")
EVAL_GRACE_S = 120.0  # the trusted evaluation's time beyond the run's grace


def compile_cache() -> Path:
    """Code scope's own torch.compile cache: what edited code compiled is never loaded by another kind of run."""
    return platformdirs.user_cache_path("bilevel") / "compile-code"


def wall_command(python: str, read: list[str], write: list[str]) -> tuple[str, ...]:
    """The command a program's command line is appended to, to run it behind the training wall."""
    spec = json.dumps({"read": read, "write": write})
    return (python, "-c", BOOT, PACKAGE_ROOT, spec, "--")


@dataclass(frozen=True)
class CodeRun:
    """One walled training run: its folder, the wall's command, the environment it adds."""

    folder: Path
    wrap: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE


def prepare(folder: Path, *, python: str, script: Path, script_dir: Path, data_dir: Path | None) -> CodeRun:
    """A fresh run folder (an earlier attempt's files removed) with its training-only view of the data."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "tmp").mkdir(parents=True)
    cache = compile_cache()
    cache.mkdir(parents=True, exist_ok=True)
    read = [str(script_dir), str(script)]
    env = {"BILEVEL_EXPORT_MODEL": str(folder / MODEL_FILE), "TMPDIR": str(folder / "tmp"), "HOME": str(folder),
           "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton"),
           "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    if data_dir is not None:
        view = folder / "data"
        view.mkdir()
        for name in TRAIN_FILES:
            source = (data_dir / name).resolve()
            if source.exists():
                (view / name).symlink_to(source)
                read.append(str(source))
        env["BILEVEL_DATA_DIR"] = str(view)
    return CodeRun(folder, wall_command(python, read, [str(folder), str(cache)]), env)


@dataclass(frozen=True)
class Evaluation:
    """What the trusted evaluation said: a val_bpb, or why there is none."""

    val_bpb: float | None
    reason: str
    causal: bool = False
    seconds: float = 0.0
    wall: str = ""  # the wall's own line (what was in force)


async def evaluate(run: CodeRun, *, python: str, data_dir: Path | None, constants: Mapping[str, object],
                   timeout_s: float, env: Mapping[str, str] | None = None) -> Evaluation:
    """The trusted evaluation of ``run``'s exported model, in its own walled process."""
    if data_dir is None:
        return Evaluation(None, "no prepared data to evaluate on")
    # the run folder is the script's: a link there would turn the evaluation's read or write rules elsewhere
    if run.model.is_symlink() or not run.model.is_file():
        return Evaluation(None, f"the run wrote no exported model ({MODEL_FILE} as a plain file): nothing to score")
    scratch = run.folder / "eval"
    if scratch.is_symlink() or scratch.is_file():
        scratch.unlink()
    elif scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    data = [str((data_dir / n).resolve()) for n in (*TRAIN_FILES, "val.bin")]
    wrap = wall_command(python, [str(TRUSTED_EVAL.parent), str(run.model), *data], [str(scratch)])
    picked = {k: constants[k] for k in PROTOCOL_CONSTANTS if k in constants}
    argv = [*wrap, python, "-u", str(TRUSTED_EVAL), str(run.model), str(data_dir), json.dumps(picked)]
    child_env = {"PATH": os.defpath, "LANG": "C.UTF-8", "TMPDIR": str(scratch), "HOME": str(scratch),
                 "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=child_env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=pc.die_with_parent_preexec())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        pc.signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Evaluation(None, f"the trusted evaluation did not finish within {timeout_s:g} s")
    except BaseException:
        pc.signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    wall = next((ln for ln in err.decode(errors="replace").splitlines() if ln.startswith(PREFIX)), "")
    if proc.returncode == REFUSED:
        return Evaluation(None, f"the trusted evaluation's wall was refused: {wall}", wall=wall)
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    try:
        said = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return Evaluation(None, f"the trusted evaluation ended with code {proc.returncode} and no result: "
                                f"{' | '.join(tail)[:400]}", wall=wall)
    value = said.get("val_bpb")
    if isinstance(value, (int, float)) and proc.returncode == 0:
        return Evaluation(float(value), "scored by the trusted evaluation", causal=bool(said.get("causal")),
                          seconds=float(said.get("seconds", 0.0)), wall=wall)
    return Evaluation(None, str(said.get("error", f"exit code {proc.returncode}"))[:500],
                      causal=bool(said.get("causal")), wall=wall)


def wall_refusal(python: str = sys.executable) -> str | None:
    """Why code scope cannot run here (the training wall cannot be built), or None: a probe of the wall itself."""
    if not sys.platform.startswith("linux"):
        return f'search.scope = "code" needs Linux for the training wall (this is {sys.platform})'
    argv = [*wall_command(python, [], []), python, "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": os.defpath})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'search.scope = "code" is refused: the training wall could not be probed ({exc})'
    if done.returncode != 0:
        why = next((ln for ln in done.stderr.splitlines() if ln.startswith(PREFIX)), done.stderr.strip()[-300:])
        return (f'search.scope = "code" is refused: the training wall edited code needs is not available here '
                f"({why or f'exit code {done.returncode}'}); it needs unprivileged user namespaces, Landlock "
                "and seccomp. Use search.scope = \"constants\"")
    return None

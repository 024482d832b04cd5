"""The session folder's layout: every path inside a session (or study) folder is named here.

Layout of a session folder::

    events.jsonl      one event per line, flushed per event, fsync'd per event or small batch
    artifacts/        train.py versions, diffs, LLM requests/replies, training logs, mechanisms
      baseline/         train.py, train.log (iteration 0)
      iterations/NNNN/  train.py, diff.patch, train.log (and .seedS variants of extra runs)
      llm/              <iteration>-<level>-<purpose>-<call id>.request.json / .response.txt
      mechanisms/       <research id>-<attempt>/ the generated module and its validation
    commands/         command files from attached viewers (see :mod:`core.record.channel`)
    engine.pid        the pid of a detached engine; engine.log its output
    processes.jsonl   the pid and process group of each training run, by its run tag
                      (see :mod:`core.record.processes`)

A study folder holds ``study.json``, one session folder per member and ``report/``; the
noise store ``noise.json`` sits in the sessions folder. Events refer to artifacts by their
path relative to the session folder; :func:`read_artifact` is the one reader, and it
refuses a path that leads outside the session. :func:`write_atomic` is the one writer of
whole files (temp file + fsync + rename). Imports nothing else of the project.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

EVENTS_FILE = "events.jsonl"
ARTIFACTS_DIR = "artifacts"
COMMANDS_DIR = "commands"
ENGINE_PID_FILE = "engine.pid"
ENGINE_LOG_FILE = "engine.log"
PROCESSES_FILE = "processes.jsonl"
STUDY_FILE = "study.json"
REPORT_DIR = "report"
NOISE_STORE_FILE = "noise.json"
DATA_META_FILE = "meta.json"  # in a prepared data folder (outside the session)


class ArtifactPathError(ValueError):
    """An artifact path that would lead outside its session folder."""


def events_path(session: Path) -> Path:
    return Path(session) / EVENTS_FILE


def is_session(path: Path) -> bool:
    return events_path(path).is_file()


def commands_dir(session: Path) -> Path:
    return Path(session) / COMMANDS_DIR


def engine_pid_path(session: Path) -> Path:
    return Path(session) / ENGINE_PID_FILE


def engine_log_path(session: Path) -> Path:
    return Path(session) / ENGINE_LOG_FILE


def processes_path(session: Path) -> Path:
    return Path(session) / PROCESSES_FILE


def report_dir(folder: Path) -> Path:
    return Path(folder) / REPORT_DIR


# --- artifacts: names relative to artifacts/, paths relative to the session ----------------------


def artifact_rel(name: str) -> str:
    """``name`` (relative to artifacts/) as the session-relative path an event records."""
    return f"{ARTIFACTS_DIR}/{name}"


def iteration_folder(iteration: int) -> str:
    """The artifacts sub-folder of one iteration (0 is the baseline; a negative number is a run outside
    the search: calibration or audit)."""
    if iteration < 0:
        return f"extra/{-iteration:04d}"
    return "baseline" if iteration == 0 else f"iterations/{iteration:04d}"


def baseline_script_name() -> str:
    return "baseline/train.py"


def train_script_name(iteration: int, seed: int | None = None) -> str:
    suffix = "" if seed is None else f".seed{seed}"
    return f"{iteration_folder(iteration)}/train{suffix}.py"


def diff_name(iteration: int) -> str:
    return f"{iteration_folder(iteration)}/diff.patch"


def train_log_name(iteration: int, seed: int | None = None) -> str:
    suffix = "" if seed is None else f".seed{seed}"
    return f"{iteration_folder(iteration)}/train{suffix}.log"


def code_run_name(iteration: int, seed: int | None = None) -> str:
    """The folder a code-scope run trains in (behind the training wall, its only writable place)."""
    suffix = "" if seed is None else f".seed{seed}"
    return f"{iteration_folder(iteration)}/run{suffix}"


def llm_stem(iteration: int | None, level: str, purpose: str, call_id: str) -> str:
    """Request and reply of one LLM call are ``<stem>.request.json`` / ``<stem>.response.txt``."""
    return f"llm/{iteration if iteration is not None else 'x'}-{level}-{purpose}-{call_id}"


def mechanism_folder(research_id: str, attempt: int) -> str:
    return f"mechanisms/{research_id}-{attempt}"


def artifacts_dir(session: Path) -> Path:
    return Path(session) / ARTIFACTS_DIR


def artifact_path(session: Path, relpath: str) -> Path:
    """The file a session-relative path names; ArtifactPathError if it leads outside the session.

    Absolute paths and ``..`` parts are refused outright; a symlink that resolves outside
    the session is refused too (an event, or a file a generated mechanism left, is data).
    """
    if not relpath:
        raise ArtifactPathError("empty artifact path")
    pure = PurePosixPath(relpath.replace("\\", "/"))
    if pure.is_absolute() or Path(relpath).is_absolute() or ".." in pure.parts:
        raise ArtifactPathError(f"artifact path {relpath!r} leads outside the session")
    root = Path(session).resolve()
    path = (root / pure).resolve()
    if path != root and root not in path.parents:
        raise ArtifactPathError(f"artifact path {relpath!r} leads outside the session")
    return path


def read_artifact(session: Path, relpath: str) -> str:
    """The text of an artifact; ArtifactPathError outside the session, OSError if unreadable."""
    return artifact_path(session, relpath).read_text(encoding="utf-8")


def write_atomic(path: Path, data: str | bytes, *, durable: bool = True) -> None:
    """Write a whole file so a reader sees the old content or the new, never half of it.

    The temp file is dot-named beside the target (watchers of a folder skip dot files).
    ``durable=False``: no fsync before the rename (a reader still never sees half of it; only a
    crash of the machine could leave it empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)  # a half-written temp file (a full disk) would only take more space
        except OSError:
            pass  # a read-only folder: nothing was written there either
        raise

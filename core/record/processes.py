"""The processes of a session's training runs: run tags derived from the log, pids in a side file.

A training run's process is named in the log by its run tag (a ``TrainingProcess`` event),
which every process it starts carries in its environment; resume finds and ends what is
left of a cut-short run by that tag alone. The tag is derived from what the log already
says (the session folder, how many times the session was resumed, the iteration, the seed
of an extra run, the attempt), so two runs of one session with the scripted LLM write the
same bytes. What only the machine decides (the pid, the process group, the engine's pid)
is appended to ``processes.jsonl`` beside the log, one JSON object per line, for a person
or a test that wants to look at the processes themselves; nothing replays from it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from core.record import layout


@dataclass(frozen=True)
class ProcessRecord:
    """One training run's process, as the engine saw it start."""

    tag: str
    iteration: int
    attempt: int
    pid: int
    pgid: int
    engine_pid: int


def run_tag(session: Path, *, resumes: int, iteration: int, attempt: int, seed: int | None = None) -> str:
    """The tag of one training run: the same for the same run of the same session, different for any other.

    ``resumes`` keeps a re-run after a resume apart from the run it replaces; the resolved
    session path keeps two sessions on one machine apart.
    """
    key = f"{Path(session).resolve()}\0{resumes}\0{iteration}\0{'' if seed is None else seed}\0{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def record_process(session: Path, record: ProcessRecord) -> None:
    """Append one run's process to the session's side file (flushed; a torn last line is skipped on read)."""
    with open(layout.processes_path(session), "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(record), sort_keys=True) + "\n")


def recorded_processes(session: Path) -> list[ProcessRecord]:
    """Every process the side file records, in the order they started; [] when there is none."""
    try:
        lines = layout.processes_path(session).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(ProcessRecord(**json.loads(line)))
        except (ValueError, TypeError):  # a line torn by a kill -9 mid-write
            continue
    return out

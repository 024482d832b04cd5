"""One training run as the engine asks an executor for it: everything but where it runs (the slot)."""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from core.services.trainer import VALID_BPB, Progress


@dataclass(frozen=True)
class TrialRequest:
    """What ``Executor.run(slot, script, trial)`` runs; the fields are ``run_training``'s keywords, plus the attempt."""

    attempt: int  # 1, then 2… for a re-run after an OOM at start-up or a lost node
    cwd: Path
    budget_s: float
    python: str = sys.executable
    grace_s: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)  # over the parent's environment; the slot's pinning goes over it
    log_path: Path | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_line: Callable[[str, str], None] | None = None  # (stream, line) for every line that is not progress
    cancel: asyncio.Event | None = None
    on_start: Callable[[int, str], None] | None = None  # (pid, tag) once the script runs
    valid_bpb: tuple[float, float] = VALID_BPB  # a val_bpb outside (low, high] is a crash: "invalid metric"
    tag: str | None = None  # marks every process of the run, so none outlives it
    clock: Callable[[], float] = time.monotonic  # measures the durations recorded (deadlines keep the real clock)
    wrap: tuple[str, ...] = ()  # code scope: the training wall's command, the script's command line after it
    own_metric: bool = True  # code scope: False, the script's val_bpb does not count (the trusted evaluation's does)

    def pinned(self, slot_env: Mapping[str, str]) -> TrialRequest:
        """This request with a slot's pinning (its CUDA_VISIBLE_DEVICES) over the environment."""
        return replace(self, env={**self.env, **slot_env})

    def training_kwargs(self) -> dict[str, Any]:
        """The keywords of ``run_training`` (and of the warm pool's ``run``)."""
        return dict(cwd=self.cwd, python=self.python, budget_s=self.budget_s, grace_s=self.grace_s, env=dict(self.env),
                    log_path=self.log_path, on_progress=self.on_progress, on_line=self.on_line, cancel=self.cancel,
                    on_start=self.on_start, valid_bpb=self.valid_bpb, tag=self.tag, clock=self.clock,
                    **({"wrap": self.wrap, "own_metric": False} if self.wrap or not self.own_metric else {}))

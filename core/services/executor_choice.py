"""Which executor ``[run]`` asks for: the local slots, or a Ray cluster (imported only when asked for)."""
from __future__ import annotations

from typing import Any

from core.services.executors import Executor, ExecutorError, LocalExecutor

EXECUTORS = ("local", "ray")


def make_executor(run_cfg: Any) -> Executor:
    """The executor of ``run.executor``: "local" (on ``run.gpus``) or "ray" (``run.ray_address``)."""
    kind = str(getattr(run_cfg, "executor", "local")).strip().lower()
    if kind == "local":
        return LocalExecutor.from_config(run_cfg.gpus)
    if kind == "ray":
        from core.services import (
            ray_executor,  # lazily: the engine starts without ray installed
        )

        return ray_executor.RayExecutor.from_config(run_cfg)
    raise ExecutorError(f'run.executor = "{run_cfg.executor}": choose one of {", ".join(map(repr, EXECUTORS))}')

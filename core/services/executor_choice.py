"""Which executor ``[run]`` asks for: the registry's entry ``run.executor`` (ours or a plugin's), imported when chosen."""
from __future__ import annotations

from typing import Any

from core.record import registry
from core.services.executors import Executor, ExecutorError
from core.services.plugins import PluginError, load


def make_executor(run_cfg: Any) -> Executor:
    """The executor of ``run.executor``: "local" (on ``run.gpus``), "ray" (``run.ray_address``), or a plugin's."""
    kind = str(getattr(run_cfg, "executor", "local")).strip().lower()
    if kind not in registry.names("executor"):
        raise ExecutorError(f'run.executor = "{run_cfg.executor}": choose one of '
                            f'{", ".join(map(repr, registry.names("executor")))}')
    try:
        factory = load(registry.entry("executor", kind))
    except PluginError as exc:
        raise ExecutorError(f'run.executor = "{run_cfg.executor}": {exc}') from None
    return factory(run_cfg)

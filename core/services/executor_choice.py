"""Which executor ``[run]`` asks for: the registry's entry ``run.executor`` (ours or a plugin's), imported when chosen."""
from __future__ import annotations

from typing import Any, Mapping

from core.record import registry
from core.services.executors import Executor, ExecutorError


def make_executor(run_cfg: Any, plugin_tables: Mapping[str, Mapping[str, Any]] | None = None) -> Executor:
    """The executor of ``run.executor``: "local" (on ``run.gpus``), "ray" (``run.ray_address``), or a plugin's
    (with its options from ``plugin_tables``, the config's ``[plugins.NAME]`` tables)."""
    kind = str(getattr(run_cfg, "executor", "local")).strip().lower()
    if kind not in registry.names("executor"):
        raise ExecutorError(f'run.executor = "{run_cfg.executor}": choose one of '
                            f'{", ".join(map(repr, registry.names("executor")))}')
    try:
        entry = registry.entry("executor", kind)
        factory, settings = registry.load(entry), registry.settings(entry, plugin_tables or {})
    except registry.PluginError as exc:
        raise ExecutorError(f'run.executor = "{run_cfg.executor}": {exc}') from None
    return factory(run_cfg, **settings)

"""Loading a registry entry's factory: ours by module path, a plugin's through its entry point.

The registry (core/record/registry.py) names each factory as ``"module:attr"``; this imports
it when the run chooses it, and says which entry failed and why when it cannot.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

from core.record.registry import ENTRY_POINT_GROUPS, Entry


class PluginError(ValueError):
    """A chosen entry's factory cannot be imported (a missing extra, a broken plugin)."""


def load(entry: Entry) -> Any:
    """The factory ``entry.target`` names, imported now."""
    point = metadata.EntryPoint(name=entry.name, value=entry.target, group=ENTRY_POINT_GROUPS[entry.kind])
    try:
        return point.load()
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"the {entry.kind} {entry.name!r} ({entry.origin}: {entry.target}) cannot be loaded: "
                          f"{exc}") from exc

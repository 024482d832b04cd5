"""The commented example config ``bilevel init`` writes: example_config.toml with the registry's choices filled in.

The template's ``# @groups``-style marker lines become comment lines listing every group,
proposer, executor and mechanism the registry knows (plugins included), so the comments can
never fall behind the code. Every marker is a comment, so the template itself stays valid TOML.
"""
from __future__ import annotations

from pathlib import Path

from core.record import registry

TEMPLATE = Path(__file__).with_name("example_config.toml")
INDENT = " " * 26  # the column the template's comments start in


def _lines(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in rows) + 2
    return [f"{INDENT}#   {name.ljust(width)}{text}" for name, text in rows]


def _options(entry: registry.Entry) -> str:
    try:
        declared = registry.options(entry)  # a plugin's are declared on its factory, imported for this
    except registry.PluginError as exc:
        return f" (its options cannot be read: {exc})"
    return f" (reads {', '.join(o.key for o in declared)})" if declared else ""


def _block(marker: str) -> list[str]:
    if marker == "groups":
        return _lines([(f'"{g.name}"', g.summary) for g in registry.GROUPS])
    kind = {"proposers": "proposer", "executors": "executor", "mechanisms": "mechanism"}[marker]
    return _lines([(f'"{e.name}"', e.summary + _options(e)) for e in registry.entries(kind)])  # type: ignore[arg-type]


def render() -> str:
    """The example config's text, the registry's lists in place of the markers."""
    out: list[str] = []
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        marker = line.strip().removeprefix("# @") if line.strip().startswith("# @") else ""
        out.extend(_block(marker) if marker else [line])
    return "\n".join(out) + "\n"

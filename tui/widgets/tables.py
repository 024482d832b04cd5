"""Keyed table updates: rows added once, then only the cells whose value changed are touched."""
from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.widgets import DataTable


def shown_as(value: Any) -> Any:
    """What a cell looks like: rich's Text equality ignores the base style, so a cell that only
    turns bold (a kept iteration's number) would never be repainted."""
    if isinstance(value, Text):
        return (value.plain, str(value.style), tuple(value.spans), value.justify)
    return value


class KeyedRows:
    """Remembers what each row shows, so an update repaints only what changed (never a rebuild)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.shown: dict[str, dict[str, Any]] = {}

    def set(self, table: DataTable, key: str, cells: dict[str, Any]) -> bool:
        """Add or update row ``key``; True when a row was added."""
        before = self.shown.get(key)
        if before is None or key not in table.rows:
            table.add_row(*(cells[c] for c in self.columns), key=key)
            self.shown[key] = {c: shown_as(v) for c, v in cells.items()}
            return True
        for col in self.columns:
            value = cells[col]
            looks = shown_as(value)
            if before.get(col) != looks:
                table.update_cell(key, col, value)
                before[col] = looks
        return False

    def clear(self) -> None:
        self.shown.clear()


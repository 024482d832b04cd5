"""Keyed table updates: rows added once, then only the cells whose value changed are touched."""
from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.widgets import DataTable


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
            self.shown[key] = dict(cells)
            return True
        for col in self.columns:
            value = cells[col]
            if not _same(before.get(col), value):
                table.update_cell(key, col, value)
                before[col] = value
        return False

    def clear(self) -> None:
        self.shown.clear()


def _same(a: Any, b: Any) -> bool:
    """Equal as shown: Rich's ``Text ==`` ignores the base style (a row turning bold when kept)."""
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return a == b

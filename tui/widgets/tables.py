"""Tables: keyed updates (rows added once, then only the cells whose value changed are touched),
and a DataTable whose focus change repaints its cursor row, not every row."""
from __future__ import annotations

from typing import Any, Sequence

from rich.style import Style
from rich.text import Text
from textual import events
from textual.strip import Strip
from textual.widget import PseudoClasses
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from .paintstyle import OneStylePerPaint


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



class IncrementalTable(OneStylePerPaint, DataTable):
    """A DataTable that re-renders only the rows that changed: a new row, an updated cell, the cursor's
    old and new row, a focus change's cursor row.

    DataTable keys every rendered line on a count of all updates and on the cursor's position, so
    adding a row (an iteration), updating one cell or moving the cursor re-rendered every visible
    cell — in the trace ~30 rows × 8 cells, 12 ms of every repaint under a flood of events — and it
    keys them on the focus and tints its body when focused, so a pane switch did the same for both
    tables. Here a line is cached by its row, that row's own version and whether the cursor is on
    it; everything else (columns, sorting, clearing, a resize, a theme) still renders afresh. The
    focused pane's border says where the focus is: the body keeps one look, and the cursor row
    (bright when focused, dim when not) is the only part drawn per focus state.
    """

    DEFAULT_CSS = """
    IncrementalTable:focus { background-tint: 0%; }
    IncrementalTable:focus > .datatable--header { background-tint: 0%; }
    """
    LINES_KEPT = 4000

    _focus_restyle = False  # the styles being re-applied are a focus change's
    _focus_mark: Style | None = None  # set while the cursor row renders: keys its cells on the focus

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._row_versions: dict[Any, int] = {}
        self._scoped_updates = 0  # DataTable update counts that touched one row only
        self._lines: dict[tuple, Strip] = {}  # before DataTable's init: its watchers clear caches
        self._sized_at: Any = None
        super().__init__(*args, **kwargs)

    # --- what changed -------------------------------------------------------------------------------

    def add_row(self, *cells: Any, **kwargs: Any) -> Any:
        key = super().add_row(*cells, **kwargs)
        self._scoped_updates += 1  # a row at the end: the others look as they did
        self._row_versions[key] = self._row_versions.get(key, 0) + 1
        return key

    def update_cell(self, row_key: Any, column_key: Any, value: Any, *, update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, value, update_width=update_width)
        if not update_width:  # a wider column changes every row
            self._scoped_updates += 1
            key = RowKey(row_key) if isinstance(row_key, str) else row_key
            self._row_versions[key] = self._row_versions.get(key, 0) + 1

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._lines.clear()

    def _on_resize(self, event: events.Resize) -> None:
        # DataTable's handler (Textual calls it after this one) counts every Resize as an update;
        # one comes with each new row (the virtual size grew, or the height of an auto-height
        # table), though a line depends on the table's width only (in the key): that count changes no line
        if event.size.width == self._sized_at:
            self._scoped_updates += 1
        self._sized_at = event.size.width

    def watch_has_focus(self, has_focus: bool) -> None:
        restyle_components = getattr(self.app.stylesheet, "_process_component_classes", None)
        if self.cursor_type != "column" and restyle_components is not None:
            # Only the cursor's component styles depend on the focus here (the body's tint is 0 %
            # either way). Re-applying all of the CSS re-sets every rule, and Textual repaints both
            # scrollbars whenever a scrollbar colour is set, changed or not: ~10 ms a pane switch.
            restyle_components(self)
            self._get_styles_to_render_cell.cache_clear()
            self._refresh_cursor_row()
            return
        self._focus_restyle = True
        try:
            super().watch_has_focus(has_focus)  # re-applies the CSS now, which calls notify_style_update
        finally:
            self._focus_restyle = False

    def _refresh_cursor_row(self) -> None:
        if self.cursor_type == "row" and self.show_cursor and self.row_count:
            self.refresh_row(self.cursor_row)  # the one line that looks different
        else:
            self.refresh()

    def notify_style_update(self) -> None:
        if not self._focus_restyle or self.cursor_type == "column":
            super().notify_style_update()  # DataTable's: every rendered cell is dropped
            self._lines.clear()
            return
        super(DataTable, self).notify_style_update()
        self._get_styles_to_render_cell.cache_clear()  # the cursor's component styles changed
        self._refresh_cursor_row()

    def get_pseudo_class_state(self) -> PseudoClasses:
        state = super().get_pseudo_class_state()
        return state if self.cursor_type == "column" else state._replace(focus=False)

    # --- rendering ----------------------------------------------------------------------------------

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        try:
            row_key, line_in_row = self._get_offsets(y)
        except LookupError:
            return super()._render_line(y, x1, x2, base_style)
        cursor, hover = self.cursor_coordinate, self.hover_coordinate
        header = row_key is self._header_row_key
        row = -1 if header else self._row_locations.get(row_key)
        cursor_type = self.cursor_type
        on_cursor = self.show_cursor and (cursor_type == "column" or (cursor_type in ("row", "cell") and cursor.row == row)
                                          or (header and cursor_type == "cell"))
        hovered = self._show_hover_cursor and (hover.row == row or cursor_type == "column")
        key = (row_key, line_in_row, row, self._row_versions.get(row_key, 0), x1, x2, self.size.width, base_style,
               (cursor.column, self.has_focus) if on_cursor else None, hover.column if hovered else None,
               self._update_count - self._scoped_updates, cursor_type, self.show_cursor, self.zebra_stripes)
        strip = self._lines.get(key)
        if strip is None:
            if len(self._lines) >= self.LINES_KEPT:
                self._lines.clear()
            if on_cursor and cursor_type != "column":
                self._focus_mark = Style.from_meta({"table_focused": self.has_focus})  # its own cache entries
                try:
                    strip = super()._render_line(y, x1, x2, base_style + self._focus_mark)
                finally:
                    self._focus_mark = None
            else:
                strip = super()._render_line(y, x1, x2, base_style)
            self._lines[key] = strip
        return strip

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        style = super()._get_row_style(row_index, base_style)  # zebra rows: a component style, no base
        return style if self._focus_mark is None else style + self._focus_mark

"""The bilevel terminal app (Textual): every pane a view of the engine's event stream. Only the app imports Textual.

Textual's private names the app still uses, each where Textual has no public way to do the same
(pyproject pins ``textual<9`` for them; the snapshots and line-widget tests fail if one moves):

- ``Screen._compositor`` and ``App._background_screens`` (``BilevelApp.screen_text``): the screen as
  plain text for the tests; the only public render is an SVG (``export_screenshot``).
- ``App._watch_theme`` (overridden in ``BilevelApp``): runs as the theme is set, so the theme
  restored from the settings is not written back; the public ``theme_changed_signal`` comes later.
- ``Stylesheet._process_component_classes`` (``IncrementalTable.watch_has_focus``, looked up with a
  fallback to the public full restyle): a focus change re-styles the cursor's component classes
  only; the public path re-applies all the CSS and repaints both scrollbars (~10 ms a pane switch).
- DataTable's line rendering in ``IncrementalTable`` (widgets/tables.py): ``_render_line``,
  ``_get_row_style``, ``_clear_caches``, ``_on_resize``, ``_get_offsets``, ``_header_row_key``,
  ``_row_locations``, ``_show_hover_cursor``, ``_update_count``, ``_get_styles_to_render_cell``:
  DataTable caches every line on a count of all updates, and has no public hook to cache a line by
  its own row, which is what makes a new row or a cursor move cost one row, not the table.
- DataTable's row sizing (``GrowingTable.settle`` in widgets/growing.py, ``TracePane``'s changes
  column in widgets/trace.py): ``_require_update_dimensions``, ``_new_rows``, ``_update_dimensions``,
  ``_clear_caches``: new rows are measured in the frame that draws them (on idle, the table drew
  twice), and a column widened in place is re-measured without rebuilding the table.
- ``Widget._refresh_scrollbars`` (``grown`` in widgets/growing.py): a widget that grows redraws its
  scrollbars without the screen layout a virtual-size change costs.
- ``ScrollView._size_updated`` (overridden in ``PartsView``): the end stays in view in the same
  frame a pane is laid out shorter or taller.
"""

"""The line-API widgets the panes grow in: what they show, what they re-render, and that growing
never re-lays out the screen (real Textual apps, driven by pilots)."""
from __future__ import annotations

from rich.markdown import Markdown
from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.geometry import Offset
from textual.selection import Selection
from textual.widgets import DataTable, Static

from tui.widgets.lazylog import LazyLog
from tui.widgets.parts import PartsView
from tui.widgets.tables import IncrementalTable


def paragraph(i: int, words: int = 30) -> str:
    return f"**Part {i}.** " + " ".join(f"w{i}_{j}" for j in range(words))


class Parts(App):
    CSS = "PartsView { height: 8; width: 40; } #static { width: 40; height: auto; padding: 0 1; }"

    def compose(self) -> ComposeResult:
        yield PartsView(Markdown, gap=1, inset=1, follow=True)
        yield Static(id="static")


def count_calls(monkeypatch, cls: type, name: str) -> list[int]:
    calls = [0]
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def count_layouts(app: App) -> list[int]:
    screen, calls = app.screen, [0]
    original = screen._refresh_layout

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    screen._refresh_layout = counted  # type: ignore[method-assign]
    return calls


async def test_parts_look_as_statics_of_their_width_and_only_changed_parts_render_again(monkeypatch):
    renders = count_calls(monkeypatch, PartsView, "_render_value")
    app = Parts()
    async with app.run_test(size=(60, 40)) as pilot:
        view = app.query_one(PartsView)
        await pilot.pause()
        assert view.set_parts([paragraph(1), paragraph(2)])
        assert renders[0] == 2
        # a Static of the same content width (40 - 2 for the scrollbar, less the inset either side)
        static = app.query_one("#static", Static)
        static.styles.width = 38
        static.update(Markdown(paragraph(1)))
        await pilot.pause()
        drawn = view.text.splitlines()
        expected = [line.text.strip() for line in static.render_lines(static.region.reset_offset)]
        assert len(expected) > 2 and drawn[:len(expected)] == expected
        assert drawn[len(expected)] == ""  # the gap after the part
        assert not view.set_parts([paragraph(1), paragraph(2)])  # unchanged: nothing rendered
        assert renders[0] == 2
        assert view.set_parts([paragraph(1), paragraph(2) + " more"])  # the last part grew
        assert renders[0] == 3 and "more" in view.text


async def test_a_mouse_selection_over_parts_gives_their_text():
    # PartsView once named its part renderer _render, Widget's: Textual's selection called it with no
    # arguments and the copy raised a TypeError
    app = Parts()
    async with app.run_test(size=(60, 40)) as pilot:
        view = app.query_one(PartsView)
        await pilot.pause()
        view.set_parts([paragraph(1, words=3), paragraph(2, words=3)])
        await pilot.pause()
        text, ending = view.get_selection(Selection(Offset(0, 0), Offset(40, 2)))
        assert ending == "\n" and text.split() == ["Part", "1.", "w1_0", "w1_1", "w1_2", "Part", "2.", "w2_0",
                                                    "w2_1", "w2_2"]


async def test_growing_parts_never_re_lay_out_the_screen_and_keep_the_end_in_view():
    app = Parts()
    async with app.run_test(size=(60, 40)) as pilot:
        view = app.query_one(PartsView)
        await pilot.pause()
        view.set_parts([paragraph(1)])
        await pilot.pause()
        layouts = count_layouts(app)
        parts = [paragraph(1)]
        for i in range(2, 8):
            parts.append(paragraph(i))
            view.set_parts(parts)
            await pilot.pause()
            assert view.scroll_y == view.max_scroll_y > 0  # following: the newest part in view
        assert layouts[0] == 0
        shown = "\n".join(view.render_line(y).text for y in range(view.size.height))
        assert "w7_29" in shown and "w1_0" not in shown
        view.scroll_to(y=0, animate=False)  # the reader scrolls up: the view stays where they put it
        await pilot.pause()
        assert not view.following
        view.set_parts(parts + [paragraph(8)])
        await pilot.pause()
        assert view.scroll_y == 0
        view.scroll_end(animate=False)  # back at the end: following again
        await pilot.pause()
        assert view.following
        view.set_parts(parts + [paragraph(8), paragraph(9)])
        await pilot.pause()
        assert view.scroll_y == view.max_scroll_y


async def test_a_time_budget_draws_the_parts_over_several_calls_and_ends_with_all_of_them():
    app = Parts()
    async with app.run_test(size=(60, 40)) as pilot:
        view = app.query_one(PartsView)
        await pilot.pause()
        parts = [paragraph(i, words=80) for i in range(6)]
        view.set_parts(parts, budget_s=0.0)  # out of time at once: one part, the rest pending
        assert view.pending and "Part 0." in view.text and "Part 1." not in view.text
        calls = 1
        while view.pending:
            view.set_parts(parts, budget_s=0.0)
            calls += 1
        assert calls == 6
        text = view.text
        view.set_parts([])
        view.set_parts(parts)  # all at once
        assert view.text == text


async def test_a_narrower_view_renders_its_parts_again_at_the_new_width():
    app = Parts()
    async with app.run_test(size=(60, 40)) as pilot:
        view = app.query_one(PartsView)
        await pilot.pause()
        view.set_parts([paragraph(1, words=60)])
        lines_wide = view.line_count
        view.styles.width = 24
        await pilot.pause()
        await pilot.pause()
        assert view.line_count > lines_wide
        assert all(len(line) <= 24 for line in view.text.splitlines())


class Log(App):
    CSS = "LazyLog { height: 8; }"

    def compose(self) -> ComposeResult:
        yield LazyLog(max_lines=300)


async def test_the_lazy_log_renders_only_the_lines_shown_and_keeps_the_newest():
    app = Log()
    async with app.run_test(size=(80, 20)) as pilot:
        log = app.query_one(LazyLog)
        await pilot.pause()
        log.write_lines(Text(f"line {i}") for i in range(20))  # enough for the scrollbar (a layout)
        await pilot.pause()
        layouts = count_layouts(app)
        log.write_lines(Text(f"line {i}", style="green" if i == 499 else "") for i in range(20, 500))
        await pilot.pause()
        await pilot.pause()
        assert log.lines[0] == "line 200" and log.lines[-1] == "line 499" and len(log.lines) == 300
        assert log.scroll_y == log.max_scroll_y  # a write scrolls to the end
        assert len(log._strips) <= 2 * log.size.height  # rendered: what was drawn, not the 300 held
        assert layouts[0] == 0
        last = log.render_line(log.size.height - 1)
        assert last.text.startswith("line 499") and any(s.style and s.style.color and s.style.color.name == "green"
                                                        for s in last._segments)
        log.write_lines([Text("two\nlines")])
        assert log.lines[-2:] == ["two", "lines"]
        log.clear()
        assert log.lines == [] and log.virtual_size.height == 0


class Tables(App):
    def compose(self) -> ComposeResult:
        with Horizontal():
            yield IncrementalTable(id="a", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="b")


def fill(table: DataTable, rows: int) -> None:
    for key in ("it", "value"):
        table.add_column(key, key=key, width=10)
    for i in range(rows):
        table.add_row(str(i), f"v{i}", key=str(i))


def cursor_background(table: DataTable) -> str:
    y = table.cursor_row + table.header_height - int(table.scroll_y)
    strip = table.render_line(y)
    return str(strip._segments[0].style.bgcolor)


async def test_the_incremental_table_re_renders_only_the_rows_that_changed(monkeypatch):
    rendered = count_calls(monkeypatch, DataTable, "_render_line")
    app = Tables()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one("#a", IncrementalTable)
        fill(table, 10)
        table.focus()
        await pilot.pause()
        table.render_lines(table.region.reset_offset)  # everything drawn once
        before = rendered[0]
        table.add_row("10", "v10", key="10")
        table.move_cursor(row=10, animate=False)
        await pilot.pause()
        table.render_lines(table.region.reset_offset)
        assert rendered[0] - before <= 3  # the new row, the cursor's old and new row: not all eleven
        before = rendered[0]
        table.update_cell("3", "value", "changed")
        table.render_lines(table.region.reset_offset)
        assert rendered[0] - before == 1 and "changed" in table.render_line(4).text
        before = rendered[0]
        table.sort("value", reverse=True)  # everything moves: all drawn afresh, in the new order
        table.render_lines(table.region.reset_offset)
        assert rendered[0] - before >= 11
        assert table.render_line(1).text.split()[:2] == ["9", "v9"]


async def test_the_cursor_row_looks_focused_only_while_the_table_has_the_focus():
    app = Tables()
    async with app.run_test(size=(100, 30)) as pilot:
        table, other = app.query_one("#a", IncrementalTable), app.query_one("#b", DataTable)
        other.add_column("x")
        other.add_row("1")
        fill(table, 5)
        table.focus()
        await pilot.pause()
        focused = cursor_background(table)
        other.focus()
        await pilot.pause()
        blurred = cursor_background(table)
        table.focus()
        await pilot.pause()
        assert focused != blurred and cursor_background(table) == focused
        assert focused == str(table.get_component_styles("datatable--cursor").rich_style.bgcolor)
        rows = [table.render_line(y).text for y in range(1, 6)]
        other.focus()
        await pilot.pause()
        assert [table.render_line(y).text for y in range(1, 6)] == rows  # the same rows, one look

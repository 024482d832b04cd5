"""A live app repaints one pane a tick, each in turn, and the header on a turn of its own: a
frame is then one pane's renders, not the whole screen's (a real app, events pushed, the turns
driven by the test instead of the timer)."""
from __future__ import annotations

import asyncio

import msgspec

from core.record import events as ev
from tests.support.queue_source import QueueSource
from tests.test_tui_app import until
from tui.app import PANE_IDS, BilevelApp

SCHEMA = {n: {"kind": "float", "value": 0.1} for n in ("MATRIX_LR", "WEIGHT_DECAY")}


def session(iterations: int) -> list[ev.Event]:
    out: list[ev.Event] = [ev.SessionStarted(session="s", name="s", provider="offline", group="C",
                                             levels=["inner"], schema=SCHEMA, guidance="go")]
    for it in range(iterations):
        out += [ev.IterationStarted(iteration=it),
                ev.TrainingStarted(iteration=it, budget_s=60),
                ev.TrainingFinished(iteration=it, val_bpb=1.0 - it / 100, duration_s=60),
                ev.IterationFinished(iteration=it, decision="baseline" if it == 0 else "keep",
                                     changes={} if it == 0 else {"MATRIX_LR": 0.1 + it / 100},
                                     val_bpb=1.0 - it / 100, duration_s=60)]
    return [msgspec.structs.replace(e, seq=i + 1, ts=1_700_000_000.0 + i) for i, e in enumerate(out)]


async def folded(app: BilevelApp, source: QueueSource, events: list[ev.Event]) -> None:
    """Push ``events`` and wait until the app has applied them all (and painted nothing)."""
    before = app.events_applied
    source.push(*events)
    while app.events_applied < before + len(events) or not source.caught_up.is_set():
        await asyncio.sleep(0.01)


async def test_each_repaint_tick_shows_one_pane_and_every_pane_gets_its_turn(monkeypatch):
    monkeypatch.setattr(BilevelApp, "_tick", lambda self: None)  # the header's clock: not a repaint
    source = QueueSource()
    app = BilevelApp(source, deterministic=False, refresh_hz=0.001)  # its timer never fires here
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        synced: list[str] = []
        for pane in app.panes:
            def recorder(original, name=pane.id):
                async def sync(*args, **kwargs):
                    synced.append(name)
                    await original(*args, **kwargs)
                return sync
            pane.sync = recorder(pane.sync)  # type: ignore[method-assign]
        header_refreshes = [0]
        refresh = app.header.refresh

        def counted(*args, **kwargs):
            header_refreshes[0] += 1
            return refresh(*args, **kwargs)

        app.header.refresh = counted  # type: ignore[method-assign]
        await folded(app, source, session(3))
        table = app.base.query_one("#trace-table")

        await app._repaint()  # the first turn: the trace, nothing else
        assert synced == ["trace"] and table.row_count == 3 and header_refreshes[0] == 0
        for _ in PANE_IDS:
            await app._repaint()
        assert synced == list(PANE_IDS) and header_refreshes[0] == 1  # then each pane, then the header
        assert "#2" in "\n".join(app.base.query_one("#event-log").lines)

        await app._repaint()  # nothing new: no pane is synced again
        assert synced == list(PANE_IDS)
        await folded(app, source, session(4)[-4:])  # one more iteration
        for _ in range(len(PANE_IDS) + 1):
            await app._repaint()
        assert table.row_count == 4 and synced.count("trace") == 2 and header_refreshes[0] == 2


async def test_waiting_for_the_app_to_catch_up_repaints_every_pane_at_once():
    source = QueueSource()
    app = BilevelApp(source, deterministic=False, refresh_hz=0.001)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        source.push(*session(2))
        await app.caught_up()  # what tests and the benchmark wait on: one repaint of everything
        assert app.base.query_one("#trace-table").row_count == 2
        assert app.base.query_one("#event-log").lines


async def test_a_key_is_painted_before_the_next_repaint_turn():
    from textual import events

    source = QueueSource()
    # the scheduler's clock stands still: the key's head start (KEY_FIRST_S) never runs out on its own
    app = BilevelApp(source, deterministic=False, refresh_hz=0.001, clock=lambda: 100.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await folded(app, source, session(2))
        app.post_message(events.Key("f12", None))  # a key nothing is bound to
        while app.repainter.key_unpainted is None:  # the app has seen it; its paint is still to come
            await asyncio.sleep(0)
        await app._repaint()
        assert app.base.query_one("#trace-table").row_count == 0  # the trace's turn waited
        await until(pilot, lambda: app.repainter.key_unpainted is None, what="the key's frame")
        await app._repaint()
        assert app.base.query_one("#trace-table").row_count == 2

"""Benchmark the app under a flood of events: throughput, key latency and memory.

Feeds a synthetic stream (training progress and output lines, streamed LLM tokens,
whole iterations, strategy cycles and research sessions) as fast as the headless app
(``App.run_test``) takes it, while pressing keys, and reports:

- events/s sustained (applied to the view model and painted at the app's 15 Hz),
- key latency: from the key reaching the app to its effect (a command sent, a screen shown): space,
  the help (? and escape), an iteration's detail view (Enter and escape) and a pane switch (2, 1),
- RSS after the stream,
- the garbage collector's longest pause per generation, the paints of the panes' screen and its
  layouts (each repaints every pane), during the steady stream.

Targets: >= 2,000 events/s, every key answered in < 100 ms, < 150 MB RSS after 10,000
events, at each of 80×24 (one pane at a time), 120×40 and 200×50. Exits 1 when a target is missed.
Run: ``python bench/bench_tui.py [--size 120x40] [--events N] [--slots 4]`` (``--slots``: a run with that
many GPU slots, so the slots view and the finish-ordered trace are on).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from core.record import events as ev  # noqa: E402

TARGET_EVENTS_PER_S = 2000.0
TARGET_KEY_MS = 100.0
TARGET_RSS_MB = 150.0
SIZES = ("80x24", "120x40", "200x50")  # the snapshot sizes: the compact layout, the usual, a wide one


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_stream(seed: int = 0, slots: int = 1) -> Iterator[ev.Event]:
    """An endless, plausible session: ~55% tokens, ~35% progress and output, the rest the run's structure.

    ``slots`` > 1: the run announces that many GPU slots, each iteration trains on the next one
    and the slots are sampled every 25 steps (the slots view, the slot column, finish order).
    """
    rng = random.Random(seed)
    seq = 0
    ts = 1_700_000_000.0

    def stamp(e: ev.Event) -> ev.Event:
        nonlocal seq, ts
        seq += 1
        ts += 0.05
        return msgspec.structs.replace(e, seq=seq, ts=ts)  # events are frozen

    schema = {n: {"kind": "float", "value": 0.1, "locked": n == "DEPTH"} for n in
              ("DEPTH", "MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO")}
    yield stamp(ev.SessionStarted(session="bench", name="bench", provider="offline", group="C",
                                  levels=["inner", "strategy", "research"], config={"budget": {"iterations": 10_000}},
                                  schema=schema, guidance="benchmark"))
    if slots > 1:
        yield stamp(ev.SlotsConfigured(slots=[ev.SlotInfo(name=f"gpu{i}", devices=str(i), memory_total_mb=81_559.0)
                                              for i in range(slots)]))
    best = 1.0
    it = 0
    call = 0
    while True:
        yield stamp(ev.IterationStarted(iteration=it))
        changes = {rng.choice(list(schema)[1:]): round(rng.random(), 4)} if it else {}
        call += 1
        yield stamp(ev.LLMRequest(call_id=f"i{call}", level="inner", purpose="propose", iteration=it))
        for _ in range(20):
            yield stamp(ev.LLMDelta(call_id=f"i{call}", level="inner", text="tok "))
        yield stamp(ev.LLMResponse(call_id=f"i{call}", level="inner", prompt_tokens=900, completion_tokens=20))
        yield stamp(ev.ProposalMade(iteration=it, changes=changes, hypothesis="a benchmark hypothesis"))
        yield stamp(ev.TrainingStarted(iteration=it, diff=f"artifacts/iterations/{it:04d}/diff.patch",
                                       slot=f"gpu{it % slots}", budget_s=300))
        for step in range(1, 151):
            yield stamp(ev.TrainingProgress(iteration=it, step=step, percent=step / 1.5, loss=4 - step / 100,
                                            tok_per_s=50_000.0, remaining_s=300 - 2 * step))
            if step % 5 == 0:
                yield stamp(ev.TrainingOutput(iteration=it, line=f"step {step} loss {4 - step / 100:.3f}"))
            if slots > 1 and step % 25 == 0:
                yield stamp(ev.SlotsSampled(samples=[ev.SlotSample(name=f"gpu{i}", utilisation=95.0,
                                                                   memory_used_mb=40_000.0, memory_total_mb=81_559.0)
                                                     for i in range(slots)]))
        val = round(best - rng.gauss(0.001, 0.004), 6)
        decision = "baseline" if it == 0 else ("keep" if val < best else "discard")
        yield stamp(ev.TrainingFinished(iteration=it, val_bpb=val, duration_s=330.0))
        yield stamp(ev.IterationFinished(iteration=it, decision=decision, changes=changes, val_bpb=val,
                                         best_before=None if it == 0 else best, duration_s=330.0,
                                         mechanisms={"tabu": {"observe": 1}}))
        if decision in ("baseline", "keep"):
            best = val
        if it and it % 5 == 0:
            yield stamp(ev.StrategyStarted(cycle=it // 5, after_iteration=it))
            yield stamp(ev.ParamFrozen(name="WEIGHT_DECAY", source="strategy", reason="no gain"))
            yield stamp(ev.StrategyDecision(cycle=it // 5, freeze=["WEIGHT_DECAY"], guidance="go on"))
            yield stamp(ev.ParamUnfrozen(name="WEIGHT_DECAY", source="user", reason="bench"))
            rid = f"r{it}"
            yield stamp(ev.ResearchStarted(research_id=rid, cycle=it // 5, after_iteration=it))
            for rnd in ("explore", "critique", "specify", "generate"):
                call += 1
                cid = f"r{call}"
                yield stamp(ev.LLMRequest(call_id=cid, level="research", purpose=rnd))
                for k in range(150):
                    yield stamp(ev.LLMDelta(call_id=cid, level="research",
                                            text=("\n\n- point " if k % 12 == 0 else "word ")))
                yield stamp(ev.LLMResponse(call_id=cid, level="research", prompt_tokens=2000, completion_tokens=150))
                yield stamp(ev.ResearchRound(research_id=rid, round=rnd, call_id=cid))
            yield stamp(ev.ResearchFinished(research_id=rid, outcome="activated", name=f"M{it}"))
        it += 1


class KeyProbe:
    """Presses keys the way a terminal sends them; times each until its effect has been painted."""

    def __init__(self, app: Any, source: Any) -> None:
        self.app, self.source = app, source
        self.latencies: dict[str, list[float]] = {"space (pause sent)": [], "? (help painted)": [],
                                                  "escape (help closed)": [], "enter (detail painted)": [],
                                                  "escape (detail closed)": [], "2 / 1 (pane focused)": []}
        self.turn = 0

    async def _measure(self, key: str, char: str | None, done: Callable[[float], bool], label: str) -> None:
        from textual import events as tx_events

        start = time.perf_counter()
        self.app._driver.send_message(tx_events.Key(key, char))
        while not done(start):
            if time.perf_counter() - start > 5:
                break
            await asyncio.sleep(0.0005)
        self.latencies[label].append((time.perf_counter() - start) * 1000)

    async def press_next(self) -> None:
        from tui.screens.detail import IterationDetailScreen
        from tui.screens.help import HelpScreen

        app = self.app

        def painted(kind: type, shown: bool) -> Callable[[float], bool]:
            # a screen that opens paints whole; the panes, once it closes, must be too: a partial
            # update first (the header's clock) is not what the user waits for
            return lambda since: (isinstance(app.screen, kind) is shown
                                  and PAINTED_WHOLE.get(id(app.screen), 0.0) > since)

        def focused(pane_id: str) -> Callable[[float], bool]:
            def done(since: float) -> bool:
                node = app.focused
                while node is not None and node.id != pane_id:
                    node = node.parent
                return node is not None and PAINTED.get(id(app.screen), 0.0) > since
            return done

        turn = self.turn % 4
        if turn in (0, 2):
            sent = len(self.source.sent)
            await self._measure("space", " ", lambda _: len(self.source.sent) > sent, "space (pause sent)")
        elif turn == 1:
            await self._measure("question_mark", "?", painted(HelpScreen, True), "? (help painted)")
            await self._measure("escape", "\x1b", painted(HelpScreen, False), "escape (help closed)")
        else:  # the new views: an iteration's detail (Enter on the trace), a pane switch and back
            if app.base.query_one("#trace-table").row_count:
                await self._measure("enter", "\r", painted(IterationDetailScreen, True), "enter (detail painted)")
                await self._measure("escape", "\x1b", painted(IterationDetailScreen, False),
                                    "escape (detail closed)")
            await self._measure("2", "2", focused("strategy"), "2 / 1 (pane focused)")
            await self._measure("1", "1", focused("trace"), "2 / 1 (pane focused)")
        self.turn += 1


PAINTED: dict[int, float] = {}  # id(screen) -> when it last sent an update to the terminal
PAINTED_WHOLE: dict[int, float] = {}  # id(screen) -> when it last sent all of itself


class GcPauses:
    """The garbage collector's pauses per generation, in ms, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.on:
            self.pauses[info["generation"]].append((time.perf_counter() - self._started) * 1000)

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


LAYOUTS: list[float] = []  # the duration of each layout of the panes' screen, in ms (paint included)
FRAMES: list[float] = []  # the duration of each paint of the panes' screen, in ms (compositing and renders)


def _watch_layouts() -> None:
    from textual.screen import Screen

    original = Screen._refresh_layout

    def refresh_layout(self: Screen, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        original(self, *args, **kwargs)
        if self.id == "_default":
            LAYOUTS.append((time.perf_counter() - started) * 1000)

    Screen._refresh_layout = refresh_layout  # type: ignore[method-assign]


def _watch_paints() -> None:
    """Record when each screen paints, so a key's latency runs to what the user sees."""
    from textual.screen import Screen

    original = Screen._compositor_refresh

    def compositor_refresh(self: Screen) -> None:
        compositor = self._compositor
        whole = compositor.size.region in compositor._dirty_regions  # as the compositor decides
        started = time.perf_counter()
        original(self)
        if self.id == "_default":
            FRAMES.append((time.perf_counter() - started) * 1000)
        PAINTED[id(self)] = time.perf_counter()
        if whole:
            PAINTED_WHOLE[id(self)] = PAINTED[id(self)]

    Screen._compositor_refresh = compositor_refresh  # type: ignore[method-assign]


async def bench(n_events: int, saturate_s: float, rate: float, seconds: float, size: tuple[int, int],
                key_every_s: float, slots: int = 1) -> dict[str, Any]:
    from tui.app import BilevelApp
    from tests.support.queue_source import QueueSource

    _watch_paints()
    _watch_layouts()
    source = QueueSource()
    app = BilevelApp(source, deterministic=False)  # as users run it: clock ticking, log throttled
    stream = synthetic_stream(slots=slots)
    out: dict[str, Any] = {}
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        out["rss_before_mb"] = rss_mb()

        # 1. a steady stream at the target rate: the app must keep up and answer keys
        out["rss_10k_mb"] = None
        gc_pauses = GcPauses()
        gc_pauses.on = True
        layouts_before, frames_before = len(LAYOUTS), len(FRAMES)
        probe = KeyProbe(app, source)
        start_applied = app.events_applied
        started = time.perf_counter()
        fed = 0
        next_key = started + key_every_s
        max_backlog = 0
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) * rate)
            if due > fed:
                source.push(*(next(stream) for _ in range(due - fed)))
                fed = due
            max_backlog = max(max_backlog, fed - (app.events_applied - start_applied))
            if out["rss_10k_mb"] is None and app.events_applied >= 10_000:
                out["rss_10k_mb"] = rss_mb()
            if now >= next_key:
                await probe.press_next()
                next_key = time.perf_counter() + key_every_s
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        gc_pauses.on = False
        gc_pauses.close()
        out["gc_pauses_ms"] = gc_pauses.pauses
        out["layouts_ms"] = LAYOUTS[layouts_before:]
        out["frames_ms"] = FRAMES[frames_before:]
        applied = app.events_applied - start_applied
        out["paced"] = {"rate": rate, "events": applied, "seconds": elapsed, "events_per_s": applied / elapsed,
                        "max_backlog": max_backlog, "latencies_ms": probe.latencies}
        # 2. then as fast as the app takes events, with keys pressed throughout
        probe = KeyProbe(app, source)
        started = time.perf_counter()
        fed = 0
        next_key = started + key_every_s
        repaints_before, applied_before = app.repaints, app.events_applied
        while (applied := app.events_applied - applied_before) < n_events or time.perf_counter() - started < saturate_s:
            if out["rss_10k_mb"] is None and app.events_applied >= 10_000:
                out["rss_10k_mb"] = rss_mb()
            if fed - applied < 4000:  # keep a backlog: the app never waits for events
                source.push(*(next(stream) for _ in range(2000)))
                fed += 2000
            if time.perf_counter() >= next_key:
                await probe.press_next()
                next_key = time.perf_counter() + key_every_s
            await asyncio.sleep(0.001)
        await app._repaint()
        elapsed = time.perf_counter() - started
        applied = app.events_applied - applied_before
        out["saturated"] = {"events": applied, "seconds": elapsed, "repaints": app.repaints - repaints_before,
                            "events_per_s": applied / elapsed, "latencies_ms": probe.latencies}
        out["rss_mb"] = rss_mb()
        if out["rss_10k_mb"] is None:
            out["rss_10k_mb"] = out["rss_mb"]

        out["rows"] = app.base.query_one("#trace-table").row_count
    return out


def _keys_report(latencies: dict[str, list[float]]) -> float:
    worst = 0.0
    for label, vals in latencies.items():
        if vals:
            worst = max(worst, max(vals))
            print(f"    key {label:<22} n={len(vals):<3} median {statistics.median(vals):6.1f} ms  "
                  f"p90 {sorted(vals)[int(0.9 * (len(vals) - 1))]:6.1f} ms  max {max(vals):6.1f} ms")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="saturation phase: at least this many events "
                        "(RSS is read at 10,000)")
    parser.add_argument("--saturate", type=float, default=4.0, help="saturation phase: at least this many seconds")
    parser.add_argument("--rate", type=float, default=TARGET_EVENTS_PER_S, help="steady phase: events per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="steady phase: duration")
    parser.add_argument("--size", default=",".join(SIZES), help="terminal sizes, WxH, comma-separated: several "
                        "run one after the other, each in a process of its own (RSS is per size)")
    parser.add_argument("--key-every", type=float, default=0.2, help="seconds between measured key presses")
    parser.add_argument("--slots", type=int, default=1, help="GPU slots the run has (> 1: the slots view is shown)")
    args = parser.parse_args(argv)
    sizes = [size.strip() for size in args.size.split(",") if size.strip()]
    if len(sizes) > 1:
        failed = 0
        for size in sizes:
            own = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--size")]
            failed += subprocess.run([sys.executable, __file__, *own, f"--size={size}"]).returncode != 0
            print()
        print("all sizes: " + ("all targets met" if not failed else f"MISSED at {failed} of {len(sizes)} sizes"))
        return 1 if failed else 0
    width, height = (int(n) for n in sizes[0].lower().split("x"))
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    r = asyncio.run(bench(args.events, args.saturate, args.rate, args.seconds, (width, height),
                          args.key_every, args.slots))

    sat, paced = r["saturated"], r["paced"]
    print(f"terminal {width}x{height}; {r['rows']} iterations in the trace table at the end")
    print(f"steady at {paced['rate']:,.0f} events/s for {paced['seconds']:.1f} s: applied {paced['events_per_s']:,.0f} "
          f"events/s, largest backlog {paced['max_backlog']:,} events")
    worst = _keys_report(paced["latencies_ms"])
    print(f"keys at the steady rate: max {worst:.1f} ms (target < {TARGET_KEY_MS:.0f} ms)")
    print("garbage collections meanwhile: " + ", ".join(
        f"generation {g} {len(p)}× (longest {max(p):.1f} ms)" if p else f"generation {g} none"
        for g, p in r["gc_pauses_ms"].items()))
    frames = sorted(r["frames_ms"])
    if frames:
        print(f"paints of the panes' screen meanwhile: {len(frames)} (median {statistics.median(frames):.1f} ms, "
              f"p90 {frames[int(0.9 * (len(frames) - 1))]:.1f} ms, longest {frames[-1]:.1f} ms)")
    layouts = r["layouts_ms"]
    print(f"layouts of the panes' screen meanwhile: {len(layouts)}"
          + (f" (median {statistics.median(layouts):.1f} ms, longest {max(layouts):.1f} ms, paint included)"
             if layouts else ""))
    print(f"saturated: {sat['events']:,} events in {sat['seconds']:.2f} s = {sat['events_per_s']:,.0f} events/s "
          f"folded and shown in {sat['repaints']} repaints (target >= {TARGET_EVENTS_PER_S:,.0f})")
    _keys_report(sat["latencies_ms"])
    print(f"RSS: {r['rss_10k_mb']:.1f} MB after 10,000 events, {r['rss_mb']:.1f} MB after "
          f"{paced['events'] + sat['events']:,} "
          f"(before: {r['rss_before_mb']:.1f} MB; target < {TARGET_RSS_MB:.0f} MB)")
    missed = []
    if sat["events_per_s"] < TARGET_EVENTS_PER_S:
        missed.append("throughput")
    if paced["events_per_s"] < 0.95 * paced["rate"] or paced["max_backlog"] > paced["rate"]:
        missed.append("keeping up with the steady stream")
    if not any(paced["latencies_ms"].values()) or worst >= TARGET_KEY_MS:
        missed.append("key latency")
    if r["rss_10k_mb"] >= TARGET_RSS_MB:
        missed.append("memory")
    print("result: " + ("all targets met" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

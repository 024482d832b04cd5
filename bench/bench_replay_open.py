"""Opening a long session in the app: a 30-iteration session with full dialogues shows whole in under a second.

Records a scripted session of 300 s runs (5 progress lines a second, 400 output lines each,
~1,500-token research rounds; > 90,000 events), opens it with ``bilevel replay``'s source at
instant speed and times from the app being up until every iteration is on screen. Exits 1
when the target is missed. Run: ``python bench/bench_replay_open.py``.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.record import layout  # noqa: E402

TARGET_S = 1.0


async def bench(folder: Path) -> tuple[int, float]:
    from tests.support.scripted_engine import Plan, record_session
    from tui.app import BilevelApp
    from tui.sources import ReplaySource

    path = folder / "thirty"
    await record_session(path, Plan(iterations=30, progress_per_run=1500, output_per_run=400, outer_period=5,
                                    research_period=1, dialogue_scale=15))
    lines = layout.events_path(path).read_bytes().count(b"\n")
    app = BilevelApp(ReplaySource(path, follow=False), deterministic=True)
    async with app.run_test(size=(120, 40)) as pilot:
        started = time.perf_counter()  # the app itself is up: from here on it is the session's cost
        await app.caught_up(60)
        await pilot.pause()
        opened = time.perf_counter() - started
        if app.model.iterations_done != 30:
            raise SystemExit(f"only {app.model.iterations_done} of 30 iterations shown")
    return lines, opened


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        lines, opened = asyncio.run(bench(Path(tmp)))
    print(f"opened {lines:,} events in {opened:.2f} s (target < {TARGET_S:.1f} s)")
    return 0 if opened < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())

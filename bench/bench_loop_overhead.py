"""Overhead of the Level 1 loop itself, per iteration.

Runs the engine against the scripted OpenAI-protocol server at zero latency and the fast
stand-in training script, then measures, per iteration, the wall time from
IterationStarted to IterationFinished minus the training subprocess's own duration and
the LLM calls' own duration. Target: under 1 s per iteration. Exits 1 if missed.

    .venv/bin/python bench/bench_loop_overhead.py [--iterations 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.record import config  # noqa: E402

from core.record import events as ev  # noqa: E402
from core.engine.engine import Engine  # noqa: E402
from tests.support.openai_server import ScriptedOpenAI  # noqa: E402

TARGET_S = 1.0


async def measure(iterations: int, workdir: Path) -> list[float]:
    lrs = iter([0.02 + 0.0005 * i for i in range(1, 10_000)])
    with ScriptedOpenAI(responder=lambda req: json.dumps({"changes": {"LR": next(lrs)}, "hypothesis": "bench"})) as srv:
        cfg = config.from_dict({
            "name": "bench", "endpoint": {"provider": "openai", "base_url": srv.base_url, "model": "test-model"},
            "script": {"path": str(ROOT / "tests/fixtures/scripts/quadratic_train.py")}, "data": {"source": "none"},
            "budget": {"time_s": 1, "grace_s": 30, "iterations": iterations, "stuck_after": 0},
            "search": {"locked": ["DEPTH"], "history_tokens": 6000},
            "run": {"sessions_dir": str(workdir), "gpus": "cpu"}})
        engine = Engine.create(cfg)
        events: list[ev.Event] = []
        engine.subscribe(events.append)
        await engine.run()
    started = {e.iteration: e.ts for e in events if isinstance(e, ev.IterationStarted)}
    training = {e.iteration: e.duration_s for e in events if isinstance(e, ev.TrainingFinished)}
    llm: dict[int, float] = {}
    current = 0
    for e in events:
        if isinstance(e, ev.IterationStarted):
            current = e.iteration
        elif isinstance(e, ev.LLMResponse):
            llm[current] = llm.get(current, 0.0) + e.duration_s
    return [e.ts - started[e.iteration] - training.get(e.iteration, 0.0) - llm.get(e.iteration, 0.0)
            for e in events if isinstance(e, ev.IterationFinished) and e.iteration > 0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("FAKE_STEP_S", "0")
    with tempfile.TemporaryDirectory() as tmp:
        overheads = asyncio.run(measure(args.iterations, Path(tmp)))
    mean, worst = statistics.mean(overheads), max(overheads)
    p50 = statistics.median(overheads)
    print(f"loop overhead per iteration over {len(overheads)} iterations: "
          f"mean {mean * 1000:.1f} ms, median {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms (target < {TARGET_S:.0f} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

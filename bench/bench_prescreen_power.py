"""The pre-screen's power: how often the gate refuses a harmful mechanism, and passes a helpful one, per size.

The planted harmful mechanism vetoes every decrease of TOTAL_BATCH_SIZE (the surrogate's largest
single gain is halving it); the helpful one is a tabu on repeated proposals (tests/fixtures/mechanisms).
For each pre-screen size (k repeats × iterations) and each session seed, the real pre-screen
(core/engine/prescreen.py's ``prescreen``: the real InnerLoop, and Level 1.5's freeze rule where the
session has it, over the in-memory surrogate) runs the mechanism with and without it on paired seeds;
the table gives, per size, how many session seeds refused the harmful one, how many passed tabu, and
the wall time of one pre-screen. The fixtures run in-process here (they are our code, and the verdict
depends only on their behaviour); the gate runs a generated module in a sandboxed worker per search,
which adds the workers' start to the wall time (see tests/test_prescreen.py).

    .venv/bin/python bench/bench_prescreen_power.py [--seeds 8] [--group D] [--sizes 5x12,10x20,...]

Exits 1 when the chosen default (Level2Config's prescreen_repeats × prescreen_iterations) misses
the harmful mechanism on any seed or refuses tabu on any seed.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.engine.prescreen import bench_schema, prescreen  # noqa: E402
from core.levels.context import Ready  # noqa: E402
from core.record.config import SURROGATE_SCRIPT, Level2Config, demo_config  # noqa: E402
from core.record.state import RunState  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "mechanisms"


def fixture_class(stem: str) -> type:
    spec = importlib.util.spec_from_file_location(f"bench_fixture_{stem}", FIXTURES / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
                and hasattr(v, "review_proposal") and v.__name__ != "Mechanism")


async def one(group: str, seed: int, k: int, iterations: int, cls: type, freeze: str = "paper") -> tuple[str, float]:
    cfg = demo_config(**{"script.preset": "surrogate", "search.group": group, "search.seed": seed,
                         "strategy.freeze": freeze, "search.outer_period": 5,
                         "level2.prescreen_repeats": k, "level2.prescreen_iterations": iterations})
    state = RunState()
    text = SURROGATE_SCRIPT.read_text(encoding="utf-8")
    state.schema = {n: {"locked": s.locked} for n, s in bench_schema(cfg, text).items()}
    started = time.monotonic()
    event = await prescreen(cfg, state, lambda rel: "", Ready("r1", cls.__name__, "builtin"), "", cls,
                            lambda e: e)
    return event.verdict, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--group", default="D", help="the session's group: D screens with Level 1 only, C with 1.5 too")
    parser.add_argument("--sizes", default="5x12,10x20,8x30,10x30,12x30")
    args = parser.parse_args()
    harmful, tabu = fixture_class("no_smaller_batch"), fixture_class("tabu_memory")
    default = (Level2Config().prescreen_repeats, Level2Config().prescreen_iterations)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    print(f"session group {args.group}, {args.seeds} session seeds, load {os.getloadavg()[0]:.1f} at start")
    print("| k × iterations | harmful refused | tabu passed | one pre-screen (s, median) |")
    print("|---|---|---|---|")
    failures = []
    for k, iterations in sizes:
        caught = passed = 0
        walls = []
        for seed in range(args.seeds):
            verdict, wall = asyncio.run(one(args.group, seed, k, iterations, harmful))
            caught += verdict == "harmful"
            walls.append(wall)
            verdict, wall = asyncio.run(one(args.group, seed, k, iterations, tabu))
            passed += verdict == "passed"
            walls.append(wall)
        walls.sort()
        print(f"| {k} × {iterations} | {caught}/{args.seeds} | {passed}/{args.seeds} | {walls[len(walls) // 2]:.1f} |",
              flush=True)
        if (k, iterations) == default and (caught < args.seeds or passed < args.seeds):
            failures.append(f"the default {k} × {iterations} refused the harmful mechanism on {caught} of "
                            f"{args.seeds} seeds and passed tabu on {passed}")
    print(f"load {os.getloadavg()[0]:.1f} at the end")
    for f in failures:
        print(f"bench: target missed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

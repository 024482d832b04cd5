"""Dead time per iteration: a warm training worker against a fresh process per iteration.

Runs the CPU demo config (``bilevel run --demo``: the cpu-tiny preset of baseline/train.py
on its data, its time budget) for N hyperparameter-only iterations (MATRIX_LR moves) in
each mode, in this one call, through the engine's two training calls
(``trainer.run_training`` and ``WarmPool.run``). Dead time of an iteration = the training
call's wall time - the script's own ``training_seconds``: interpreter and torch start,
data, model build, warm-up (compile and untimed steps where it compiles), eval. Goal:
warm <= 0.5 s per iteration and >= 8x less than fresh. Exits 1 when either is missed.

    .venv/bin/python bench/bench_warm_worker.py [--iterations 10] [--budget 4]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import baseline.prepare as prep  # noqa: E402
from baseline.presets import PRESETS  # noqa: E402
from core.record.config import demo_config  # noqa: E402
from core.services.script import TrainScript  # noqa: E402
from core.services.trainer import run_training  # noqa: E402
from core.services.warm_worker import WarmPool, warm_plan  # noqa: E402

WARM_TARGET_S = 0.5
RATIO_TARGET = 8.0


def scripts(iterations: int, budget: float) -> list[str]:
    base = TrainScript.parse((ROOT / "baseline" / "train.py").read_text(encoding="utf-8"))
    preset = {**PRESETS["cpu-tiny"], "TIME_BUDGET": int(budget) if budget.is_integer() else budget}
    return [base.apply({**preset, "MATRIX_LR": round(0.02 + 0.003 * i, 4)}).text for i in range(iterations)]


async def measure(mode: str, texts: list[str], data: Path, workdir: Path, budget: float) -> list[float]:
    env = {"BILEVEL_DATA_DIR": str(data), "BILEVEL_SEED": "42"}
    pool = WarmPool()
    dead: list[float] = []
    try:
        for i, text in enumerate(texts):
            script = workdir / f"{mode}_{i:02d}.py"
            script.write_text(text, encoding="utf-8")
            t0 = time.monotonic()
            if mode == "warm":
                plan = warm_plan(text)
                assert plan is not None, "baseline/train.py declares no WARM_SAFE"
                result = await pool.run(script, plan, seed=42, cwd=workdir, budget_s=budget, grace_s=90, env=env)
            else:
                result = await run_training(script, cwd=workdir, budget_s=budget, grace_s=90, env=env)
            wall = time.monotonic() - t0
            if not result.ok:
                raise SystemExit(f"{mode} iteration {i} failed: {result.reason}\n{result.error_tail}")
            dead.append(wall - result.metrics["training_seconds"])
            print(f"  {mode:5s} {i:2d}: wall {wall:5.2f} s, training {result.metrics['training_seconds']:4.1f} s, "
                  f"dead {dead[-1]:5.2f} s, val_bpb {result.val_bpb:.6f}", flush=True)
    finally:
        await pool.close()
    if mode == "warm":
        print(f"  warm workers started: {pool.started}")
    return dead


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--budget", type=float, default=None, help="seconds of training (default: the demo's)")
    args = parser.parse_args()
    cfg = demo_config()
    budget = float(args.budget if args.budget is not None else cfg.budget.time_s)
    d = cfg.data
    data = prep.prepare(d.source, name=d.name, max_bytes=d.max_bytes, vocab_size=d.vocab_size, log=lambda m: None)
    load = os.getloadavg()
    print(f"demo config: cpu-tiny, budget {budget:g} s, {args.iterations} iterations per mode; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    texts = scripts(args.iterations, budget)
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        fresh = asyncio.run(measure("fresh", texts, data, Path(tmp), budget))
        warm = asyncio.run(measure("warm", texts, data, Path(tmp), budget))
    # The first warm iteration starts the worker: it is a fresh start, reported apart.
    warm_steady = warm[1:] or warm
    fresh_mean, warm_mean = statistics.mean(fresh), statistics.mean(warm_steady)
    ratio = fresh_mean / warm_mean if warm_mean > 0 else float("inf")
    print(f"warm mean over all {len(warm)}, the worker's start included: {statistics.mean(warm):.2f} s")
    print(f"dead time per iteration: fresh {fresh_mean:.2f} s (median {statistics.median(fresh):.2f}), "
          f"warm {warm_mean:.2f} s (median {statistics.median(warm_steady):.2f}, first {warm[0]:.2f} s "
          f"starting the worker), ratio {ratio:.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ok = warm_mean <= WARM_TARGET_S and ratio >= RATIO_TARGET
    print(f"{'PASS' if ok else 'FAIL'}: goal warm <= {WARM_TARGET_S} s and >= {RATIO_TARGET:g}x less than fresh")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

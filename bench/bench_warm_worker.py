"""Dead time per iteration: a warm training worker against a fresh process per iteration.

Runs the CPU demo config (``bilevel run --demo``: the cpu-tiny preset of baseline/train.py
on its data, its time budget) for N hyperparameter-only iterations (MATRIX_LR moves) in
each mode, in this one call, through the engine's two training calls
(``trainer.run_training`` and ``WarmPool.run``). Dead time of an iteration = the training
call's wall time - the script's own ``training_seconds``: interpreter and torch start,
data, model build, warm-up (compile and untimed steps where it compiles), eval. Goal:
warm <= 0.5 s per iteration and >= 8x less than fresh. Exits 1 when either is missed.

It also follows the warm worker's memory from its second iteration to its last: its RSS
and, on a GPU, the iteration's peak_vram_mb. Either growing by more than 10 % fails (memory
must be released between iterations; ``--iterations 100 --warm-only`` for the long check).
``--preset reference`` runs the reference config on synthetic data of the reference shape
(bench_gpu_workload's; a GPU machine; its goal is <= 5 s dead).

    .venv/bin/python bench/bench_warm_worker.py [--iterations 10] [--budget 4] [--preset cpu-tiny]
        [--warm-only]
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
sys.path.insert(0, str(ROOT / "bench"))

import baseline.prepare as prep  # noqa: E402
from baseline.presets import PRESETS  # noqa: E402
from core.record.config import demo_config  # noqa: E402
from core.services.script import TrainScript  # noqa: E402
from core.services.trainer import run_training  # noqa: E402
from core.services.warm_worker import WarmPool, warm_plan  # noqa: E402

WARM_TARGET_S = {"cpu-tiny": 0.5, "reference": 5.0}
RATIO_TARGET = 8.0
MEMORY_GROWTH = 0.10  # the most a warm worker's RSS or peak VRAM may grow over its iterations


def rss_mb(pid: int) -> float:
    """A process's resident memory (Linux), 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def scripts(iterations: int, budget: float, preset_name: str = "cpu-tiny") -> list[str]:
    base = TrainScript.parse((ROOT / "baseline" / "train.py").read_text(encoding="utf-8"))
    preset = {**PRESETS[preset_name], "TIME_BUDGET": int(budget) if budget.is_integer() else budget}
    return [base.apply({**preset, "MATRIX_LR": round(0.02 + 0.003 * (i % 10), 4)}).text for i in range(iterations)]


async def measure(mode: str, texts: list[str], data: Path, workdir: Path, budget: float,
                  memory: list[tuple[float, float]] | None = None) -> list[float]:
    """Dead seconds per iteration; in warm mode ``memory`` gets (RSS MB, peak VRAM MB) after each."""
    env = {"BILEVEL_DATA_DIR": str(data), "BILEVEL_SEED": "42"}
    pool = WarmPool()
    dead: list[float] = []
    pids: list[int] = []
    try:
        for i, text in enumerate(texts):
            script = workdir / f"{mode}_{i:02d}.py"
            script.write_text(text, encoding="utf-8")
            t0 = time.monotonic()
            if mode == "warm":
                plan = warm_plan(text)
                assert plan is not None, "baseline/train.py declares no WARM_SAFE"
                result = await pool.run(script, plan, seed=42, cwd=workdir, budget_s=budget, grace_s=90, env=env,
                                        on_start=lambda pid, tag: pids.append(pid))
            else:
                result = await run_training(script, cwd=workdir, budget_s=budget, grace_s=90, env=env)
            wall = time.monotonic() - t0
            if not result.ok:
                raise SystemExit(f"{mode} iteration {i} failed: {result.reason}\n{result.error_tail}")
            dead.append(wall - result.metrics["training_seconds"])
            held = ""
            if memory is not None:
                memory.append((rss_mb(pids[-1]), float(result.metrics.get("peak_vram_mb", 0.0))))
                held = f", worker RSS {memory[-1][0]:.0f} MB, peak VRAM {memory[-1][1]:.0f} MB"
            print(f"  {mode:5s} {i:2d}: wall {wall:5.2f} s, training {result.metrics['training_seconds']:4.1f} s, "
                  f"dead {dead[-1]:5.2f} s, val_bpb {result.val_bpb:.6f}{held}", flush=True)
    finally:
        await pool.close()
    if mode == "warm":
        print(f"  warm workers started: {pool.started}")
    return dead


def memory_report(memory: list[tuple[float, float]]) -> bool:
    """Whether the warm worker's memory held still from its second iteration to its last."""
    if len(memory) < 3:
        print("memory: too few iterations to judge growth")
        return True
    ok = True
    for label, first, last in (("RSS", memory[1][0], memory[-1][0]), ("peak VRAM", memory[1][1], memory[-1][1])):
        if first <= 0:
            continue  # not measured (no /proc, or the CPU: no VRAM)
        growth = (last - first) / first
        ok &= growth <= MEMORY_GROWTH
        print(f"memory: warm worker {label} {first:.0f} MB at iteration 2, {last:.0f} MB at {len(memory)} "
              f"({growth:+.1%}; at most {MEMORY_GROWTH:+.0%})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--budget", type=float, default=None, help="seconds of training (default: the demo's)")
    parser.add_argument("--preset", choices=sorted(WARM_TARGET_S), default="cpu-tiny",
                        help="cpu-tiny (the demo) or reference (a GPU machine)")
    parser.add_argument("--warm-only", action="store_true", help="no fresh runs: the warm worker's dead time and memory")
    args = parser.parse_args()
    cfg = demo_config()
    budget = float(args.budget if args.budget is not None else
                   cfg.budget.time_s if args.preset == "cpu-tiny" else 300)
    load = os.getloadavg()
    print(f"preset {args.preset}, budget {budget:g} s, {args.iterations} iterations per mode; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    texts = scripts(args.iterations, budget, args.preset)
    memory: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        if args.preset == "reference":  # the reference shape: vocab 8192, rows of 2049, the public eval size
            from bench_gpu_workload import synthetic_data

            rows = int(budget * 2.5e6 / 2049) + 1024
            data = synthetic_data(Path(tmp) / "data", 8192, 2049, rows, 40 * 2**19 // 2048)
        else:
            d = cfg.data
            data = prep.prepare(d.source, name=d.name, max_bytes=d.max_bytes, vocab_size=d.vocab_size,
                                log=lambda m: None)
        fresh = [] if args.warm_only else asyncio.run(measure("fresh", texts, data, Path(tmp), budget))
        warm = asyncio.run(measure("warm", texts, data, Path(tmp), budget, memory))
    # The first warm iteration starts the worker: it is a fresh start, reported apart.
    warm_steady = warm[1:] or warm
    warm_mean = statistics.mean(warm_steady)
    target = WARM_TARGET_S[args.preset]
    print(f"warm mean over all {len(warm)}, the worker's start included: {statistics.mean(warm):.2f} s")
    ok = warm_mean <= target
    if fresh:
        fresh_mean = statistics.mean(fresh)
        ratio = fresh_mean / warm_mean if warm_mean > 0 else float("inf")
        print(f"dead time per iteration: fresh {fresh_mean:.2f} s (median {statistics.median(fresh):.2f}), "
              f"warm {warm_mean:.2f} s (median {statistics.median(warm_steady):.2f}, first {warm[0]:.2f} s "
              f"starting the worker), ratio {ratio:.1f}x")
        ok &= ratio >= RATIO_TARGET
    else:
        print(f"dead time per warm iteration: {warm_mean:.2f} s (median {statistics.median(warm_steady):.2f}, "
              f"first {warm[0]:.2f} s starting the worker)")
    ok &= memory_report(memory)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    goal = f"warm <= {target} s" + ("" if args.warm_only else f" and >= {RATIO_TARGET:g}x less than fresh")
    print(f"{'PASS' if ok else 'FAIL'}: goal {goal}, memory growth <= {MEMORY_GROWTH:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

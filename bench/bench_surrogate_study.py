"""The surrogate bench: a four-group study at n = 10 in minutes, offline, and whether it discriminates.

Runs, as a user does (real `bilevel` subprocesses, headless, offline):

1. ``bilevel run --demo --group A,C,tpe,cmaes --repeats 10 --set script.preset=surrogate
   --iterations 30 --headless`` — timed; target under 2 minutes on the 2-core machine (the
   surrogate runs in the engine's process: a run costs what the engine's bookkeeping costs; the
   CPU seconds the study used are printed beside the wall time, which a loaded machine stretches) —
   then ``bilevel report`` on it, checking that all four groups have a bootstrap CI and
   every pair a permutation p;
2. ``--group tpe,sobol`` with the same settings: TPE must beat quasi-random search with a
   permutation p < 0.05 (fixed seeds 0–9; if it does not, the surrogate is too flat).

Prints the wall time, the per-group table and the comparisons (for bench/RESULTS.md), and
exits 1 when a target is missed.

    .venv/bin/python bench/bench_surrogate_study.py [--repeats 10] [--iterations 30] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.analysis.report import build_report, collect, group_rows, md_table, pair_rows  # noqa: E402
from core.analysis.report import GROUP_HEADER, PAIR_HEADER  # noqa: E402

TARGET_S = 120.0
GROUPS = ["A", "C", "tpe", "cmaes"]


def study(groups: list[str], repeats: int, iterations: int, cwd: Path) -> tuple[Path, float, float]:
    """The study's session folder, its wall time and the CPU seconds its process used."""
    args = [sys.executable, "-m", "core.cli", "run", "--demo", "--group", ",".join(groups), "--repeats", str(repeats),
            "--set", "script.preset=surrogate", "--iterations", str(iterations), "--headless"]
    started, cpu = time.monotonic(), _children_cpu()
    with open(cwd / f"{'-'.join(groups)}.log", "w") as log:
        proc = subprocess.run(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall, cpu = time.monotonic() - started, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"bench: the study exited {proc.returncode}; see {cwd}")
    made = sorted((cwd / "sessions").glob("*-study-*"), key=lambda p: p.stat().st_mtime)
    return made[-1], wall, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilevel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    failures = []
    load = os.getloadavg()[0]

    path, wall, cpu = study(GROUPS, args.repeats, args.iterations, work)
    report = build_report(collect([path]))
    print(f"## {','.join(GROUPS)} × {args.repeats} repeats × {args.iterations} iterations: {wall:.0f} s wall, "
          f"{cpu:.0f} CPU s (target < {TARGET_S:.0f} s wall; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end)\n")
    print(md_table(GROUP_HEADER, group_rows(report)), "\n")
    print(md_table(PAIR_HEADER, pair_rows(report)), "\n")
    if wall >= TARGET_S:
        failures.append(f"the study took {wall:.0f} s (target < {TARGET_S:.0f} s)")
    if [g.group for g in report.groups] != GROUPS or any(g.ci is None for g in report.groups):
        failures.append("the report does not show all four groups with a CI")
    if len(report.comparisons) != 6 or any(c.pvalue is None for c in report.comparisons):
        failures.append("the report lacks a pairwise test")

    path2, wall2, cpu2 = study(["tpe", "sobol"], args.repeats, args.iterations, work)
    report2 = build_report(collect([path2]))
    (cmp,) = report2.comparisons
    print(f"## tpe,sobol × {args.repeats} × {args.iterations}: {wall2:.0f} s wall, {cpu2:.0f} CPU s\n")
    print(md_table(GROUP_HEADER, group_rows(report2)), "\n")
    print(md_table(PAIR_HEADER, pair_rows(report2)), "\n")
    if not (cmp.difference < 0 and cmp.pvalue is not None and cmp.pvalue < 0.05):
        failures.append(f"TPE does not beat quasi-random search: difference {cmp.difference:+.6f}, p {cmp.pvalue}")
    for f in failures:
        print(f"MISSED: {f}", file=sys.stderr)
    print(f"sessions kept in {work}" if args.keep else f"sessions in {work} (temporary)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

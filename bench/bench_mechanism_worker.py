"""The cost of the mechanism worker boundary: worker start and hook round trip.

Starts isolated workers (the level the platform offers: strict where Landlock and
seccomp are available) with a tabu-like generated mechanism, then times
``review_proposal`` round trips with a realistic state snapshot (30 records). Targets:
worker start (spawn, lock down, ready) ≤ 1 s (worst of the starts); hook round trip
median ≤ 5 ms and p99 ≤ 20 ms. Exits 1 if any is missed.

    .venv/bin/python bench/bench_mechanism_worker.py [--calls 2000] [--starts 10]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mechanisms.base import SearchState  # noqa: E402
from mechanisms.contract import check  # noqa: E402
from mechanisms.sandbox.isolation import availability  # noqa: E402
from mechanisms.sandbox.worker_client import Worker, open_mechanism  # noqa: E402

START_TARGET_S, MEDIAN_TARGET_MS, P99_TARGET_MS = 1.0, 5.0, 20.0

SOURCE = '''
from mechanisms.base import Mechanism, Veto


class BenchTabu(Mechanism):
    name = "bench_tabu"

    def review_proposal(self, state, proposal):
        for r in state.records:
            if r["changes"] and r["changes"] == proposal["changes"]:
                return Veto(f"iteration #{r['iteration']} already tried it")
        return None
'''


def _state(n: int = 30) -> dict:
    schema = {f"P{i}": {"kind": "float", "value": 0.1 * i, "locked": False, "minimum": 0.0, "maximum": 10.0,
                        "choices": None, "log_scale": False, "pow2": False} for i in range(12)}
    records = [{"iteration": i, "decision": "discard", "changes": {f"P{i % 12}": 0.5 + i},
                "hypothesis": "a hypothesis of a sentence or so", "val_bpb": 1.0 + i / 1000,
                "best_before": 1.0, "values": {k: v["value"] for k, v in schema.items()}} for i in range(n)]
    return asdict(SearchState(iteration=n, records=records, schema=schema, best_val_bpb=1.0, baseline_val_bpb=1.0))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int, starts: int) -> int:
    level = availability().level
    start_times = []
    for _ in range(starts):
        worker = await Worker.start(level=level)
        start_times.append(worker.start_s)
        await worker.close()
    worker, info = await open_mechanism(SOURCE, "bench_tabu_module", level=level)
    assert info["ok"], info
    state = _state()
    proposal = {"changes": {"P3": 123.0}, "hypothesis": "new"}
    for _ in range(50):  # warm up
        await worker.call("review_proposal", [state, proposal], 2.0)
    rtts = []
    for _ in range(calls):
        t = time.perf_counter()
        value = await worker.call("review_proposal", [state, proposal], 2.0)
        check("review_proposal", value, state["schema"])
        rtts.append((time.perf_counter() - t) * 1000)
    await worker.close()
    median, p99, worst_start = statistics.median(rtts), _pct(rtts, 0.99), max(start_times)
    print(f"isolation: {worker.level}")
    print(f"worker start: median {statistics.median(start_times):.3f} s, max {worst_start:.3f} s "
          f"over {starts} (target <= {START_TARGET_S:g} s)")
    print(f"hook round trip (review_proposal, 30 records, {calls} calls): median {median:.2f} ms, "
          f"p99 {p99:.2f} ms, max {max(rtts):.2f} ms (targets <= {MEDIAN_TARGET_MS:g} / {P99_TARGET_MS:g} ms)")
    missed = [name for name, ok in (("start", worst_start <= START_TARGET_S), ("median", median <= MEDIAN_TARGET_MS),
                                    ("p99", p99 <= P99_TARGET_MS)) if not ok]
    if missed:
        print(f"MISSED: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=10)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.calls, args.starts)))

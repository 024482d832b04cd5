"""Cancel → the whole process tree gone: on a local slot and on a Ray task.

A stand-in training script starts a child which starts a grandchild, prints the three pids
and sleeps. Once all three are printed the run's cancel event is set; the figure is the time
from that moment until ``executor.run`` has returned *and* no pid of the tree is alive (checked
at return, then polled if any lingers). Goal: ≤ 1 s for every repeat, local and Ray (a local
``ray.init(num_cpus=2)`` cluster; skipped with a message when ray is not installed).
Exits 1 when a repeat misses the goal or leaves a process alive.

    .venv/bin/python bench/bench_cancel.py [--repeats 5] [--only local|ray]
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

from core.services.executors import LocalExecutor  # noqa: E402
from core.services.trial_request import TrialRequest  # noqa: E402
from tests.support.processes import alive  # noqa: E402

TARGET_S = 1.0
TREE = """\
import os, subprocess, sys, time
inner = "import os, subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('grandchild', g.pid, flush=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", inner])
print("child", child.pid, flush=True)
print("script", os.getpid(), flush=True)
time.sleep(600)
"""


async def one_cancel(executor, script: Path, workdir: Path) -> tuple[float, int]:
    """Seconds from cancel to the whole tree gone, and how many pids were still alive at return."""
    cancel = asyncio.Event()
    pids: dict[str, int] = {}
    cancelled_at = 0.0

    def line(stream: str, text: str) -> None:
        nonlocal cancelled_at
        name, _, pid = text.partition(" ")
        if name in ("script", "child", "grandchild"):
            pids[name] = int(pid)
        if len(pids) == 3 and not cancel.is_set():
            cancelled_at = time.monotonic()
            cancel.set()

    async with executor.slot() as slot:
        result = await executor.run(slot, script, TrialRequest(attempt=1, cwd=workdir, budget_s=600, grace_s=60,
                                                               on_line=line, cancel=cancel))
    returned = time.monotonic()
    if result.outcome != "cancelled" or len(pids) != 3:
        raise SystemExit(f"the run was not cancelled as expected: {result.outcome} ({result.reason}), saw {pids}")
    left_at_return = sum(alive(pid) for pid in pids.values())
    while any(alive(pid) for pid in pids.values()) and time.monotonic() - returned < 10:
        await asyncio.sleep(0.005)
    gone = time.monotonic() if left_at_return else returned
    return gone - cancelled_at, left_at_return


async def measure(name: str, executor, repeats: int, workdir: Path) -> list[tuple[float, int]]:
    script = workdir / "tree.py"
    script.write_text(TREE)
    figures = [await one_cancel(executor, script, workdir) for _ in range(repeats)]
    seconds = [s for s, _ in figures]
    print(f"{name}: cancel → tree gone: median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s "
          f"over {repeats}; processes alive at return: {sum(n for _, n in figures)}")
    return figures


async def main(repeats: int, only: str | None) -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        workdir = Path(tmp)
        if only in (None, "local"):
            figures = await measure("local", LocalExecutor.from_config("cpu:1"), repeats, workdir)
            failed |= any(s > TARGET_S or n for s, n in figures)
        if only in (None, "ray"):
            try:
                import ray
            except ImportError:
                print("ray: skipped (not installed: pip install 'bilevel-autoresearch[ray]')")
            else:
                from core.services.ray_executor import RayExecutor

                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
                ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False, logging_level="warning")
                try:
                    executor = RayExecutor(ray)
                    figures = await measure("ray", executor, repeats, workdir)
                    failed |= any(s > TARGET_S or n for s, n in figures)
                finally:
                    ray.shutdown()
    print(f"goal: every cancel ≤ {TARGET_S:.1f} s with nothing left alive: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("local", "ray"))
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.repeats, args.only)))

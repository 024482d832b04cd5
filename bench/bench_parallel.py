"""Parallel trials: slot utilisation on 8 slots, and the engine's CPU on 64.

The engine runs with the scripted OpenAI-protocol server (zero latency) and a fake executor:
the local executor's ``run_training`` is replaced by a coroutine that takes a fixed time per
trial, sends a few progress and output lines like a real run, and scores the candidate with
the stand-in script's response surface. Everything else is the product: the scheduler, the
batch proposer, the events, the session log on disk.

- utilisation: 8 CPU slots (``run.gpus = "cpu:8"``), 40 trials after the baseline; slot-seconds
  spent training divided by 8 × the wall time from the first trial's start to the last one's
  end. Target ≥ 95 %.
- engine CPU: 64 slots, 256 trials; the process's CPU time (the scripted server's thread
  included) divided by the wall time of the run. Target < 1 core.

Exits 1 when a target is missed.

    .venv/bin/python bench/bench_parallel.py [--trial-s 2.0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.services import executors as local_executor  # noqa: E402
from core.engine.engine import Engine  # noqa: E402
from core.record import config  # noqa: E402
from core.record import events as ev  # noqa: E402
from core.services.script import TrainScript  # noqa: E402
from core.services.train_output import Progress  # noqa: E402
from core.services.trainer import TrainResult  # noqa: E402
from tests.support.openai_server import Reply, ScriptedOpenAI  # noqa: E402

UTILISATION_TARGET = 0.95
CPU_TARGET_CORES = 1.0


def fake_executor(trial_s: float):
    """A run_training that takes ``trial_s`` and scores the script like the stand-in does."""

    async def run_training(script: Path, **kw) -> TrainResult:
        values = TrainScript.parse(Path(script).read_text(encoding="utf-8")).values()
        cancel = kw.get("cancel")
        steps = 5
        for step in range(1, steps + 1):
            if cancel is not None and cancel.is_set():
                return TrainResult("cancelled", None, {}, None, 0.0, "", "cancelled")
            await asyncio.sleep(trial_s / steps)
            if kw.get("on_progress"):
                kw["on_progress"](Progress(step, 100.0 * step / steps, 3.0 - step * 0.1, 1e4, None,
                                           trial_s * (steps - step) / steps))
            if kw.get("on_line"):
                kw["on_line"]("stdout", f"step {step}")
        lr, wd = float(values["LR"]), float(values["WARMDOWN_RATIO"])
        val = 1.0 + 0.05 * math.log(lr / 0.02) ** 2 + 0.2 * (wd - 0.3) ** 2
        return TrainResult("ok", val, {"val_bpb": val}, 0, trial_s, "", f"val_bpb {val:.6f}")

    return run_training


def responder():
    """k distinct proposals per request (the prompt says how many), 2 % apart."""
    counter = iter(range(1, 1_000_000))

    def answer(body: dict) -> Reply:
        text = body["messages"][-1]["content"]
        found = re.search(r"Propose (?:the next )?(\d+) (?:replacement )?experiments", text)
        k = int(found.group(1)) if found else 1
        items = []
        for _ in range(k):
            i = next(counter)
            # Every LR above the baseline's 0.04 scores worse: no new best, so no queued proposal goes
            # stale and what is measured is the scheduler's own overhead.
            items.append({"changes": {"LR": round(0.04 * 1.02 ** i, 6)}, "hypothesis": f"bench {i}"})
        if not found:
            return Reply(json.dumps(items[0]))
        return Reply(json.dumps({"proposals": items}))

    return answer


async def run(slots: int, trials: int, trial_s: float, workdir: Path) -> tuple[list[ev.Event], float, float]:
    with ScriptedOpenAI(responder=responder()) as srv:
        cfg = config.from_dict({
            "name": f"bench{slots}", "endpoint": {"provider": "openai", "base_url": srv.base_url,
                                                  "model": "test-model"},
            "script": {"path": str(ROOT / "tests/fixtures/scripts/quadratic_train.py")}, "data": {"source": "none"},
            "budget": {"time_s": 1, "grace_s": 30, "iterations": trials, "stuck_after": 0},
            "search": {"locked": ["DEPTH"], "history_tokens": 6000},
            "run": {"sessions_dir": str(workdir / "sessions"), "gpus": f"cpu:{slots}", "worker": "fresh"},
        })
        engine = Engine.create(cfg)
        events: list[ev.Event] = []
        engine.subscribe(events.append)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await engine.run()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    if engine.state.status != "completed":
        raise SystemExit(f"the run did not complete: {engine.state.finished}")
    return events, cpu, wall


def utilisation(events: list[ev.Event], slots: int) -> float:
    starts = {e.iteration: e.ts for e in events if isinstance(e, ev.TrainingStarted) and e.iteration}
    ends = {e.iteration: e.ts for e in events if isinstance(e, ev.TrainingFinished) and e.iteration}
    busy = sum(ends[n] - starts[n] for n in starts)
    span = max(ends.values()) - min(starts.values())
    return busy / (slots * span)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial-s", type=float, default=2.0)
    args = parser.parse_args()
    local_executor.run_training = fake_executor(args.trial_s)  # what LocalExecutor.run calls
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        events, _, wall = asyncio.run(run(8, 40, args.trial_s, Path(tmp)))
        used = utilisation(events, 8)
        ok = used >= UTILISATION_TARGET
        failed |= not ok
        print(f"8 slots, 40 trials of {args.trial_s:.1f} s: utilisation {100 * used:.1f} % "
              f"(target ≥ {100 * UTILISATION_TARGET:.0f} %), wall {wall:.1f} s: {'ok' if ok else 'FAIL'}")
        events, cpu, wall = asyncio.run(run(64, 256, args.trial_s, Path(tmp)))
        cores = cpu / wall
        ok = cores < CPU_TARGET_CORES
        failed |= not ok
        print(f"64 slots, 256 trials of {args.trial_s:.1f} s: engine CPU {cpu:.1f} s over {wall:.1f} s = "
              f"{cores:.2f} cores (target < {CPU_TARGET_CORES:.0f}), utilisation {100 * utilisation(events, 64):.1f} %: "
              f"{'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

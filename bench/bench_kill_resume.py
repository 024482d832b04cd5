"""Kill the engine with SIGKILL at random points, resume each time, and check nothing was lost or doubled.

Sessions run offline (group C: all three levels by rule) on a tiny train.py that answers in
well under a second and, on every run, leaves a child in its process group and one that
calls ``setsid``, both sleeping. Each engine is started (``run`` or ``resume``), killed
after a random delay, and the log is checked:

- every line parses, sequence numbers run 1, 2, 3, … (the strict reader);
- no iteration finished twice;
- best before the kill = best when the next engine has resumed (its ``run_resumed``);
- no process of the run survives: once an engine has resumed, no process carries the tag
  of any run recorded before it (the script itself dies at once by its parent-death
  signal; what it left behind is ended by resume), and after the last engine none at all;
- every session folder that exists can be resumed, and each session completes.

Prints figures; exits 1 on any violation or when fewer kills than asked landed.

    .venv/bin/python bench/bench_kill_resume.py [--kills 200] [--sessions 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.record import events as ev  # noqa: E402
from core.record.session import SessionError, SessionReader  # noqa: E402
from core.record.state import fold  # noqa: E402
from core.services.process_control import tagged_pids  # noqa: E402

TRAIN = '''"""Tiny stand-in: answers at once, leaves a same-group child and a setsid child behind."""
import math, os, subprocess, sys, time
LR = 0.04
WARMDOWN_RATIO = 0.5
DEPTH = 4
TIME_BUDGET = 1
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)"])
for step in range(1, 4):
    time.sleep(0.02)
    print(f"step {step:05d} ({100 * step / 3:.1f}%) | loss: {3 - step * 0.1:.6f}")
print("---")
print(f"val_bpb: {1.0 + 0.05 * math.log(LR / 0.02) ** 2 + 0.2 * (WARMDOWN_RATIO - 0.3) ** 2:.6f}")
'''

# iterations a session: room for 20 kills each once a resumed run answers in well under a second
ITERATIONS = 40

CONFIG = '''
name = "kill{index}"
[endpoint]
provider = "offline"
[script]
path = "{script}"
[data]
source = "none"
[budget]
time_s = 1
grace_s = 30
iterations = {iterations}
stuck_after = 0
[search]
group = "C"
locked = ["DEPTH"]
seed = {index}
[run]
sessions_dir = "{sessions}"
gpus = "cpu"
'''


def bilevel(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


class Checker:
    def __init__(self) -> None:
        self.violations: list[str] = []

    def fail(self, session: str, message: str) -> None:
        self.violations.append(f"{session}: {message}")
        print(f"  VIOLATION {session}: {message}", file=sys.stderr)

    def read(self, session: Path) -> list[ev.Event] | None:
        try:
            return list(SessionReader(session).events())  # strict: parses, contiguous, no duplicate
        except SessionError as exc:
            self.fail(session.name, f"log not intact: {exc}")
            return None

    def check(self, session: Path, events: list[ev.Event]) -> None:
        finished = collections.Counter(e.iteration for e in events if isinstance(e, ev.IterationFinished))
        twice = sorted(i for i, n in finished.items() if n > 1)
        if twice:
            self.fail(session.name, f"iterations finished twice: {twice}")
        resumed = [i for i, e in enumerate(events) if isinstance(e, ev.RunResumed)]
        if resumed:
            before = {e.tag for e in events[:resumed[-1]] if isinstance(e, ev.TrainingProcess)}
            alive = tagged_pids(before)
            if alive:
                self.fail(session.name, f"processes of runs before the last resume still alive: {alive}")


def tags_of(events: list[ev.Event]) -> set[str]:
    return {e.tag for e in events if isinstance(e, ev.TrainingProcess)}


def run_session(index: int, work: Path, kills_wanted: int, rng: random.Random, checker: Checker,
                figures: dict) -> None:
    folder = work / f"s{index}"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    cfg = folder / "exp.toml"
    cfg.write_text(CONFIG.format(index=index, script=folder / "train.py", iterations=ITERATIONS, sessions=folder / "sessions"))
    session: Path | None = None
    kills = 0
    best_before: float | None = None
    known_events = 0
    while True:
        started, started_wall = time.monotonic(), time.time()
        proc = (bilevel("resume", "--headless", str(session), cwd=folder) if session
                else bilevel("run", "--headless", str(cfg), cwd=folder))
        killed = False
        if kills < kills_wanted:
            delay = rng.uniform(0.0, 2.0)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed = True
        _, stderr = proc.communicate()
        figures["engine_runs"] += 1
        if session is None:
            made = sorted((folder / "sessions").iterdir()) if (folder / "sessions").is_dir() else []
            if not made:
                if not killed:
                    checker.fail(f"s{index}", f"the run made no session: {stderr[-500:]}")
                    return
                figures["kills_before_folder"] += 1
                kills += 1
                continue  # killed before the session folder existed: nothing to resume, start again
            session = made[0]
        events = checker.read(session)
        if events is None:
            return
        if len(events) < known_events:
            checker.fail(session.name, f"events lost: {known_events} before, {len(events)} now")
        if not any(isinstance(e, ev.SessionStarted) for e in events):
            checker.fail(session.name, "a session folder that cannot be resumed (no session_started)")
            return
        if best_before is not None:
            resumed = [i for i, e in enumerate(events) if isinstance(e, ev.RunResumed) and i >= known_events]
            if resumed:
                figures["resume_s"].append(events[resumed[0]].ts - started_wall)
                best_after = fold(events[:resumed[0] + 1]).best_val_bpb
                if best_after != best_before:
                    checker.fail(session.name, f"best before the kill {best_before} != best after resume {best_after}")
        checker.check(session, events)
        known_events = len(events)
        if killed:
            kills += 1
            figures["kills"] += 1
            last = next((e for e in reversed(events) if not isinstance(e, (ev.TrainingProgress, ev.TrainingOutput))),
                        None)
            figures["killed_after"][last.type if last else "nothing"] += 1
            if fold(events).status != "completed":
                best_before = fold(events).best_val_bpb
                continue
            # the kill landed after run_finished (the engine was closing): the session is complete, and a
            # resume would rightly refuse it; check it as a completed one
            figures["killed_after_completion"] += 1
        elif proc.returncode != 0:
            checker.fail(session.name, f"engine exited {proc.returncode} without being killed: {stderr[-800:]}")
            return
        state = fold(events)
        if state.status != "completed":
            checker.fail(session.name, f"ended {state.status!r}, not completed")
        figures["iterations"] += len(state.proposals)
        figures["wall_s"].append(time.monotonic() - started)
        time.sleep(0.2)  # the last engine's own run-end sweep has returned; nothing may be left
        alive = tagged_pids(tags_of(events))
        if alive:
            checker.fail(session.name, f"processes of the run alive after it completed: {alive}")
        return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs to land in all (default 200)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions to spread them over (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    checker = Checker()
    figures: dict = {"kills": 0, "kills_before_folder": 0, "engine_runs": 0, "iterations": 0,
                     "killed_after": collections.Counter(), "killed_after_completion": 0, "resume_s": [],
                     "wall_s": []}
    t0 = time.monotonic()
    all_tags: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bilevel-kill-") as tmp:
        work = Path(tmp)
        for index in range(args.sessions):
            left_to_land = args.kills - figures["kills"] - figures["kills_before_folder"]
            # spread what is left over the sessions left (a kill that lands on a closing engine ends its session early)
            wanted = -(-left_to_land // (args.sessions - index))
            run_session(index, work, max(wanted, 0), rng, checker, figures)
            for session in (work / f"s{index}" / "sessions").glob("*"):
                try:
                    all_tags |= tags_of(list(SessionReader(session).events(tolerant=True)))
                except SessionError:
                    pass
        left = tagged_pids(all_tags)
        if left:
            checker.fail("all", f"{len(left)} process(es) of the runs survive: {left}")
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - t0
    landed = figures["kills"] + figures["kills_before_folder"]
    print(f"kills landed: {landed} over {args.sessions} sessions "
          f"({figures['kills_before_folder']} before a session folder existed), "
          f"{figures['engine_runs']} engine starts, {figures['iterations']} iterations completed, {elapsed:.0f} s")
    print("killed right after: " + ", ".join(f"{k} {v}" for k, v in figures["killed_after"].most_common())
          + f" ({figures['killed_after_completion']} after run_finished, while the engine closed)")
    if figures["resume_s"]:
        rs = figures["resume_s"]
        print(f"`bilevel resume` started to run_resumed written: median {statistics.median(rs) * 1000:.0f} ms, "
              f"max {max(rs) * 1000:.0f} ms (n={len(rs)})")
    print(f"tagged processes alive at the end: {len(left)}")
    if landed < args.kills:
        checker.fail("all", f"only {landed} kills landed of {args.kills}")
    print(f"violations: {len(checker.violations)}")
    for v in checker.violations[:20]:
        print(f"  {v}")
    return 1 if checker.violations else 0


if __name__ == "__main__":
    sys.exit(main())

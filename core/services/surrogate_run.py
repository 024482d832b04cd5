"""The surrogate evaluated in the engine's process: a surrogate run without a process of its own.

A surrogate run as a script costs a Python start-up (~0.2 s) for microseconds of arithmetic, so
a study of thousands of runs spent its time starting processes. When the script to run *is* the
surrogate (baseline/surrogate.py with only its constants changed: the same code between them),
this module evaluates it here instead: the constants are read as data (core/services/script.py
parses literals, it runs nothing), baseline/surrogate.py's ``run_output`` gives the lines the
script would print, and they go through the trainer's own reading of output (the log file, the
progress and line callbacks, the metrics block, the classification). So a run in-process and a
run as a script give the same TrainResult but its duration, and the engine records the same
events. Any other script, a surrogate with edited code included, runs as a process as always,
and so does every trial on a cluster's or a plugin's executor (core/engine/context.py decides).

One implementation serves the engine (:func:`run_surrogate`, a trial on a slot) and the
in-memory bench (:func:`surrogate_result`: the mechanism pre-screen, core/engine/prescreen.py).
The surrogate's code is ours (standard library only) and the constants are parsed, never run:
nothing from an LLM or a mechanism executes in the engine's process.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

from baseline import surrogate

from core.services.script import TrainScript
from core.services.train_output import _RunWatcher
from core.services.trainer import VALID_BPB, TrainResult, classify, open_log
from core.services.trial_request import TrialRequest


@functools.lru_cache(maxsize=1)
def _surrogate_skeleton() -> str:
    return TrainScript.parse(Path(surrogate.__file__).read_text(encoding="utf-8")).skeleton()


def is_surrogate(text: str) -> bool:
    """Whether ``text`` is the surrogate's code with (at most) other constants: then it may run in-process."""
    try:
        script = TrainScript.parse(text)
    except ValueError:
        return False
    return script.skeleton() == _surrogate_skeleton() and all(n in script.params for n in surrogate.C.NAMES)


def _evaluate(text: str, seed: int, watcher: _RunWatcher, *, budget_s: float, grace_s: float,
              valid_bpb: tuple[float, float], clock: Callable[[], float]) -> TrainResult:
    begun = clock()
    values = TrainScript.parse(text).values()
    code, lines = surrogate.run_output({n: values[n] for n in surrogate.C.NAMES}, seed)
    for stream, line in lines:
        watcher.feed(stream, line)
    duration_s = clock() - begun
    metrics = watcher.metrics()
    outcome, reason = classify(stopped=None, exit_code=code, watcher=watcher, metrics=metrics, budget_s=budget_s,
                               grace_s=grace_s, duration_s=duration_s, valid_bpb=valid_bpb)
    ok = outcome == "ok"
    return TrainResult(outcome=outcome, val_bpb=metrics["val_bpb"] if ok else None, metrics=metrics, exit_code=code,
                       duration_s=duration_s, error_tail="" if ok else watcher.error_tail(), reason=reason)


def surrogate_result(text: str, seed: int) -> TrainResult:
    """What the surrogate ``text`` reports at ``seed``, with no log and no callbacks (the in-memory benches)."""
    return _evaluate(text, seed, _RunWatcher(None, None, None), budget_s=float("inf"), grace_s=0.0,
                     valid_bpb=VALID_BPB, clock=time.monotonic)


async def run_surrogate(text: str, seed: int, trial: TrialRequest) -> TrainResult:
    """One trial of the surrogate ``text`` at ``seed``, in-process: ``run_training``'s log, callbacks and result.

    ``trial.on_start`` is not called: no process starts (the caller records the run's tag itself).
    """
    if trial.cancel is not None and trial.cancel.is_set():
        return TrainResult("cancelled", None, {}, None, 0.0, "", "cancelled before it started")
    log = open_log(trial.log_path)
    try:
        return _evaluate(text, seed, _RunWatcher(log, trial.on_progress, trial.on_line), budget_s=trial.budget_s,
                         grace_s=trial.grace_s, valid_bpb=trial.valid_bpb, clock=trial.clock)
    finally:
        if log is not None:
            log.close()

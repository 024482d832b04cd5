"""Warm training workers: baseline/train.py run iteration after iteration in one process."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest

import baseline.prepare as prep
from baseline.presets import PRESETS
from core.services import process_control as pc
from core.services.trainer import run_training
from core.services.warm_worker import WarmPool, warm_plan
from tests.test_workload import TRAIN_PY, with_constants

# A budget no step fits in: exactly one step on the CPU (no untimed steps there), whatever the
# machine's speed, so two runs of one config take the same steps and must give the same numbers.
ONE_STEP_BUDGET = 0.001
TIMING = ("training_seconds", "total_seconds")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prep.prepare("stdlib", root=tmp_path_factory.mktemp("data"), max_bytes=2_000_000,
                        vocab_size=512, log=lambda m: None)


def script_text(**overrides: object) -> str:
    text = TRAIN_PY.read_text(encoding="utf-8")
    return with_constants(text, {**PRESETS["cpu-tiny"], "TIME_BUDGET": ONE_STEP_BUDGET, **overrides})


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


async def warm_run(pool: WarmPool, folder: Path, data: Path, name: str, text: str, *,
                   seed: int = 7, budget_s: float = 60.0, grace_s: float = 60.0, on_start=None):
    plan = warm_plan(text)
    assert plan is not None
    return await pool.run(write(folder, name, text), plan, seed=seed, cwd=folder, budget_s=budget_s,
                          grace_s=grace_s, env={"BILEVEL_DATA_DIR": str(data)},
                          on_start=None if on_start is None else lambda pid, tag: on_start(pid))


def test_train_py_declares_its_warm_safe_constants_and_other_scripts_do_not():
    plan = warm_plan(script_text())
    assert plan is not None and "MATRIX_LR" in plan.constants
    assert "MATRIX_LR" not in dict(plan.shape) and "DEPTH" in dict(plan.shape)
    assert warm_plan("LR = 0.1\nprint('train')\n") is None


def test_scalar_changes_keep_the_worker_and_code_or_shape_changes_do_not():
    base = warm_plan(script_text())
    scalar = warm_plan(script_text(MATRIX_LR=0.01, TIME_BUDGET=3))
    shape = warm_plan(script_text(DEPTH=1))
    code = warm_plan(script_text().replace("return x + self.mlp(rms_norm(x))",
                                           "return x + 0.5 * self.mlp(rms_norm(x))"))
    assert (scalar.code_key, scalar.shape) == (base.code_key, base.shape)
    assert shape.shape != base.shape
    assert code.code_key != base.code_key and code.shape == base.shape


async def test_warm_iteration_gives_the_result_of_a_fresh_run(tmp_path, data):
    text = script_text(MATRIX_LR=0.03)
    fresh = await run_training(write(tmp_path, "fresh.py", text), cwd=tmp_path, budget_s=60,
                               env={"BILEVEL_DATA_DIR": str(data), "BILEVEL_SEED": "7"})
    assert fresh.ok, fresh.reason
    pool = WarmPool()
    try:
        first = await warm_run(pool, tmp_path, data, "it1.py", script_text(MATRIX_LR=0.05), seed=3)
        warm = await warm_run(pool, tmp_path, data, "it2.py", text, seed=7)
    finally:
        await pool.close()
    assert first.ok and warm.ok, (first.reason, warm.reason)
    assert pool.started == 1  # the second iteration ran in the first one's process
    assert (fresh.worker, warm.worker) == ("fresh", "warm")
    assert warm.val_bpb == fresh.val_bpb  # bit-identical, not close
    assert first.val_bpb != warm.val_bpb  # another seed and rate: the comparison can fail
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}
    assert strip(warm.metrics) == strip(fresh.metrics)


async def test_shape_change_starts_a_fresh_worker_and_the_first_shape_keeps_its_own(tmp_path, data):
    pool, pids = WarmPool(), []
    try:
        a = await warm_run(pool, tmp_path, data, "a.py", script_text(), on_start=pids.append)
        b = await warm_run(pool, tmp_path, data, "b.py", script_text(DEPTH=1), on_start=pids.append)
        c = await warm_run(pool, tmp_path, data, "c.py", script_text(DEPTH=1, WEIGHT_DECAY=0.1),
                           on_start=pids.append)
        again = await warm_run(pool, tmp_path, data, "a2.py", script_text(), on_start=pids.append)
    finally:
        await pool.close()
    assert a.ok and b.ok and c.ok and again.ok, (a.reason, b.reason, c.reason, again.reason)
    assert b.metrics["depth"] == 1 and again.metrics["depth"] == 2
    assert pool.started == 2  # a new one for DEPTH; the weight decay change kept it; A's was kept
    assert pids[0] == pids[3] != pids[1] == pids[2]
    assert again.val_bpb == a.val_bpb  # B's iterations in between left A's worker as it was


async def test_crash_in_a_warm_worker_ends_it_and_the_next_iteration_is_healthy(tmp_path, data):
    pool = WarmPool()
    pids: list[int] = []
    try:
        ok = await warm_run(pool, tmp_path, data, "ok.py", script_text())
        plan = warm_plan(bad := script_text(ADAM_BETAS=(2.0, 0.95)))  # AdamW raises: a crash
        crash = await pool.run(write(tmp_path, "bad.py", bad), plan, seed=7, cwd=tmp_path, budget_s=60,
                               env={"BILEVEL_DATA_DIR": str(data)},
                               on_start=lambda pid, tag: pids.append(pid))
        after = await warm_run(pool, tmp_path, data, "after.py", script_text())
    finally:
        await pool.close()
    assert ok.ok and after.ok, (ok.reason, after.reason)
    assert crash.outcome == "crash" and crash.val_bpb is None
    assert "beta" in crash.error_tail.lower()
    assert pool.started == 2
    assert not pc.group_has_live_members(pids[0])
    assert after.val_bpb == ok.val_bpb  # the crash left nothing behind


async def test_hanging_warm_iteration_is_killed_at_the_deadline(tmp_path, data):
    pool = WarmPool()
    pids: list[int] = []
    try:
        text = script_text(TIME_BUDGET=1000)
        plan = warm_plan(text)
        hung = await pool.run(write(tmp_path, "hang.py", text), plan, seed=7, cwd=tmp_path, budget_s=1,
                              grace_s=2, env={"BILEVEL_DATA_DIR": str(data)},
                              on_start=lambda pid, tag: pids.append(pid))
        after = await warm_run(pool, tmp_path, data, "after.py", script_text())
    finally:
        await pool.close()
    assert hung.outcome == "timeout" and hung.val_bpb is None
    assert not pc.group_has_live_members(pids[0])
    assert after.ok and pool.started == 2


async def test_closing_the_pool_ends_its_workers(tmp_path, data):
    pool = WarmPool()
    pids: list[int] = []
    text = script_text()
    result = await pool.run(write(tmp_path, "t.py", text), warm_plan(text), seed=7, cwd=tmp_path, budget_s=60,
                            env={"BILEVEL_DATA_DIR": str(data)}, on_start=lambda pid, tag: pids.append(pid))
    assert result.ok and pc.group_has_live_members(pids[0])
    await pool.close()
    assert not pc.group_has_live_members(pids[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_progress_events_name_the_phase_and_a_new_phase_is_never_held_back():
    from core.engine.context import _TrainingEmitter
    from core.services.train_output import Progress

    class Ctx:
        def __init__(self) -> None:
            self.events: list = []

        def emit(self, event):
            self.events.append(event)

    ctx = Ctx()
    emitter = _TrainingEmitter(ctx, 3)  # type: ignore[arg-type]
    emitter.starting()  # the run began: no line yet
    for step, pct, left in ((0, 0.0, 4.0), (1, 0.0, 4.0), (2, 40.0, 2.4), (3, 100.0, 0.0)):
        emitter.progress(Progress(step, pct, 3.0, 1e4, 0.0, left))  # all within one throttle period
    emitter.flush()
    assert [e.phase for e in ctx.events] == ["starting", "compiling", "training", "evaluating"]
    assert [e.step for e in ctx.events] == [None, 0, 2, 3]


def test_headless_log_says_a_run_is_starting_before_its_first_step():
    from core.analysis.printer import HeadlessPrinter
    from core.record import events as ev

    assert HeadlessPrinter().format(ev.TrainingProgress(iteration=2, phase="starting")) == "#2 starting"
    line = HeadlessPrinter().format(ev.TrainingProgress(iteration=2, step=5, percent=40.0, phase="training"))
    assert line.startswith("#2 step 5 40%")


# Speaks the warm protocol in a few lines: prints where torch.compile would cache, then a summary.
CACHE_PRINTER = '''import json, os, sys
LR = 0.1
WIDTH = 1
WARM_SAFE = frozenset({"LR"})


def run():
    print("cache", os.environ.get("TORCHINDUCTOR_CACHE_DIR"), os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE"))
    print("---")
    print("val_bpb: 1.5")
    print("training_seconds: 0.0")


if sys.argv[1:] == ["--warm"]:
    print(json.dumps({"warm_worker": "ready"}), flush=True)
    for line in sys.stdin:
        run()
        done = json.dumps({"warm_worker": "done", "exit_code": 0})
        print(done, flush=True)
        print(done, file=sys.stderr, flush=True)
else:
    run()
'''


async def test_compile_cache_is_our_cache_folder_in_fresh_and_warm_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    script = write(tmp_path, "env.py", CACHE_PRINTER)
    expected = f"cache {platformdirs.user_cache_path('bilevel') / 'compile'} 1"
    fresh_lines: list[str] = []
    fresh = await run_training(script, cwd=tmp_path, budget_s=30, on_line=lambda s, line: fresh_lines.append(line))
    pool, warm_lines = WarmPool(), []
    try:
        warm = await pool.run(script, warm_plan(CACHE_PRINTER), seed=1, cwd=tmp_path, budget_s=30,
                              on_line=lambda s, line: warm_lines.append(line))
    finally:
        await pool.close()
    assert fresh.ok and warm.ok and warm.worker == "warm", (fresh.reason, warm.reason)
    assert expected in fresh_lines and expected in warm_lines


async def test_a_compile_cache_the_user_chose_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    lines: list[str] = []
    result = await run_training(write(tmp_path, "env.py", CACHE_PRINTER), cwd=tmp_path, budget_s=30,
                                on_line=lambda s, line: lines.append(line))
    assert result.ok and f"cache {tmp_path / 'mine'} 1" in lines


async def test_a_third_shape_ends_the_slots_least_recently_used_worker(tmp_path):
    pool, pids = WarmPool(per_slot=2), []

    async def run(width: int, slot: str = "cpu"):
        text = CACHE_PRINTER.replace("WIDTH = 1", f"WIDTH = {width}")
        result = await pool.run(write(tmp_path, f"w{width}.py", text), warm_plan(text), seed=1, cwd=tmp_path,
                                budget_s=30, slot=slot, on_start=lambda pid, tag: pids.append(pid))
        assert result.ok, result.reason

    try:
        for width in (1, 2, 1, 3):  # 1 and 2 kept; 1 used again, so 3 replaces 2
            await run(width)
        await run(2, slot="gpu0")  # another slot has workers of its own
        assert pc.group_has_live_members(pids[0]) and pc.group_has_live_members(pids[3])
        assert not pc.group_has_live_members(pids[1])
        await run(1)
    finally:
        await pool.close()
    assert pids[0] == pids[2] == pids[5] and len(set(pids)) == 4 and pool.started == 4


@pytest.mark.slow  # minutes on a busy 2-core box: dynamo traces the model and four Muon shapes
async def test_scalar_changes_recompile_nothing_in_a_warm_worker_and_eval_compiles_once(tmp_path, data):
    # The compiled CPU path. aot_eager traces as inductor does (dynamo's guards decide every
    # recompile) without generating C++, which would take minutes on two cores.
    pool, lines = WarmPool(), {}
    env = {"BILEVEL_DATA_DIR": str(data), "TORCH_LOGS": "recompiles"}
    iterations = {"first": {}, "second": {"MATRIX_LR": 0.02, "WEIGHT_DECAY": 0.05}}
    try:
        for name, changes in iterations.items():
            text = script_text(COMPILE="aot_eager", **changes)
            got = lines[name] = []
            result = await pool.run(write(tmp_path, f"{name}.py", text), warm_plan(text), seed=7, cwd=tmp_path,
                                    budget_s=300, env=env, on_line=lambda stream, line, got=got: got.append(line))
            assert result.ok, (result.reason, result.error_tail)
    finally:
        await pool.close()
    assert pool.started == 1
    assert any("compile aot_eager" in line for line in lines["first"])
    recompiles = {name: [line for line in got if "Recompiling function" in line] for name, got in lines.items()}
    # The first iteration compiles the eval graph (no grad) beside the training one: the log counts.
    assert any("forward" in line for line in recompiles["first"]), recompiles["first"]
    assert recompiles["second"] == []  # new rates and decay, training and eval: all from the cache

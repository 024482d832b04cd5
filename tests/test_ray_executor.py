"""Tests for core.services.ray_executor on one real local Ray cluster, ``ray.init(num_cpus=2, num_gpus=4)``.

The GPUs are fake (Ray only counts them). A node lost mid-trial needs a cluster of several
nodes: tests/test_ray_node_loss.py. Timing targets (cancel within 1 s) live in bench/bench_cancel.py.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bilevel-autoresearch[ray]')")

from core.engine.engine import Engine
from core.record import events as ev
from core.services.executor_choice import make_executor
from core.services.executors import ExecutorError
from core.services.ray_executor import RayExecutor, check_token
from core.services.trial_request import TrialRequest
from tests.conftest import Recorder
from tests.support.patience import patience
from tests.support.processes import alive as _alive
from tests.support.ray_cluster import (
    PINNED,
    QUIET,
    one_ray_cluster_at_a_time,
    ray_config,
    workers_import_this_checkout,
)

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"


def test_joining_a_token_cluster_without_a_token_is_refused_clearly(tmp_path):
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    with pytest.raises(ExecutorError, match="RAY_AUTH_TOKEN"):
        check_token("10.0.0.1:6379", env)
    check_token("10.0.0.1:6379", {**env, "RAY_AUTH_TOKEN": "secret"})
    check_token("", env)  # a local cluster makes its own token


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One cluster for the module: starting one takes seconds."""
    with one_ray_cluster_at_a_time(), workers_import_this_checkout():
        ray.init(num_cpus=2, num_gpus=4, **QUIET)
        try:
            yield
        finally:
            ray.shutdown()


class TestOneNodeFourGpus:

    async def test_concurrent_runs_land_on_distinct_gpus(self, tmp_path):
        executor = make_executor(ray_config(tmp_path).run)
        assert isinstance(executor, RayExecutor) and executor.capacity == 4
        assert [s.name for s in executor.slots] == ["ray:gpu0", "ray:gpu1", "ray:gpu2", "ray:gpu3"]
        seen: list[str] = []

        async def one() -> None:
            async with executor.slot() as slot:
                lines: list[str] = []
                trial = TrialRequest(attempt=1, cwd=tmp_path, budget_s=60, grace_s=60,
                                     env={"BILEVEL_FAKE_STEP_S": "1.0"}, on_line=lambda stream, line: lines.append(line))
                result = await executor.run(slot, PINNED, trial)
                assert result.outcome == "ok" and result.val_bpb == pytest.approx(1.04)
                assert result.node and result.failure == ""
                seen.append(next(line.split()[1] for line in lines if line.startswith("visible ")))

        await asyncio.gather(*(one() for _ in range(4)))
        assert sorted(seen) == ["0", "1", "2", "3"]
        await executor.close()
        assert ray.is_initialized()  # not ours to shut down: the cluster was running before

    @pytest.mark.parametrize("where", ["this machine", "another machine"])
    async def test_cancel_kills_the_whole_process_tree_before_it_returns(self, tmp_path, where):
        executor = make_executor(ray_config(tmp_path).run)
        if where == "another machine":  # the driver looks elsewhere: the kill goes as a task pinned to the node
            executor._driver_ip = "192.0.2.1"
        cancel = asyncio.Event()
        pids: dict[str, int] = {}

        def line(stream: str, text: str) -> None:
            name, _, pid = text.partition(" ")
            if name in ("child", "script"):
                pids[name] = int(pid)
            if len(pids) == 2:
                cancel.set()

        log = tmp_path / "train.log"
        async with executor.slot() as slot:
            result = await asyncio.wait_for(
                executor.run(slot, SCRIPTS / "hang_with_child.py", TrialRequest(
                    attempt=1, cwd=tmp_path, budget_s=600, grace_s=60, on_line=line, cancel=cancel, log_path=log)),
                patience(120))
        assert result.outcome == "cancelled" and result.failure == ""
        assert set(pids) == {"child", "script"}
        assert not [pid for pid in pids.values() if _alive(pid)]
        assert "child " in log.read_text()

    async def test_a_cancelled_caller_leaves_no_process_of_the_run_alive(self, tmp_path):
        executor = make_executor(ray_config(tmp_path).run)
        pids: dict[str, int] = {}
        both = asyncio.Event()

        def line(stream: str, text: str) -> None:
            name, _, pid = text.partition(" ")
            if name in ("child", "script"):
                pids[name] = int(pid)
            if len(pids) == 2:
                both.set()

        async def train() -> None:
            async with executor.slot() as slot:
                await executor.run(slot, SCRIPTS / "hang_with_child.py", TrialRequest(
                    attempt=1, cwd=tmp_path, budget_s=600, grace_s=60, on_line=line))

        task = asyncio.ensure_future(train())
        await asyncio.wait_for(both.wait(), patience(120))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [pid for pid in pids.values() if _alive(pid)]
        assert executor.pool.free == executor.capacity

    async def test_an_engine_on_ray_records_the_cluster_and_the_node_of_each_run(self, tmp_path):
        engine = Engine.create(ray_config(tmp_path, **{"budget.iterations": 0}))
        rec = Recorder()
        engine.subscribe(rec)
        await engine.run()
        [configured] = rec.of(ev.SlotsConfigured)
        assert configured.executor == "ray" and len(configured.slots) == 4
        finished = rec.of(ev.TrainingFinished)
        assert len(finished) == 1 and all(f.outcome == "ok" and f.node and f.attempt == 1 for f in finished)
        assert rec.of(ev.SlotsSampled) == []

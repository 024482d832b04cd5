"""Tests for core.services.ray_executor on real local Ray clusters (fake GPUs: Ray only counts them).

One cluster per group of tests (class-scoped): ``ray.init(num_cpus=2, num_gpus=4)`` for where
runs land and how they are cancelled; a ``ray.cluster_utils.Cluster`` of two one-GPU nodes for
a node removed mid-trial. Timing targets (cancel within 1 s) live in bench/bench_cancel.py.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bilevel-autoresearch[ray]')")

from core.engine.engine import Engine  # noqa: E402
from core.record import events as ev  # noqa: E402
from core.services.executor_choice import make_executor  # noqa: E402
from core.services.ray_executor import RayExecutor, check_token  # noqa: E402
from core.services.executors import ExecutorError  # noqa: E402
from core.services.trainer import Outcome  # noqa: E402
from tests.conftest import Recorder, fast_config  # noqa: E402
from tests.support.patience import patience  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"
PINNED = SCRIPTS / "gpu_pinned.py"
QUIET = dict(log_to_driver=False, include_dashboard=False, logging_level="warning")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _worker_env():
    """Ray's workers inherit the driver's environment: let them import this checkout's code."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old]))
    return old


def _restore(old):
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _ray_config(tmp_path, **overrides):
    return fast_config(tmp_path, **{"run.executor": "ray", "run.worker": "fresh", **overrides})


def test_joining_a_token_cluster_without_a_token_is_refused_clearly(tmp_path):
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    with pytest.raises(ExecutorError, match="RAY_AUTH_TOKEN"):
        check_token("10.0.0.1:6379", env)
    check_token("10.0.0.1:6379", {**env, "RAY_AUTH_TOKEN": "secret"})
    check_token("", env)  # a local cluster makes its own token


class TestOneNodeFourGpus:
    @pytest.fixture(scope="class", autouse=True)
    def cluster(self):
        old = _worker_env()
        ray.init(num_cpus=2, num_gpus=4, **QUIET)
        try:
            yield
        finally:
            ray.shutdown()
            _restore(old)

    async def test_concurrent_runs_land_on_distinct_gpus(self, tmp_path):
        executor = make_executor(_ray_config(tmp_path).run)
        assert isinstance(executor, RayExecutor) and executor.capacity == 4
        assert [s.name for s in executor.slots] == ["ray:gpu0", "ray:gpu1", "ray:gpu2", "ray:gpu3"]
        seen: list[str] = []

        async def one() -> None:
            async with executor.slot() as slot:
                lines: list[str] = []
                result = await executor.run(slot, PINNED, attempt=1, cwd=tmp_path, budget_s=60, grace_s=60,
                                            env={"BILEVEL_FAKE_STEP_S": "1.5"},
                                            on_line=lambda stream, line: lines.append(line))
                assert result.outcome is Outcome.OK and result.val_bpb == pytest.approx(1.04)
                assert result.node and result.failure == ""
                seen.append(next(line.split()[1] for line in lines if line.startswith("visible ")))

        await asyncio.gather(*(one() for _ in range(4)))
        assert sorted(seen) == ["0", "1", "2", "3"]
        await executor.close()
        assert ray.is_initialized()  # not ours to shut down: the cluster was running before

    @pytest.mark.parametrize("where", ["this machine", "another machine"])
    async def test_cancel_kills_the_whole_process_tree_before_it_returns(self, tmp_path, where):
        executor = make_executor(_ray_config(tmp_path).run)
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
                executor.run(slot, SCRIPTS / "hang_with_child.py", attempt=1, cwd=tmp_path, budget_s=600,
                             grace_s=60, on_line=line, cancel=cancel, log_path=log),
                patience(120))
        assert result.outcome is Outcome.CANCELLED and result.failure == ""
        assert set(pids) == {"child", "script"}
        assert not [pid for pid in pids.values() if _alive(pid)]
        assert "child " in log.read_text()

    async def test_a_cancelled_caller_leaves_no_process_of_the_run_alive(self, tmp_path):
        executor = make_executor(_ray_config(tmp_path).run)
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
                await executor.run(slot, SCRIPTS / "hang_with_child.py", attempt=1, cwd=tmp_path, budget_s=600,
                                   grace_s=60, on_line=line)

        task = asyncio.ensure_future(train())
        await asyncio.wait_for(both.wait(), patience(120))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [pid for pid in pids.values() if _alive(pid)]
        assert executor.pool.free == executor.capacity

    async def test_an_engine_on_ray_records_the_cluster_and_the_node_of_each_run(self, tmp_path):
        engine = Engine.create(_ray_config(tmp_path, **{"budget.iterations": 1}))
        rec = Recorder()
        engine.subscribe(rec)
        await engine.run()
        [configured] = rec.of(ev.SlotsConfigured)
        assert configured.executor == "ray" and len(configured.slots) == 4
        finished = rec.of(ev.TrainingFinished)
        assert len(finished) == 2 and all(f.outcome == "ok" and f.node for f in finished)
        assert rec.of(ev.SlotsSampled) == []


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rfind(")") + 2:].split()[1])
    return seen


class TestNodeLostMidTrial:
    @pytest.fixture(scope="class")
    def cluster(self):
        from ray.cluster_utils import Cluster

        old = _worker_env()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0,
            # a lost node is noticed in about a second, not the default half minute
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2,
                               "health_check_initial_delay_ms": 0}})
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, **QUIET)
        try:
            yield cluster, nodes
        finally:
            ray.shutdown()
            cluster.shutdown()
            _restore(old)

    async def test_a_node_lost_mid_trial_is_infrastructure_and_rerun_as_the_next_attempt(self, cluster, tmp_path,
                                                                                       monkeypatch):
        cluster, nodes = cluster
        monkeypatch.setenv("BILEVEL_FAKE_STEP_S", "30")  # long enough to lose its node under it
        engine = Engine.create(_ray_config(tmp_path, **{"script.path": str(PINNED), "budget.iterations": 0,
                                                         "budget.time_s": 60.0}))
        rec = Recorder()
        engine.subscribe(rec)
        started: asyncio.Queue[int] = asyncio.Queue()
        engine.subscribe(lambda e: started.put_nowait(e.pid) if isinstance(e, ev.TrainingProcess) else None)

        async def lose_the_first_runs_node() -> str:
            pid = await asyncio.wait_for(started.get(), patience(120))
            monkeypatch.setenv("BILEVEL_FAKE_STEP_S", "0.05")  # the re-run may finish
            lineage = _ancestors(pid)
            [doomed] = [node for node in nodes if _raylet_pid(node) in lineage]
            await asyncio.to_thread(cluster.remove_node, doomed, False)
            return doomed.node_id

        lost, _ = await asyncio.wait_for(asyncio.gather(lose_the_first_runs_node(), engine.run()), patience(240))
        finished = rec.of(ev.TrainingFinished)
        assert [(f.outcome, f.failure, f.attempt) for f in finished] == [("crash", "infrastructure", 1),
                                                                        ("ok", "", 2)]
        assert finished[0].node == lost and finished[1].node and finished[1].node != lost
        assert [s.attempt for s in rec.of(ev.TrainingStarted)] == [1, 2]
        assert "lost the run on node" in finished[0].reason, finished[0].reason

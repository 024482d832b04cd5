"""A Ray node lost mid-trial: recorded as an infrastructure failure with its node, re-run as the next attempt.

One ``ray.cluster_utils.Cluster`` for the module: a head without GPUs and two one-GPU nodes,
health-checked fast so a removed node is noticed in about a second.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bilevel-autoresearch[ray]')")

from core.engine.engine import Engine
from core.record import events as ev
from core.record.processes import recorded_processes
from tests.conftest import Recorder
from tests.support.patience import patience
from tests.support.ray_cluster import (
    PINNED,
    QUIET,
    one_ray_cluster_at_a_time,
    ray_config,
    workers_import_this_checkout,
)


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


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    with one_ray_cluster_at_a_time(), workers_import_this_checkout():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0,
            # a lost node is noticed in about a second, not the default half minute
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2,
                               "health_check_initial_delay_ms": 0}})
        try:
            nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
            ray.init(address=cluster.address, **QUIET)
            yield cluster, nodes
        finally:
            ray.shutdown()
            cluster.shutdown()


async def test_a_node_lost_mid_trial_is_infrastructure_and_rerun_as_the_next_attempt(cluster, tmp_path, monkeypatch):
    cluster, nodes = cluster
    monkeypatch.setenv("BILEVEL_FAKE_STEP_S", "30")  # long enough to lose its node under it
    engine = Engine.create(ray_config(tmp_path, **{"script.path": str(PINNED), "budget.iterations": 0,
                                                   "budget.time_s": 60.0}))
    rec = Recorder()
    engine.subscribe(rec)
    started: asyncio.Queue[int] = asyncio.Queue()
    engine.subscribe(lambda e: started.put_nowait(next(p.pid for p in recorded_processes(engine.dir) if p.tag == e.tag))
                     if isinstance(e, ev.TrainingProcess) else None)

    async def lose_the_first_runs_node() -> str:
        pid = await asyncio.wait_for(started.get(), patience(120))
        monkeypatch.setenv("BILEVEL_FAKE_STEP_S", "0.05")  # the re-run may finish
        lineage = _ancestors(pid)
        [doomed] = [node for node in nodes if _raylet_pid(node) in lineage]
        await asyncio.to_thread(cluster.remove_node, doomed, False)
        return doomed.node_id

    lost, _ = await asyncio.wait_for(asyncio.gather(lose_the_first_runs_node(), engine.run()), patience(240))
    finished = rec.of(ev.TrainingFinished)
    assert [(f.outcome, f.failure, f.attempt) for f in finished] == [("crash", "infrastructure", 1), ("ok", "", 2)]
    assert finished[0].node == lost and finished[1].node and finished[1].node != lost
    assert "lost the run on node" in finished[0].reason
    assert [s.attempt for s in rec.of(ev.TrainingStarted)] == [1, 2]
    assert engine.state.baseline_val_bpb is not None  # the re-run's result is the baseline

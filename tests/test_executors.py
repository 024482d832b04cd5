"""Tests for core.services.executors: the slot pool, GPU detection through NVML, the local executor."""
from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.record import events as ev
from core.services.executor_choice import make_executor
from core.services.executors import (
    ExecutorError,
    LocalExecutor,
    Slot,
    SlotPool,
    detect_gpus,
    parse_nvidia_smi_list,
)
from core.services.trial_request import TrialRequest
from tests.conftest import fast_config, run_engine
from tests.support.fake_nvml import OTHER_PID, fake_nvml, uuid_of
from tests.support.patience import patience

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"
PINNED = SCRIPTS / "gpu_pinned.py"

NVIDIA_SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)
  MIG 1g.10gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
"""


def _fake_nvidia_smi(folder: Path, output: str, exit_code: int = 0) -> None:
    """Put an executable `nvidia-smi` in folder that prints output for -L."""
    script = folder / "nvidia-smi"
    # Python, not sh + cat: PATH holds only this folder in these tests.
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\nsys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def only_path(tmp_path, monkeypatch):
    """A PATH holding nothing but tmp_path/bin, and no CUDA_VISIBLE_DEVICES."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: the nvidia-smi fallback is what is tested
    return bin_dir


def test_no_devices_means_one_cpu_slot_with_empty_env():
    for devices in (None, []):
        pool = SlotPool(devices)
        assert pool.size == 1
        assert pool.slots[0] == Slot(0, "")
        assert pool.slots[0].env() == {}


def test_gpu_slot_env_pins_cuda_visible_devices_in_pci_bus_order():
    assert Slot(1, "3").env() == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert Slot(1, "3", uuid_of(3)).env() == {"CUDA_VISIBLE_DEVICES": uuid_of(3), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_pool_rejects_duplicate_or_empty_devices():
    with pytest.raises(ValueError):
        SlotPool(["0", "0"])
    with pytest.raises(ValueError):
        SlotPool(["0", " "])


@pytest.mark.parametrize("gpus", ["0,1", " 0, 1 ", ["0", "1"], [0, 1]])
def test_from_config_takes_explicit_devices(gpus):
    pool = SlotPool.from_config(gpus)
    assert [slot.devices for slot in pool.slots] == ["0", "1"]


@pytest.mark.parametrize("gpus", [None, "", "cpu", "CPU", "none"])
def test_from_config_cpu_spellings_give_one_cpu_slot(gpus):
    pool = SlotPool.from_config(gpus)
    assert pool.size == 1 and pool.slots[0].env() == {}


def test_parse_nvidia_smi_list_reads_gpu_indices_and_skips_mig_lines():
    assert parse_nvidia_smi_list(NVIDIA_SMI_L) == ["0", "1"]
    assert parse_nvidia_smi_list("No devices were found\n") == []


def test_auto_uses_the_gpus_nvidia_smi_lists(only_path):
    _fake_nvidia_smi(only_path, NVIDIA_SMI_L)
    pool = SlotPool.from_config("auto")
    assert [slot.env()["CUDA_VISIBLE_DEVICES"] for slot in pool.slots] == ["0", "1"]


def test_auto_without_nvidia_smi_is_cpu(only_path):
    assert SlotPool.from_config("auto").slots == (Slot(0, ""),)


def test_auto_with_failing_nvidia_smi_is_cpu(only_path):
    _fake_nvidia_smi(only_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9)
    assert SlotPool.from_config("auto").slots == (Slot(0, ""),)


def test_auto_respects_cuda_visible_devices_set_by_the_user(only_path, monkeypatch):
    _fake_nvidia_smi(only_path, NVIDIA_SMI_L)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [slot.devices for slot in SlotPool.from_config("auto").slots] == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus() == []


async def test_acquire_hands_out_distinct_slots_then_waits_for_a_release():
    pool = SlotPool(["0", "1"])
    first, second = await pool.acquire(), await pool.acquire()
    assert {first.devices, second.devices} == {"0", "1"}
    third = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    pool.release(second)
    assert await asyncio.wait_for(third, patience(1)) == second


async def test_waiters_are_served_first_come_first_served():
    pool = SlotPool(["0"])
    held = await pool.acquire()
    order: list[str] = []

    async def worker(name: str) -> None:
        async with pool.slot():
            order.append(name)
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(worker(name)) for name in "abc"]
    await asyncio.sleep(0.01)
    pool.release(held)
    await asyncio.wait_for(asyncio.gather(*tasks), patience(1))
    assert order == ["a", "b", "c"]
    assert pool.free == 1


async def test_slot_context_releases_on_error():
    pool = SlotPool(["0"])
    with pytest.raises(RuntimeError):
        async with pool.slot():
            raise RuntimeError("run failed")
    assert pool.free == 1


async def test_cancelled_acquire_does_not_leak_a_slot():
    pool = SlotPool(["0"])
    held = await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    pool.release(held)  # hands the slot to the waiter ...
    waiting.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.free == 1
    assert await asyncio.wait_for(pool.acquire(), patience(1)) == held


async def test_cancelled_waiter_is_skipped():
    pool = SlotPool(["0"])
    held = await pool.acquire()
    gone = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)
    later = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    pool.release(held)
    assert await asyncio.wait_for(later, patience(1)) == held


async def test_release_rejects_foreign_and_double_releases():
    pool = SlotPool(["0"])
    slot = await pool.acquire()
    with pytest.raises(ValueError):
        pool.release(Slot(5, "7"))
    pool.release(slot)
    with pytest.raises(ValueError):
        pool.release(slot)


def test_detection_imports_neither_torch_nor_ray(only_path):
    # A fresh interpreter: other tests in this process may already have imported torch.
    code = ("import sys; import core.engine.engine; from core.services.executor_choice import make_executor; "
            "from types import SimpleNamespace as N; make_executor(N(executor='local', gpus='auto')); "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False False"


def test_cpu_n_gives_n_distinct_cpu_slots_and_bad_counts_are_refused():
    pool = SlotPool.from_config("cpu:4")
    assert [s.name for s in pool.slots] == ["cpu0", "cpu1", "cpu2", "cpu3"] and pool.free == 4
    assert all(s.env() == {} for s in pool.slots)
    for bad in ("cpu:0", "cpu:", "cpu:two", "cpu:-1"):
        with pytest.raises(ValueError, match="cpu:N"):
            SlotPool.from_config(bad)


# ---------------------------------------------------------------- GPUs through NVML (replaced at its boundary)

@pytest.fixture
def four_gpus_one_busy(monkeypatch):
    """A box of four GPUs; GPU 2 holds 5000 MiB of another user's process."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    module = fake_nvml(4, busy={2: 5000.0})
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_auto_uses_every_free_gpu_nvml_lists_and_shows_the_busy_one_as_skipped(four_gpus_one_busy):
    executor = LocalExecutor.from_config("auto")
    assert executor.capacity == 3
    assert [(s.name, s.uuid) for s in executor.slots] == [(f"gpu{i}", uuid_of(i)) for i in (0, 1, 3)]
    assert all(s.memory_total_mb and s.memory_total_mb > 80000 for s in executor.slots)
    [skipped] = executor.skipped
    assert skipped.name == "gpu2" and skipped.uuid == uuid_of(2)
    assert str(OTHER_PID) in skipped.skipped and "not ours" in skipped.skipped
    assert four_gpus_one_busy.calls.count("init") == four_gpus_one_busy.calls.count("shutdown")


def test_memory_alone_marks_a_gpu_busy(monkeypatch):
    module = fake_nvml(2, busy={1: 2048.0})
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: []  # processes hidden (another container)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = LocalExecutor.from_config("auto")
    assert [s.name for s in executor.slots] == ["gpu0"]
    assert "2048 MiB" in executor.skipped[0].skipped


def test_listed_indices_select_those_gpus_and_an_unknown_one_is_refused(four_gpus_one_busy):
    assert [s.name for s in LocalExecutor.from_config("0,3").slots] == ["gpu0", "gpu3"]
    assert [s.name for s in LocalExecutor.from_config(uuid_of(1)).slots] == ["gpu1"]
    with pytest.raises(ValueError, match="GPU 7"):
        LocalExecutor.from_config("0,7")


def test_only_busy_gpus_selected_is_an_error_not_a_silent_cpu_run(four_gpus_one_busy):
    with pytest.raises(ValueError, match="in use by someone else"):
        LocalExecutor.from_config("2")


def test_cuda_visible_devices_set_by_the_user_narrows_auto(four_gpus_one_busy, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert [s.name for s in LocalExecutor.from_config("auto").slots] == ["gpu1", "gpu3"]


def test_no_driver_falls_back_to_nvidia_smi_then_one_cpu_slot(only_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(4, no_driver=True))
    _fake_nvidia_smi(only_path, NVIDIA_SMI_L)
    assert [s.devices for s in LocalExecutor.from_config("auto").pool.slots] == ["0", "1"]
    (only_path / "nvidia-smi").unlink()
    executor = LocalExecutor.from_config("auto")
    assert [s.name for s in executor.slots] == ["cpu0"] and executor.sample() == []


def test_sample_reads_utilisation_and_memory_per_slot(four_gpus_one_busy):
    samples = LocalExecutor.from_config("auto").sample()
    assert [(s.name, s.utilisation) for s in samples] == [("gpu0", 10.0), ("gpu1", 20.0), ("gpu3", 40.0)]
    assert all(s.memory_used_mb == pytest.approx(300.0) and s.memory_total_mb > 80000 for s in samples)
    assert LocalExecutor.from_config("cpu:2").sample() == []


def test_make_executor_refuses_a_bad_spelling_and_names_the_ray_extra_when_ray_is_missing(tmp_path, monkeypatch):
    cfg = fast_config(tmp_path)
    assert make_executor(cfg.run).name == "local"
    with pytest.raises(ExecutorError, match="choose one of 'local', 'ray'"):
        make_executor(SimpleNamespace(executor="slurm", gpus="cpu"))
    monkeypatch.setitem(sys.modules, "ray", None)  # ray not installed
    with pytest.raises(ExecutorError, match=r"bilevel-autoresearch\[ray\]"):
        make_executor(fast_config(tmp_path, **{"run.executor": "ray"}).run)


async def test_concurrent_runs_land_on_distinct_gpus_pinned_by_uuid(four_gpus_one_busy, tmp_path):
    executor = LocalExecutor.from_config("auto")
    seen: list[tuple[str, str]] = []

    async def one() -> None:
        async with executor.slot() as slot:
            lines: list[str] = []
            trial = TrialRequest(attempt=1, cwd=tmp_path, budget_s=30, grace_s=30, env={"BILEVEL_FAKE_STEP_S": "0.3"},
                                 on_line=lambda stream, line: lines.append(line))
            result = await executor.run(slot, PINNED, trial)
            assert result.outcome == "ok" and result.failure == "" and result.node == ""
            seen.append((slot.uuid, next(line.split()[1] for line in lines if line.startswith("visible "))))
            assert "order PCI_BUS_ID" in lines

    await asyncio.gather(*(one() for _ in range(3)))
    assert sorted(pinned for _, pinned in seen) == sorted(uuid_of(i) for i in (0, 1, 3))
    assert all(slot_uuid == pinned for slot_uuid, pinned in seen)


async def test_a_failed_run_is_the_scripts_failure(four_gpus_one_busy, tmp_path):
    executor = LocalExecutor.from_config("0")
    async with executor.slot() as slot:
        result = await executor.run(slot, PINNED, TrialRequest(attempt=1, cwd=tmp_path, budget_s=30, grace_s=30,
                                                               env={"BILEVEL_FAKE_OOM_ON": uuid_of(0)}))
    assert result.outcome == "oom" and result.failure == "script"


def _pinned_config(tmp_path, **overrides):
    return fast_config(tmp_path, **{"script.path": str(PINNED), "budget.iterations": 0, "run.gpus": "auto",
                                    "run.worker": "fresh", **overrides})


async def test_an_oom_at_start_up_is_retried_on_another_gpu_as_the_next_attempt(four_gpus_one_busy, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("BILEVEL_FAKE_OOM_ON", uuid_of(0))
    engine, rec = await run_engine(_pinned_config(tmp_path))
    started, finished = rec.of(ev.TrainingStarted), rec.of(ev.TrainingFinished)
    assert [(s.iteration, s.attempt, s.slot) for s in started] == [(0, 1, "gpu0"), (0, 2, "gpu1")]
    assert [(f.outcome, f.failure, f.attempt) for f in finished] == [("oom", "script", 1), ("ok", "", 2)]
    assert engine.state.baseline_val_bpb == pytest.approx(1.04)
    [configured] = rec.of(ev.SlotsConfigured)
    assert configured.executor == "local"
    assert [(s.name, s.skipped != "") for s in configured.slots] == [
        ("gpu0", False), ("gpu1", False), ("gpu3", False), ("gpu2", True)]
    samples = rec.of(ev.SlotsSampled)
    assert samples and [s.name for s in samples[0].samples] == ["gpu0", "gpu1", "gpu3"]


async def test_an_oom_after_training_began_is_the_scripts_and_not_retried(four_gpus_one_busy, tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_FAKE_OOM_ON", uuid_of(0))
    monkeypatch.setenv("BILEVEL_FAKE_OOM_AFTER_STEP", "1")
    _, rec = await run_engine(_pinned_config(tmp_path))
    assert [(f.outcome, f.failure, f.attempt) for f in rec.of(ev.TrainingFinished)] == [("oom", "script", 1)]


async def test_an_oom_on_every_gpu_stops_after_two_retries(four_gpus_one_busy, tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_FAKE_OOM_ON", ",".join(uuid_of(i) for i in range(4)))
    _, rec = await run_engine(_pinned_config(tmp_path))
    assert [(f.outcome, f.attempt) for f in rec.of(ev.TrainingFinished)] == [("oom", 1), ("oom", 2), ("oom", 3)]
    assert [s.slot for s in rec.of(ev.TrainingStarted)] == ["gpu0", "gpu1", "gpu3"]


async def test_cpu_slots_record_no_gpu_samples(tmp_path):
    _, rec = await run_engine(fast_config(tmp_path, **{"budget.iterations": 0, "run.gpus": "cpu:2"}))
    [configured] = rec.of(ev.SlotsConfigured)
    assert [s.name for s in configured.slots] == ["cpu0", "cpu1"]
    assert rec.of(ev.SlotsSampled) == [] and rec.of(ev.TrainingStarted)[0].slot == "cpu0"


def test_the_cli_refuses_a_ray_run_without_ray_as_a_usage_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    from core.cli import main
    from tests.support.cli import write_fast_config

    monkeypatch.setitem(sys.modules, "ray", None)  # ray not installed
    cfg = write_fast_config(tmp_path)
    cfg.write_text(cfg.read_text() + 'executor = "ray"\n')
    assert main(["run", str(cfg), "--headless"]) == 2
    assert "bilevel-autoresearch[ray]" in capsys.readouterr().err


async def test_the_lowest_free_slot_is_handed_out_whatever_order_runs_finished_in():
    pool = SlotPool.from_config("cpu:3")
    held = [await pool.acquire() for _ in range(3)]
    for slot in reversed(held):  # finished last-first
        pool.release(slot)
    assert (await pool.acquire()).name == "cpu0"
    assert (await pool.acquire(avoid=frozenset({"cpu1"}))).name == "cpu2"  # a retry goes elsewhere
    assert (await pool.acquire(avoid=frozenset({"cpu1"}))).name == "cpu1"  # unless nothing else is free

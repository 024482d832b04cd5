"""Tests for core.services.executors: the slot pool and GPU detection."""
from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core.services.executors import Slot, SlotPool, detect_gpus, parse_nvidia_smi_list
from tests.support.patience import patience

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
    return bin_dir


def test_no_devices_means_one_cpu_slot_with_empty_env():
    for devices in (None, []):
        pool = SlotPool(devices)
        assert pool.size == 1
        assert pool.slots[0] == Slot(0, "")
        assert pool.slots[0].env() == {}


def test_gpu_slot_env_pins_cuda_visible_devices():
    assert Slot(1, "3").env() == {"CUDA_VISIBLE_DEVICES": "3"}


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
    assert [slot.env() for slot in pool.slots] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]


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


def test_detection_does_not_import_torch(only_path):
    # A fresh interpreter: other tests in this process may already have imported torch.
    code = "import sys; from core.services.executors import SlotPool; SlotPool.from_config('auto'); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_n_gives_n_distinct_cpu_slots_and_bad_counts_are_refused():
    pool = SlotPool.from_config("cpu:4")
    assert [s.name for s in pool.slots] == ["cpu0", "cpu1", "cpu2", "cpu3"] and pool.free == 4
    assert all(s.env() == {} for s in pool.slots)
    for bad in ("cpu:0", "cpu:", "cpu:two", "cpu:-1"):
        with pytest.raises(ValueError, match="cpu:N"):
            SlotPool.from_config(bad)

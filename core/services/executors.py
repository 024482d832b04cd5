"""Where training runs execute: a pool of local slots, one per GPU (or one CPU slot).

A run acquires a ``Slot``, passes ``slot.env()`` to the trainer so the script sees
only its own device through CUDA_VISIBLE_DEVICES, and releases the slot when done.
Waiters are served first come, first served. GPUs are detected with
``nvidia-smi -L`` so that choosing slots never imports torch.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

_NVIDIA_SMI_TIMEOUT_S = 10.0
_GPU_LINE_RE = re.compile(r"^GPU\s+(\d+)\s*:")
# Spellings of "no GPU" accepted in the config.
_CPU_WORDS = {"", "cpu", "none"}


@dataclass(frozen=True)
class Slot:
    index: int
    devices: str  # the value for CUDA_VISIBLE_DEVICES; "" for the CPU slot

    @property
    def is_cpu(self) -> bool:
        return self.devices == ""

    def env(self) -> dict[str, str]:
        return {} if self.is_cpu else {"CUDA_VISIBLE_DEVICES": self.devices}

    def describe(self) -> str:
        return "cpu" if self.is_cpu else f"gpu {self.devices}"

    @property
    def name(self) -> str:
        """What events and the app call it: cpu0, cpu1… or gpu0, gpu3 (by device)."""
        return f"cpu{self.index}" if self.is_cpu else f"gpu{self.devices}"


class SlotPool:
    """A fixed set of slots handed out to concurrent runs, FIFO when they are all busy."""

    def __init__(self, devices: Sequence[str] | None, *, cpu_slots: int = 1) -> None:
        names = [str(device).strip() for device in (devices or [])]
        if any(not name for name in names):
            raise ValueError(f"empty device name in {list(devices or [])!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"device listed twice in {names!r}")
        if cpu_slots < 1:
            raise ValueError(f"cpu_slots must be at least 1, not {cpu_slots}")
        self.slots: tuple[Slot, ...] = (tuple(Slot(i, name) for i, name in enumerate(names))
                                        or tuple(Slot(i, "") for i in range(cpu_slots)))
        self._free: deque[Slot] = deque(self.slots)
        self._waiters: deque[asyncio.Future[Slot]] = deque()

    @classmethod
    def from_config(cls, gpus: str | Sequence[str] | None) -> "SlotPool":
        """Build a pool from the config's ``gpus`` value.

        ``"auto"``: the devices in CUDA_VISIBLE_DEVICES if it is set, else the GPUs
        ``nvidia-smi -L`` lists, else one CPU slot. ``"0,1"`` or ``["0", "1"]``: those
        devices. ``None``, ``""``, ``"cpu"`` or ``"none"``: one CPU slot; ``"cpu:4"``: four.
        """
        if gpus is None:
            return cls(None)
        if isinstance(gpus, str):
            text = gpus.strip()
            if text.lower() == "auto":
                return cls(detect_gpus())
            if text.lower() in _CPU_WORDS:
                return cls(None)
            if text.lower().startswith("cpu:"):
                count = text[4:].strip()
                if not count.isdigit() or int(count) < 1:
                    raise ValueError(f'run.gpus = "{text}": "cpu:N" needs a whole number of slots N ≥ 1')
                return cls(None, cpu_slots=int(count))
            return cls(text.split(","))
        return cls([str(device) for device in gpus])

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def free(self) -> int:
        return len(self._free)

    async def acquire(self) -> Slot:
        if self._free and not self._waiters:
            return self._free.popleft()
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed a slot in the same tick as the cancel: pass it on, never leak it.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            else:
                self._waiters.remove(waiter)
            raise

    def release(self, slot: Slot) -> None:
        if slot not in self.slots:
            raise ValueError(f"{slot!r} does not belong to this pool")
        if slot in self._free:
            raise ValueError(f"{slot!r} released twice")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        acquired = await self.acquire()
        try:
            yield acquired
        finally:
            self.release(acquired)


def detect_gpus() -> list[str]:
    """Devices to use for "auto": CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # The user already chose; "" or "-1" is the CUDA spelling of "no GPU".
        names = [name.strip() for name in visible.split(",") if name.strip()]
        return [] if names in ([], ["-1"]) else names
    return _nvidia_smi_gpus()


def _nvidia_smi_gpus() -> list[str]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        completed = subprocess.run(
            [executable, "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if completed.returncode != 0:
        return []
    return parse_nvidia_smi_list(completed.stdout)


def parse_nvidia_smi_list(text: str) -> list[str]:
    """GPU indices from ``nvidia-smi -L`` output (MIG lines below a GPU are skipped)."""
    indices: list[str] = []
    for line in text.splitlines():
        match = _GPU_LINE_RE.match(line.strip())
        if match:
            indices.append(match.group(1))
    return indices

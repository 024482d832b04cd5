"""Where training runs execute: the executor interface the engine uses, and the local slot pool.

An :class:`Executor` hands out slots (``async with executor.slot() as slot``, first come,
first served, never leaked on cancel) and runs one training script on a slot
(``await executor.run(slot, script, trial)``, a :class:`~core.services.trial_request.TrialRequest`),
pinning it to that slot's device and saying on the result where it ran and, when it failed, whose
failure it was. :func:`core.services.executor_choice.make_executor` builds the one ``run.executor``
names in the registry: the local pool here (GPUs through NVML, see :mod:`core.services.gpus`, or
``cpu:N`` CPU slots, which tests and benchmarks use), the Ray executor
(:mod:`core.services.ray_executor`, imported only when asked for), or a plugin's.
Choosing slots never imports torch.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from core.record.events import SlotInfo, SlotSample
from core.services import gpus as nv
from core.services.trainer import TrainResult, run_training
from core.services.trial_request import TrialRequest

_NVIDIA_SMI_TIMEOUT_S = 10.0
_GPU_LINE_RE = re.compile(r"^GPU\s+(\d+)\s*:")
# Spellings of "no GPU" accepted in the config.
_CPU_WORDS = {"", "cpu", "none"}


class ExecutorError(ValueError):
    """The executor the config asks for cannot be built here (a bad spelling, a missing extra)."""


@dataclass(frozen=True)
class Slot:
    index: int
    devices: str  # the GPU index for CUDA_VISIBLE_DEVICES; "" for a CPU slot (and a Ray slot)
    uuid: str = ""  # the GPU's UUID when NVML gave one: what the run is pinned by
    label: str = ""  # a name other than cpuN/gpuN (a Ray slot: "ray0")

    @property
    def is_cpu(self) -> bool:
        return self.devices == ""

    def env(self) -> dict[str, str]:
        """What pins a run to this slot: its GPU by UUID (or index), in PCI bus order."""
        if self.is_cpu:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.uuid or self.devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def describe(self) -> str:
        return self.label or ("cpu" if self.is_cpu else f"gpu {self.devices}")

    @property
    def name(self) -> str:
        """What events and the app call it: cpu0, cpu1… or gpu0, gpu3 (by device)."""
        if self.label:
            return self.label
        return f"cpu{self.index}" if self.is_cpu else f"gpu{self.devices}"

    def info(self, memory_total_mb: float | None = None) -> SlotInfo:
        return SlotInfo(name=self.name, devices=self.devices, uuid=self.uuid, memory_total_mb=memory_total_mb)


class Executor(Protocol):
    """What the engine trains through: slots to hand out and a way to run a script on one."""

    name: str  # its registry name: "local", "ray", a plugin's
    address: str  # the Ray cluster joined ("" locally)
    # Its slots are this machine's: a warm training worker per slot may run a trial instead of ``run``.
    warm_workers: bool

    @property
    def capacity(self) -> int: ...  # usable slots: how many runs at once
    @property
    def slots(self) -> tuple[SlotInfo, ...]: ...  # the usable slots
    @property
    def skipped(self) -> tuple[SlotInfo, ...]: ...  # slots found but not used, each with its reason

    # avoid: slot names to pass over while another is free (a retry after an OOM there)
    def slot(self, avoid: frozenset[str] = frozenset()) -> AbstractAsyncContextManager[Slot]: ...
    async def run(self, slot: Slot, script: Path, trial: TrialRequest) -> TrainResult: ...
    def sample(self) -> list[SlotSample]: ...
    async def close(self) -> None: ...


def failure_class(result: TrainResult) -> str:
    """Whose failure a finished run is: "" (it worked, or was cancelled), "script" or "infrastructure"."""
    if result.failure:
        return result.failure
    return "" if result.outcome in ("ok", "cancelled") else "script"


class SlotPool:
    """A fixed set of slots handed out to concurrent runs, FIFO when they are all busy."""

    def __init__(self, devices: Sequence[str] | None = None, *, cpu_slots: int = 1,
                 slots: Sequence[Slot] | None = None) -> None:
        if slots is not None:
            self.slots: tuple[Slot, ...] = tuple(slots)
            if not self.slots:
                raise ValueError("a slot pool needs at least one slot")
        else:
            names = [str(device).strip() for device in (devices or [])]
            if any(not name for name in names):
                raise ValueError(f"empty device name in {list(devices or [])!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"device listed twice in {names!r}")
            if cpu_slots < 1:
                raise ValueError(f"cpu_slots must be at least 1, not {cpu_slots}")
            self.slots = (tuple(Slot(i, name) for i, name in enumerate(names))
                          or tuple(Slot(i, "") for i in range(cpu_slots)))
        self._free: deque[Slot] = deque(self.slots)
        self._waiters: deque[asyncio.Future[Slot]] = deque()

    @classmethod
    def from_config(cls, gpus: str | Sequence[str] | None) -> SlotPool:
        """Build a pool from the config's ``gpus`` value (see :func:`find_slots`)."""
        return cls(slots=find_slots(gpus).slots)

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def free(self) -> int:
        return len(self._free)

    async def acquire(self, avoid: frozenset[str] = frozenset()) -> Slot:
        """The lowest free slot (one not in ``avoid`` if there is one), else the next to be released."""
        if self._free and not self._waiters:
            preferred = [s for s in self._free if s.name not in avoid] or list(self._free)
            self._free.remove(preferred[0])
            return preferred[0]
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
        # Free slots stay in slot order: the next run takes the lowest free one, so which slot a run
        # gets does not depend on which run happened to finish first (batch logs are reproducible).
        self._free.append(slot)
        self._free = deque(sorted(self._free, key=lambda s: s.index))

    @asynccontextmanager
    async def slot(self, avoid: frozenset[str] = frozenset()) -> AsyncIterator[Slot]:
        acquired = await self.acquire(avoid)
        try:
            yield acquired
        finally:
            self.release(acquired)


@dataclass(frozen=True)
class Found:
    """The slots to train on, the GPUs left out (each SlotInfo says why), and NVML's indices of the used ones."""

    slots: tuple[Slot, ...]
    skipped: tuple[SlotInfo, ...] = ()
    memory_mb: tuple[float | None, ...] = ()  # per slot: its GPU's memory, when NVML said
    nvml: bool = False  # the GPUs came from NVML, so it can sample them


def _cpu_count(text: str) -> int:
    count = text[4:].strip()
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f'run.gpus = "{text}": "cpu:N" needs a whole number of slots N ≥ 1')
    return int(count)


def find_slots(gpus: str | Sequence[str] | None) -> Found:
    """The slots ``run.gpus`` means here.

    ``"auto"``: every GPU NVML lists (narrowed by a CUDA_VISIBLE_DEVICES the user set), less
    those holding another user's memory or processes; without NVML the devices in
    CUDA_VISIBLE_DEVICES, else those ``nvidia-smi -L`` lists; no GPU: one CPU slot.
    ``"0,1"`` or ``["0", "1"]``: those GPUs (indices or UUIDs). ``None``, ``""``, ``"cpu"`` or
    ``"none"``: one CPU slot; ``"cpu:4"``: four. Every GPU busy is an error, never a silent CPU run.
    """
    wanted: list[str] | None
    if gpus is None:
        return Found(tuple(SlotPool(None).slots))
    if isinstance(gpus, str):
        text = gpus.strip()
        if text.lower() in _CPU_WORDS:
            return Found(tuple(SlotPool(None).slots))
        if text.lower().startswith("cpu:"):
            return Found(tuple(SlotPool(None, cpu_slots=_cpu_count(text)).slots))
        wanted = None if text.lower() == "auto" else [name.strip() for name in text.split(",")]
    else:
        wanted = [str(device).strip() for device in gpus]
    if wanted is not None and (any(not name for name in wanted) or len(set(wanted)) != len(wanted)):
        raise ValueError(f"run.gpus = {gpus!r}: every GPU once, none empty")
    try:
        nvml = nv.load_nvml()
    except nv.NoNvml:
        return Found(SlotPool(detect_gpus() if wanted is None else wanted).slots)
    try:
        choice = nv.choose_gpus(nv.list_gpus(nvml), wanted)
    finally:
        _shutdown(nvml)
    skipped = tuple(SlotInfo(name=f"gpu{g.index}", devices=str(g.index), uuid=g.uuid,
                             memory_total_mb=g.memory_total_mb, skipped=why) for g, why in choice.skipped)
    if not choice.usable:
        if skipped:
            raise ValueError("every GPU selected is in use by someone else: "
                             + "; ".join(f"{s.name}: {s.skipped}" for s in skipped)
                             + ' (choose others with run.gpus = "0,1", or run.gpus = "cpu")')
        return Found(tuple(SlotPool(None).slots))
    slots = tuple(Slot(i, str(g.index), g.uuid) for i, g in enumerate(choice.usable))
    return Found(slots, skipped, tuple(g.memory_total_mb for g in choice.usable), nvml=True)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001, S110 - shutting NVML down never matters more than the run
        pass


class LocalExecutor:
    """Runs on this machine's slots: its GPUs (each run pinned to one by UUID) or ``cpu:N`` CPU slots."""

    name = "local"
    address = ""
    warm_workers = True

    def __init__(self, found: Found) -> None:
        self._found = found
        self.pool = SlotPool(slots=found.slots)
        memory = found.memory_mb or (None,) * len(found.slots)
        self._infos = tuple(slot.info(mb) for slot, mb in zip(found.slots, memory))

    @classmethod
    def from_config(cls, gpus: str | Sequence[str] | None) -> LocalExecutor:
        return cls(find_slots(gpus))

    @classmethod
    def from_run_config(cls, run_cfg: Any) -> LocalExecutor:
        """The registry's factory: the slots of ``run.gpus``."""
        return cls.from_config(run_cfg.gpus)

    @property
    def capacity(self) -> int:
        return self.pool.size

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        return self._infos

    @property
    def skipped(self) -> tuple[SlotInfo, ...]:
        return self._found.skipped

    def slot(self, avoid: frozenset[str] = frozenset()) -> AbstractAsyncContextManager[Slot]:
        return self.pool.slot(avoid)

    async def run(self, slot: Slot, script: Path, trial: TrialRequest) -> TrainResult:
        """``run_training`` pinned to ``slot`` (its environment over the trial's)."""
        result = await run_training(script, **trial.pinned(slot.env()).training_kwargs())
        return replace(result, failure=failure_class(result))

    def sample(self) -> list[SlotSample]:
        """GPU utilisation and memory per slot, through NVML; [] on CPU slots or without NVML."""
        if not self._found.nvml:
            return []
        try:
            nvml = nv.load_nvml()
        except nv.NoNvml:
            return []
        try:
            readings = nv.read_use([int(slot.devices) for slot in self._found.slots], nvml)
        finally:
            _shutdown(nvml)
        return [SlotSample(name=slot.name, utilisation=r.utilisation, memory_used_mb=r.memory_used_mb,
                           memory_total_mb=r.memory_total_mb) for slot, r in zip(self._found.slots, readings)]

    async def close(self) -> None:
        """Nothing to let go of: every run ends its own processes."""


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

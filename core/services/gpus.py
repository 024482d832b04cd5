"""The GPUs of this machine through NVML (nvidia-ml-py): which exist, which are free, how busy.

``list_gpus()`` reads index, UUID, memory and running compute processes of every GPU;
``choose_gpus()`` turns the config's ``run.gpus`` into the GPUs to train on plus the ones
skipped, each with its reason (another user's memory or process on it). ``sample()`` reads
utilisation and memory for the app. ``pynvml`` is imported lazily, so a machine without the
package or without a driver simply has no NVML: the caller falls back to nvidia-smi.
Tests replace NVML at its boundary: a fake ``pynvml`` module in ``sys.modules``.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

# More used memory than this, before we start anything, is another user's.
BUSY_MEMORY_MB = 1024.0
_MB = 1024 * 1024


class NoNvml(Exception):
    """NVML cannot be used here: the package is missing, or there is no driver."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    memory_total_mb: float
    memory_used_mb: float
    processes: tuple[int, ...]  # pids of the compute processes on it

    def busy_reason(self, ours: Iterable[int] = ()) -> str:
        """Why another user holds this GPU ("" when it is free for us)."""
        others = [pid for pid in self.processes if pid not in set(ours)]
        if others:
            return f"compute process{'es' if len(others) > 1 else ''} not ours: pid {', '.join(map(str, others))}"
        if self.memory_used_mb > BUSY_MEMORY_MB:
            return f"{self.memory_used_mb:.0f} MiB of {self.memory_total_mb:.0f} MiB already in use"
        return ""


@dataclass(frozen=True)
class Choice:
    """The GPUs to train on, and the ones left out with the reason."""

    usable: tuple[Gpu, ...]
    skipped: tuple[tuple[Gpu, str], ...]


def load_nvml() -> ModuleType:
    """The initialised ``pynvml`` module, or NoNvml saying why not."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError as exc:
        raise NoNvml(f"nvidia-ml-py is not installed ({exc})") from exc
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, …
        raise NoNvml(f"NVML did not start: {exc}") from exc
    return nvml


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _processes(nvml: ModuleType, handle: object) -> tuple[int, ...]:
    try:
        return tuple(int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception:  # noqa: BLE001 - not supported on this GPU: memory is still the tell
        return ()


def list_gpus(nvml: ModuleType | None = None) -> list[Gpu]:
    """Every GPU NVML sees, in NVML's (PCI bus) order."""
    nvml = nvml or load_nvml()
    gpus = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append(Gpu(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        memory_total_mb=memory.total / _MB, memory_used_mb=memory.used / _MB,
                        processes=_processes(nvml, handle)))
    return gpus


def _selected(gpus: Sequence[Gpu], wanted: Sequence[str], what: str) -> list[Gpu]:
    by_name = {**{str(g.index): g for g in gpus}, **{g.uuid: g for g in gpus}}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        known = ", ".join(f"{g.index} ({g.uuid})" for g in gpus) or "none"
        raise ValueError(f"{what} names GPU {', '.join(unknown)}, which NVML does not list (GPUs here: {known})")
    return [by_name[name] for name in wanted]


def choose_gpus(gpus: Sequence[Gpu], wanted: Sequence[str] | None, *, ours: Iterable[int] = ()) -> Choice:
    """The GPUs to use: ``wanted`` (indices or UUIDs; None: all), less those another user holds.

    CUDA_VISIBLE_DEVICES set by the user narrows "all" the way CUDA would.
    """
    if wanted is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = [n.strip() for n in (visible or "").split(",") if n.strip()]
        if visible is not None and names in ([], ["-1"]):
            return Choice((), ())
        picked = _selected(gpus, names, "CUDA_VISIBLE_DEVICES") if visible is not None else list(gpus)
    else:
        picked = _selected(gpus, wanted, "run.gpus")
    ours = set(ours) | {os.getpid()}
    usable, skipped = [], []
    for gpu in picked:
        reason = gpu.busy_reason(ours)
        if reason:
            skipped.append((gpu, reason))
        else:
            usable.append(gpu)
    return Choice(tuple(usable), tuple(skipped))


@dataclass(frozen=True)
class Reading:
    index: int
    utilisation: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None


def read_use(indices: Sequence[int], nvml: ModuleType | None = None) -> list[Reading]:
    """Utilisation and memory of these GPUs (NVML indices), now; a GPU NVML cannot read reads as None."""
    nvml = nvml or load_nvml()
    readings = []
    for index in indices:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            readings.append(Reading(index, float(rates.gpu), memory.used / _MB, memory.total / _MB))
        except Exception:  # noqa: BLE001 - a GPU that fell off the bus reads as unknown, never stops the run
            readings.append(Reading(index, None, None, None))
    return readings

"""NVML replaced at its boundary: a stand-in ``pynvml`` module with the nvml* calls we make.

``fake_nvml(4, busy={2: 5000})`` is a box of four 80 GiB GPUs where GPU 2 holds 5000 MiB of
another user's process; install it with ``monkeypatch.setitem(sys.modules, "pynvml", module)``.
"""
from __future__ import annotations

from types import ModuleType, SimpleNamespace

MIB = 1024 * 1024
TOTAL_MB = 81559.0
OTHER_PID = 424242  # a process of someone else's on a busy GPU


class NVMLError(Exception):
    pass


def uuid_of(index: int) -> str:
    return f"GPU-{index:08d}-aaaa-bbbb-cccc-{index:012d}"


def fake_nvml(count: int, busy: dict[int, float] | None = None, *, no_driver: bool = False) -> ModuleType:
    busy = dict(busy or {})
    module = ModuleType("pynvml")
    module.NVMLError = NVMLError
    module.calls = []  # type: ignore[attr-defined]

    def call(name):
        module.calls.append(name)  # type: ignore[attr-defined]

    def nvmlInit():
        call("init")
        if no_driver:
            raise NVMLError("Driver Not Loaded")

    def handle(index: int) -> SimpleNamespace:
        if not 0 <= index < count:
            raise NVMLError("Invalid Argument")
        return SimpleNamespace(index=index)

    module.nvmlInit = nvmlInit
    module.nvmlShutdown = lambda: call("shutdown")
    module.nvmlDeviceGetCount = lambda: count
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetUUID = lambda h: uuid_of(h.index)
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(
        total=int(TOTAL_MB * MIB), used=int((busy.get(h.index, 300.0)) * MIB),
        free=int((TOTAL_MB - busy.get(h.index, 300.0)) * MIB))
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: (
        [SimpleNamespace(pid=OTHER_PID, usedGpuMemory=int(busy[h.index] * MIB))] if h.index in busy else [])
    module.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=10 * (h.index + 1), memory=5)
    return module

"""GPU use per slot, sampled every few seconds while at least one trial runs.

``async with sampler.running():`` brackets one training run; the first run in flight starts a task
that calls the executor's ``sample()`` (off the event loop: NVML calls block) every
``every_s`` seconds and hands non-empty samples to ``record``; the last run out stops it.
An executor with nothing to sample (CPU slots, Ray) gives [] and the task ends at once.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from core.record.events import SlotSample

SAMPLE_EVERY_S = 10.0


class SlotSampler:
    def __init__(self, sample: Callable[[], list[SlotSample]], record: Callable[[list[SlotSample]], None],
                 every_s: float = SAMPLE_EVERY_S) -> None:
        self._sample, self._record, self.every_s = sample, record, every_s
        self._in_flight = 0
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._in_flight += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._task is not None:
                self._task.cancel()
                self._task = None

    async def _loop(self) -> None:
        while True:
            samples = await asyncio.to_thread(self._sample)
            if not samples:
                return  # nothing to sample here (CPU): never an empty event
            self._record(samples)
            await asyncio.sleep(self.every_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

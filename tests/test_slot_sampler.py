"""Tests for core.services.slot_sampler: GPU samples while trials run, none on CPU, none after."""
from __future__ import annotations

import asyncio

from core.record.events import SlotSample
from core.services.slot_sampler import SlotSampler
from tests.support.patience import patience


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_samples_are_recorded_while_a_run_is_in_flight_and_stop_with_the_last():
    recorded: list[list[SlotSample]] = []
    enough = asyncio.Event()

    def record(samples: list[SlotSample]) -> None:
        recorded.append(samples)
        if len(recorded) >= 3:
            enough.set()

    sampler = SlotSampler(lambda: [SlotSample(name="gpu0", utilisation=50.0)], record, every_s=0.01)
    async with sampler.running():
        async with sampler.running():  # two runs in flight share one sampling task
            await asyncio.wait_for(enough.wait(), patience(30))
        count = len(recorded)
        # one run still in flight: still sampled
        await asyncio.wait_for(_until(lambda: len(recorded) > count), patience(30))
    count = len(recorded)
    await asyncio.sleep(0.05)
    assert len(recorded) == count  # none in flight: no more samples
    assert all(s == [SlotSample(name="gpu0", utilisation=50.0)] for s in recorded)
    await sampler.close()


async def test_nothing_to_sample_records_nothing():
    calls: list[int] = []
    recorded: list[list[SlotSample]] = []

    def sample() -> list[SlotSample]:
        calls.append(1)
        return []

    sampler = SlotSampler(sample, recorded.append, every_s=0.01)
    async with sampler.running():
        await asyncio.wait_for(_until(lambda: calls), patience(30))
        await asyncio.sleep(0.05)
    assert recorded == [] and len(calls) == 1  # asked once, found nothing, stopped asking

"""A source that programs push events into: the app's test double and the benchmark's feed.

Commands sent to it are recorded in :attr:`QueueSource.sent` instead of reaching an engine.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator

from core.record import commands as cmds
from core.record import events as ev
from tui.sources import MAX_BATCH, Batch, Source


class QueueSource(Source):
    """Events pushed with :meth:`push`; commands are recorded in :attr:`sent`."""

    mode = "memory"

    def __init__(self, session_dir: Path | None = None, *, read_only: bool = False) -> None:
        super().__init__()
        self.session_dir = Path(session_dir) if session_dir else None
        self.read_only = read_only
        self._queue: deque[ev.Event] = deque()
        self._wake = asyncio.Event()
        self.sent: list[tuple[cmds.Command, float]] = []
        self.running = True

    def push(self, *events: ev.Event) -> None:
        self._queue.extend(events)
        self._wake.set()

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            if not self._queue:
                self.caught_up.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self.caught_up.clear()
            n = min(len(self._queue), MAX_BATCH)
            yield [self._queue.popleft() for _ in range(n)]

    async def send(self, command: cmds.Command) -> None:
        if self.read_only:
            await super().send(command)
        self.sent.append((command, time.perf_counter()))

    def engine_running(self) -> bool:
        return self.running

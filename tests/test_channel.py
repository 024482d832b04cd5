"""The session command channel: files written atomically by viewers, submitted once each by the engine."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from core.record import channel


class Inbox:
    """Records submit() calls with the engine's signature (the command name is positional-only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.arrived = asyncio.Event()

    def submit(self, name: str, /, source: str = "api", **args) -> None:
        self.calls.append((name, source, args))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), timeout)


def test_written_command_is_one_complete_json_file(tmp_path: Path):
    path = channel.write_command(tmp_path, "freeze", name="MATRIX_LR", reason="why not")
    assert path.parent == tmp_path / "commands" and path.suffix == ".json"
    assert json.loads(path.read_text()) == {"command": "freeze", "args": {"name": "MATRIX_LR", "reason": "why not"}}
    assert [p.name for p in (tmp_path / "commands").iterdir()] == [path.name]  # no temp file left behind


def test_pending_commands_come_in_submission_order(tmp_path: Path):
    names = [f"c{i}" for i in range(20)]
    for name in names:
        channel.write_command(tmp_path, name)
    assert [channel.read_command(p)[0] for p in channel.pending_commands(tmp_path)] == names


def test_take_pending_submits_each_file_once_with_channel_source(tmp_path: Path):
    inbox = Inbox()
    channel.write_command(tmp_path, "pause")
    channel.write_command(tmp_path, "set_guidance", guidance="shorter warmup")
    assert channel.take_pending(tmp_path, inbox.submit) == 2
    assert channel.take_pending(tmp_path, inbox.submit) == 0
    assert inbox.calls == [("pause", "channel", {}), ("set_guidance", "channel", {"guidance": "shorter warmup"})]


def test_unreadable_command_is_set_aside_not_retried(tmp_path: Path):
    inbox = Inbox()
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / "00000000000000000001-1-aaaaaa.json").write_text("{not json")
    (folder / "00000000000000000002-1-bbbbbb.json").write_text(json.dumps({"command": "x", "args": {"bad key": 1}}))
    channel.write_command(tmp_path, "resume")
    logged: list[str] = []
    assert channel.take_pending(tmp_path, inbox.submit, logged.append) == 1
    assert inbox.calls == [("resume", "channel", {})]
    assert sorted(p.suffix for p in folder.iterdir()) == [".invalid", ".invalid"]
    assert len(logged) == 2
    assert channel.take_pending(tmp_path, inbox.submit) == 0


def test_temp_files_are_never_taken(tmp_path: Path):
    inbox = Inbox()
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / ".123-4-abcdef.tmp").write_text(json.dumps({"command": "stop", "args": {}}))
    assert channel.take_pending(tmp_path, inbox.submit) == 0


async def test_watch_submits_waiting_and_new_commands_in_order(tmp_path: Path):
    inbox = Inbox()
    channel.write_command(tmp_path, "pause")  # written before the engine watches
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit))
    try:
        await inbox.wait_for(1)
        for i in range(5):
            channel.write_command(tmp_path, "set_guidance", guidance=f"g{i}")
        channel.write_command(tmp_path, "freeze", name="WEIGHT_DECAY")
        await inbox.wait_for(7)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [c[0] for c in inbox.calls] == ["pause"] + ["set_guidance"] * 5 + ["freeze"]
    assert [c[2].get("guidance") for c in inbox.calls[1:6]] == [f"g{i}" for i in range(5)]
    assert inbox.calls[-1] == ("freeze", "channel", {"name": "WEIGHT_DECAY"})
    assert channel.pending_commands(tmp_path) == []


async def test_watch_by_polling_works_where_notifications_do_not(tmp_path: Path):
    inbox = Inbox()
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit, force_polling=True))
    try:
        await asyncio.sleep(0.2)
        channel.write_command(tmp_path, "resume")
        await inbox.wait_for(1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert inbox.calls == [("resume", "channel", {})]


async def test_two_watchers_of_one_session_never_submit_a_command_twice(tmp_path: Path):
    first, second = Inbox(), Inbox()
    tasks = [asyncio.create_task(channel.watch_commands(tmp_path, first.submit)),
             asyncio.create_task(channel.watch_commands(tmp_path, second.submit))]
    try:
        await asyncio.sleep(0.2)
        for i in range(30):
            channel.write_command(tmp_path, "set_guidance", guidance=str(i))
        for _ in range(100):
            if len(first.calls) + len(second.calls) >= 30 and not channel.pending_commands(tmp_path):
                break
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    got = sorted(int(c[2]["guidance"]) for c in first.calls + second.calls)
    assert got == list(range(30))


async def test_cancelled_watch_stops_promptly(tmp_path: Path):
    inbox = Inbox()
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - started < 1.0
    assert os.path.isdir(tmp_path / "commands")

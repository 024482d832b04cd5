"""The session command channel: files written atomically by viewers, submitted once each by the engine."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.support.patience import patience
from core.record import channel
from core.record import commands as cmds


class Inbox:
    """Records submit() calls with the engine's signature: one typed command, then its source."""

    def __init__(self) -> None:
        self.calls: list[tuple[cmds.Command | cmds.Unreadable, str]] = []
        self.arrived = asyncio.Event()

    def submit(self, command: cmds.Command | cmds.Unreadable, /, source: str = "api") -> None:
        self.calls.append((command, source))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), patience(timeout))


# One example of every command, arguments set away from their defaults where they have any.
EVERY_COMMAND = [
    cmds.Pause(), cmds.Resume(), cmds.Stop(now=True, reason="lunch"), cmds.AbortTraining(),
    cmds.SetGuidance(guidance="shorter warmup, ünïcode"), cmds.Freeze(name="MATRIX_LR", reason="why not"),
    cmds.Unfreeze(name="MATRIX_LR"), cmds.ApproveMechanism(research_id="r1-0001"),
    cmds.RejectMechanism(research_id="r1-0002", reason="too clever"), cmds.SetBudget(iterations=40),
    cmds.SetLimits(limits={"max_usd": 12.5, "inner.max_tokens": None}),
]


def test_the_examples_cover_every_command():
    assert {type(c) for c in EVERY_COMMAND} == set(cmds.command_types().values())


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: c.command)
def test_every_command_round_trips_through_the_channel(tmp_path: Path, command: cmds.Command):
    channel.write_command(tmp_path, command)
    inbox = Inbox()
    assert channel.take_pending(tmp_path, inbox.submit) == 1
    assert inbox.calls == [(command, "channel")]


def test_written_command_is_one_complete_json_file(tmp_path: Path):
    path = channel.write_command(tmp_path, cmds.Freeze(name="MATRIX_LR", reason="why not"))
    assert path.parent == tmp_path / "commands" and path.suffix == ".json"
    assert json.loads(path.read_text()) == {"command": "freeze", "args": {"name": "MATRIX_LR", "reason": "why not"}}
    assert [p.name for p in (tmp_path / "commands").iterdir()] == [path.name]  # no temp file left behind


def test_a_file_written_by_the_old_string_channel_is_still_read(tmp_path: Path):
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / "00000000000000000001-1-aaaaaa.json").write_text(
        json.dumps({"command": "set_guidance", "args": {"guidance": "old viewer"}}))
    (folder / "00000000000000000002-1-bbbbbb.json").write_text(json.dumps({"command": "pause"}))
    inbox = Inbox()
    assert channel.take_pending(tmp_path, inbox.submit) == 2
    assert inbox.calls == [(cmds.SetGuidance(guidance="old viewer"), "channel"), (cmds.Pause(), "channel")]


def test_pending_commands_come_in_submission_order(tmp_path: Path):
    guidance = [f"g{i}" for i in range(20)]
    for text in guidance:
        channel.write_command(tmp_path, cmds.SetGuidance(guidance=text))
    assert [channel.read_command(p).guidance for p in channel.pending_commands(tmp_path)] == guidance


def test_take_pending_submits_each_file_once_with_channel_source(tmp_path: Path):
    inbox = Inbox()
    channel.write_command(tmp_path, cmds.Pause())
    channel.write_command(tmp_path, cmds.SetGuidance(guidance="shorter warmup"))
    assert channel.take_pending(tmp_path, inbox.submit) == 2
    assert channel.take_pending(tmp_path, inbox.submit) == 0
    assert inbox.calls == [(cmds.Pause(), "channel"), (cmds.SetGuidance(guidance="shorter warmup"), "channel")]


BAD_FILES = {
    "not_json": (b"{not json", "not JSON"),
    "unknown_command": (json.dumps({"command": "dance", "args": {}}).encode(), "unknown command 'dance'"),
    "wrong_type": (json.dumps({"command": "freeze", "args": {"name": 3}}).encode(), "Expected `str`, got `int`"),
    "missing_argument": (json.dumps({"command": "set_guidance", "args": {}}).encode(), "missing required field `guidance`"),
    "unknown_argument": (json.dumps({"command": "stop", "args": {"nwo": True}}).encode(), "unknown field `nwo`"),
    "args_not_an_object": (json.dumps({"command": "stop", "args": [1]}).encode(), "must be an object"),
    "not_an_object": (b"[1, 2]", "non-empty 'command' string"),
    "not_utf8": (b'{"command": "set_guidance", "args": {"guidance": "\xff\xfe"}}', "not UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_command_file_is_refused_with_its_reason_and_kept(tmp_path: Path, name: str):
    content, reason = BAD_FILES[name]
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / "00000000000000000001-1-aaaaaa.json").write_bytes(content)
    channel.write_command(tmp_path, cmds.Resume())
    inbox, logged = Inbox(), []
    assert channel.take_pending(tmp_path, inbox.submit, logged.append) == 2
    (refused, source), (resumed, _) = inbox.calls
    assert isinstance(refused, cmds.Unreadable) and source == "channel"
    assert reason in refused.error and "00000000000000000001-1-aaaaaa" in refused.error
    assert resumed == cmds.Resume()
    kept = [p for p in folder.iterdir()]
    assert [p.suffix for p in kept] == [".invalid"] and kept[0].read_bytes() == content  # nothing lost
    assert len(logged) == 1
    assert channel.take_pending(tmp_path, inbox.submit) == 0  # never retried


def test_a_refused_file_keeps_the_name_and_arguments_it_had(tmp_path: Path):
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / "00000000000000000001-1-aaaaaa.json").write_text(json.dumps({"command": "freeze", "args": {"name": 3}}))
    inbox = Inbox()
    channel.take_pending(tmp_path, inbox.submit)
    refused = inbox.calls[0][0]
    assert (refused.name, refused.args) == ("freeze", {"name": 3})


def test_temp_files_are_never_taken(tmp_path: Path):
    inbox = Inbox()
    folder = tmp_path / "commands"
    folder.mkdir()
    (folder / ".123-4-abcdef.tmp").write_text(json.dumps({"command": "stop", "args": {}}))
    assert channel.take_pending(tmp_path, inbox.submit) == 0


async def test_watch_submits_waiting_and_new_commands_in_order(tmp_path: Path):
    inbox = Inbox()
    channel.write_command(tmp_path, cmds.Pause())  # written before the engine watches
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit))
    try:
        await inbox.wait_for(1)
        for i in range(5):
            channel.write_command(tmp_path, cmds.SetGuidance(guidance=f"g{i}"))
        channel.write_command(tmp_path, cmds.Freeze(name="WEIGHT_DECAY"))
        await inbox.wait_for(7)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [c[0].command for c in inbox.calls] == ["pause"] + ["set_guidance"] * 5 + ["freeze"]
    assert [c[0].guidance for c in inbox.calls[1:6]] == [f"g{i}" for i in range(5)]
    assert inbox.calls[-1] == (cmds.Freeze(name="WEIGHT_DECAY"), "channel")
    assert channel.pending_commands(tmp_path) == []


async def test_watch_by_polling_works_where_notifications_do_not(tmp_path: Path):
    inbox = Inbox()
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit, force_polling=True))
    try:
        await asyncio.sleep(0.2)
        channel.write_command(tmp_path, cmds.Resume())
        await inbox.wait_for(1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert inbox.calls == [(cmds.Resume(), "channel")]


async def test_two_watchers_of_one_session_never_submit_a_command_twice(tmp_path: Path):
    first, second = Inbox(), Inbox()
    tasks = [asyncio.create_task(channel.watch_commands(tmp_path, first.submit)),
             asyncio.create_task(channel.watch_commands(tmp_path, second.submit))]
    try:
        await asyncio.sleep(0.2)
        for i in range(30):
            channel.write_command(tmp_path, cmds.SetGuidance(guidance=str(i)))
        for _ in range(100):
            if len(first.calls) + len(second.calls) >= 30 and not channel.pending_commands(tmp_path):
                break
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    got = sorted(int(c[0].guidance) for c in first.calls + second.calls)
    assert got == list(range(30))


async def test_cancelled_watch_stops_promptly(tmp_path: Path):
    inbox = Inbox()
    task = asyncio.create_task(channel.watch_commands(tmp_path, inbox.submit))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # a watch that ignored the cancel would hang here
        await asyncio.wait_for(task, patience(1.0))
    assert os.path.isdir(tmp_path / "commands")

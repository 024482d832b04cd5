"""The process table as the engine reads it: tags found in any session, zombies counted as gone,
a killed child of ours reaped, and nothing of another tag or of no tag touched."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from core.services import process_control as pc
from tests.support.patience import patience
from tests.support.processes import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the oracle reads /proc")

SLEEPER = "import sys, time; print('up', flush=True); time.sleep(600)"


def start(tag: str | None, *, new_session: bool = True) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != pc.TAG_ENV}
    if tag is not None:
        env[pc.TAG_ENV] = tag
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=new_session)
    assert proc.stdout.readline() == "up\n"  # running, its environment in place
    return proc


def until(predicate, what: str) -> None:
    deadline = time.monotonic() + patience(60)
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_a_tag_is_found_in_another_session_and_only_that_tag_is_ended() -> None:
    tag, other = pc.new_tag(), pc.new_tag()
    mine, theirs, untagged = start(tag), start(other), start(None)
    try:
        assert pc.tagged_pids(tag) == [mine.pid]
        assert sorted(pc.tagged_pids([tag, other])) == sorted([mine.pid, theirs.pid])
        assert pc.tagged_pids([]) == [] and pc.tagged_pids("") == []
        assert pc.end_tagged(tag) == [mine.pid]
        # our child: reaped by end_tagged, so not even a zombie is left
        assert not alive(mine.pid) and not os.path.exists(f"/proc/{mine.pid}")
        assert alive(theirs.pid) and alive(untagged.pid)
        assert pc.end_tagged(tag) == []
    finally:
        for p in (mine, theirs, untagged):
            p.kill()
            p.wait()


def test_spare_keeps_one_tagged_process() -> None:
    tag = pc.new_tag()
    kept, ended = start(tag), start(tag)
    try:
        assert pc.end_tagged(tag, spare=kept.pid) == [ended.pid]
        assert alive(kept.pid) and not alive(ended.pid)
    finally:
        for p in (kept, ended):
            p.kill()
            p.wait()


def test_a_group_whose_only_member_is_a_zombie_has_no_live_members() -> None:
    proc = start(None)  # the leader of its own group: its pgid is its pid
    try:
        assert pc.group_has_live_members(proc.pid)
        pc.signal_group(proc.pid, signal.SIGKILL)
        until(lambda: not alive(proc.pid), "the kill")
        assert os.path.exists(f"/proc/{proc.pid}")  # not reaped yet: a zombie
        assert not pc.group_has_live_members(proc.pid)
        assert pc.tagged_pids("anything") == []
    finally:
        proc.wait()
    pc.signal_group(proc.pid, signal.SIGKILL)  # a group that is gone is no error

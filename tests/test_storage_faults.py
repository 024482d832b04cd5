"""A session folder that stops taking writes ends the run cleanly, never with a traceback.

A full disk, a read-only folder, no permission or a spent quota: the run ends with a final
event when one can still be written, one ``bilevel:`` line naming the path and the cause,
exit code 74, and a log that stays whole and resumable. ``resume`` and ``replay`` on a folder
they cannot use say why and exit 2.

The real thing where this machine lets us mount a small tmpfs (root in a container usually
may); everywhere, the same errors injected as OSError(errno) into the writer's system calls.
"""
from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import events as ev
from core.record import layout
from core.record import session as session_mod
from core.record.session import SessionReader, StorageFault
from core import cli
from core.run.drive import EXIT_STORAGE
from tests.conftest import Recorder, fast_config
from tests.support.cli import run_bilevel, write_fast_config

FAULTS = [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT]


class FailingLog:
    """os.write, except that writes to one file descriptor fail from the ``nth`` verdict on.

    The failing write first lets half of the line through (as a full disk does), so the
    writer must cut the torn half off again. ``times``: how many writes fail (None: all).
    """

    def __init__(self, err: int, *, nth: int = 2, times: int | None = 1) -> None:
        self.err, self.nth, self.times = err, nth, times
        self.fd = -1
        self.verdicts = 0
        self.failed = 0
        self._write = os.write

    def __call__(self, fd: int, data) -> int:
        if fd != self.fd:
            return self._write(fd, data)
        if b'"iteration_finished"' in bytes(data):
            self.verdicts += 1
        if self.verdicts >= self.nth and (self.times is None or self.failed < self.times):
            self.failed += 1
            if len(data) > 1:
                self._write(fd, bytes(data)[: len(data) // 2])
            raise OSError(self.err, os.strerror(self.err))
        return self._write(fd, data)


async def _run_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: FailingLog, **overrides):
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 4, **overrides}))
    fault.fd = engine.writer._fd
    monkeypatch.setattr(session_mod.os, "write", fault)
    rec = Recorder()
    engine.subscribe(rec)
    state = await engine.run()
    monkeypatch.setattr(session_mod.os, "write", fault._write)
    return engine, state, rec


def _assert_intact(session: Path) -> list[ev.Event]:
    reader = SessionReader(session)
    assert reader.check() == [] and not reader.torn_tail, reader.warnings()
    return list(reader.events())


@pytest.mark.parametrize("err", FAULTS, ids=lambda e: errno.errorcode[e])
async def test_a_storage_fault_on_the_log_ends_the_run_with_a_final_event_and_the_log_intact(
        tmp_path, monkeypatch, err) -> None:
    fault = FailingLog(err)
    engine, state, _ = await _run_with(tmp_path, monkeypatch, fault)
    assert fault.failed == 1
    assert isinstance(engine.storage_fault, StorageFault) and engine.storage_fault.errno == err
    log = layout.events_path(engine.dir)
    assert str(engine.storage_fault).startswith(f"cannot write {log}: ")
    assert errno.errorcode[err] in str(engine.storage_fault)
    events = _assert_intact(engine.dir)  # the torn half line was cut off again
    finished = [e for e in events if isinstance(e, ev.RunFinished)]
    assert len(finished) == 1 and finished[0].status == "failed"
    assert "storage fault" in finished[0].reason and errno.errorcode[err] in finished[0].reason
    assert state.status == "failed"
    # The lost verdict's iteration is re-run on resume; the session completes.
    verdicts = [e.iteration for e in events if isinstance(e, ev.IterationFinished)]
    resumed = Engine.resume(engine.dir)
    state = await resumed.run()
    assert state.status == "completed" and resumed.storage_fault is None
    events = _assert_intact(engine.dir)
    again = [e.iteration for e in events if isinstance(e, ev.IterationFinished)]
    assert again[:len(verdicts)] == verdicts and sorted(again) == list(range(5))


async def test_a_log_that_takes_no_more_writes_ends_the_run_without_a_final_event_and_stays_resumable(
        tmp_path, monkeypatch) -> None:
    fault = FailingLog(errno.ENOSPC, times=None)
    engine, _, _ = await _run_with(tmp_path, monkeypatch, fault)
    assert engine.storage_fault is not None and engine.storage_fault.errno == errno.ENOSPC
    events = _assert_intact(engine.dir)
    assert not [e for e in events if isinstance(e, ev.RunFinished)]  # nothing more could be written
    resumed = Engine.resume(engine.dir)  # space came back
    assert (await resumed.run()).status == "completed"
    _assert_intact(engine.dir)


async def test_a_storage_fault_in_an_artifact_write_names_the_artifact(tmp_path, monkeypatch) -> None:
    real = session_mod.write_atomic

    def full(path: Path, data, **kw) -> None:
        if "iterations/0002" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, **kw)

    monkeypatch.setattr(session_mod, "write_atomic", full)
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 4}))
    state = await engine.run()
    assert engine.storage_fault is not None and "iterations/0002/train.py" in engine.storage_fault.path
    assert state.status == "failed" and "no space left" in state.finished.reason
    _assert_intact(engine.dir)
    assert not list(engine.dir.rglob(".*.tmp"))  # no half-written temp file left to take space


# --- the real thing: a small tmpfs that fills up, the real CLI ---------------------------------


def _mount(args: list[str]) -> str:
    """'' when the mount worked, else why not."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted at tmp_path/disk (skips, saying why, where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    why = _mount(["-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)])
    if why:
        pytest.skip(f"cannot mount a tmpfs here ({why}); the injected-OSError tests cover the same paths")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _session(folder: Path) -> Path:
    (session,) = [p for p in (folder / "sessions").iterdir() if layout.is_session(p)]
    return session


def test_a_disk_that_fills_mid_run_exits_74_with_one_line_and_the_session_resumes_once_space_is_back(
        small_disk, tmp_path) -> None:
    cfg = write_fast_config(small_disk, iterations=1000)  # far more than fits
    done = run_bilevel("run", str(cfg), "--headless", cwd=tmp_path, timeout=600)
    assert done.returncode == EXIT_STORAGE, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("bilevel: ")]
    assert len(lines) == 1 and "cannot write" in lines[0] and "no space left on the device" in lines[0], lines
    session = _session(small_disk)
    assert str(session) in lines[0]
    events = _assert_intact(session)
    done_iterations = len([e for e in events if isinstance(e, ev.IterationFinished) and e.iteration])
    assert done_iterations >= 1
    assert not _mount(["-o", "remount,size=8m", str(small_disk)])  # space comes back
    again = run_bilevel("resume", str(session), "--iterations", str(done_iterations + 1), "--headless",
                        cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    events = _assert_intact(session)
    assert events[-1].type == "run_finished" and events[-1].status == "completed"


def test_resume_and_replay_of_a_read_only_session_folder(small_disk, tmp_path) -> None:
    cfg = write_fast_config(small_disk, iterations=1)
    assert run_bilevel("run", str(cfg), "--headless", cwd=tmp_path).returncode == 0
    session = _session(small_disk)
    assert not _mount(["-o", "remount,ro", str(small_disk)])
    resumed = run_bilevel("resume", str(session), "--iterations", "3", "--headless", cwd=tmp_path)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert resumed.stderr.startswith("bilevel: ") and resumed.stderr.count("\n") == 1, resumed.stderr
    assert "read-only file system" in resumed.stderr and str(session) in resumed.stderr
    replayed = run_bilevel("replay", str(session), "--headless", cwd=tmp_path)  # reading needs no writes
    assert replayed.returncode == 0 and "completed" in replayed.stdout, replayed.stderr


# --- the same refusals, injected (for machines that refuse to mount) ------------------------


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES], ids=lambda e: errno.errorcode[e])
def test_resume_of_a_folder_it_cannot_write_says_why_and_exits_2(tmp_path, monkeypatch, capsys, err) -> None:
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 1}))
    asyncio.run(engine.run())
    real_open = os.open

    def refusing(path, flags, *args, **kw):
        if str(path).startswith(str(engine.dir)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    code = cli.main(["resume", str(engine.dir), "--iterations", "3", "--headless"])
    err_text = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err_text
    assert err_text.startswith(f"bilevel: cannot write {engine.dir}") and errno.errorcode[err] in err_text


def test_replay_of_a_log_it_cannot_read_says_why_and_exits_2(tmp_path, monkeypatch, capsys) -> None:
    engine = Engine.create(fast_config(tmp_path, **{"budget.iterations": 1}))
    asyncio.run(engine.run())
    real_open = os.open
    log = layout.events_path(engine.dir)

    def refusing(path, flags, *args, **kw):
        if str(path) == str(log):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    code = cli.main(["replay", str(engine.dir), "--headless"])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text == f"bilevel: cannot read {log}: permission denied (EACCES)\n"

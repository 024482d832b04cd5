"""A log that cannot be lost or doubled, through the CLI where a user meets it (issue 10).

Damaged logs are made by hand from a real session: a blank line, an unreadable line, a
deleted line (a sequence gap), a copied line (a duplicate), a torn last line.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.session import LogChecker, SessionError, SessionReader, SessionWriter
from tests.support.cli import ROOT, run_bilevel, write_fast_config


@pytest.fixture(scope="module")
def finished_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline session of 3 iterations (copied by each test before it is damaged)."""
    folder = tmp_path_factory.mktemp("session")
    cfg = write_fast_config(folder, iterations=3)
    proc = run_bilevel("run", "--headless", str(cfg), cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (session,) = (folder / "sessions").iterdir()
    return session


def _copy(session: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / session.name
    shutil.copytree(session, target)
    return target


def _lines(session: Path) -> list[str]:
    return (session / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)


def _write(session: Path, lines: list[str]) -> None:
    (session / "events.jsonl").write_text("".join(lines), encoding="utf-8")


def _line_of(lines: list[str], kind: str, nth: int = 0) -> int:
    """The 0-based index of the nth line of an event type."""
    return [i for i, line in enumerate(lines) if f'"type":"{kind}"' in line][nth]


def _cut_before_finish(session: Path) -> None:
    """Drop run_finished (as a kill would) so that resume has work to do."""
    lines = _lines(session)
    _write(session, lines[:_line_of(lines, "run_finished")])


def test_blank_lines_in_the_middle_are_skipped_and_resume_keeps_every_iteration(finished_session, tmp_path):
    session = _copy(finished_session, tmp_path)
    _cut_before_finish(session)
    lines = _lines(session)
    middle = _line_of(lines, "iteration_finished", 1)
    _write(session, lines[:middle] + ["\n", "   \n"] + lines[middle:])
    before = [e for e in SessionReader(session).events() if isinstance(e, ev.IterationFinished)]
    proc = run_bilevel("resume", "--headless", "--iterations", "4", str(session), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = [e for e in SessionReader(session).events() if isinstance(e, ev.IterationFinished)]
    assert [e.iteration for e in after] == [e.iteration for e in before] + [4]  # nothing truncated
    assert [(e.iteration, e.decision) for e in after[:len(before)]] == [(e.iteration, e.decision) for e in before]


@pytest.mark.parametrize("damage, expected", [
    ("unreadable", "unreadable event"),
    ("deleted", "sequence gap: expected"),
    ("duplicated", "duplicate sequence number"),
])
def test_resume_refuses_a_damaged_log_says_where_and_how_to_recover_and_writes_nothing(
        finished_session, tmp_path, damage, expected):
    session = _copy(finished_session, tmp_path)
    _cut_before_finish(session)
    lines = _lines(session)
    at = _line_of(lines, "iteration_finished", 1)
    if damage == "unreadable":
        lines[at] = "\x00garbage{\n"
    elif damage == "deleted":
        del lines[at]
    else:
        lines.insert(at + 1, lines[at])
    _write(session, lines)
    before = (session / "events.jsonl").read_bytes()
    line_no = at + 1 if damage != "duplicated" else at + 2
    proc = run_bilevel("resume", "--headless", str(session), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"events.jsonl:{line_no}: {expected}" in proc.stderr
    assert "To recover" in proc.stderr and f"head -n {line_no - 1}" in proc.stderr
    assert (session / "events.jsonl").read_bytes() == before  # not a byte written

    replay = run_bilevel("replay", "--headless", str(session), cwd=tmp_path)
    assert replay.returncode == 0
    assert f"warning: {session / 'events.jsonl'}:{line_no}: {expected}" in replay.stderr
    assert "#3" in replay.stdout  # everything readable is still shown

    report = run_bilevel("report", "--no-plots", "--out", str(tmp_path / "report"), str(session), cwd=tmp_path)
    assert report.returncode == 2 and f"events.jsonl:{line_no}: {expected}" in report.stderr


def test_a_duplicated_line_is_not_counted_twice_by_a_tolerant_reader(finished_session, tmp_path):
    session = _copy(finished_session, tmp_path)
    lines = _lines(session)
    at = _line_of(lines, "iteration_finished", 2)
    _write(session, lines[:at + 1] + [lines[at]] + lines[at + 1:])
    reader = SessionReader(session)
    finished = [e for e in reader.events(tolerant=True) if isinstance(e, ev.IterationFinished)]
    assert [e.iteration for e in finished] == [0, 1, 2, 3]
    assert [p.line for p in reader.problems] == [at + 2]
    with pytest.raises(SessionError, match=rf"events.jsonl:{at + 2}: duplicate"):
        list(SessionReader(session).events())


def test_only_a_torn_last_line_is_repaired(tmp_path):
    writer = SessionWriter(tmp_path)
    writer.append(ev.GuidanceChanged(guidance="a"))
    writer.close()
    log = tmp_path / "events.jsonl"
    with open(log, "a") as fh:
        fh.write("\n\n" + '{"seq":2,"ts":1,"type":"guidance_changed","guidance":"b"}\n' + '{"seq":3,"ts":1,"ty')
    reader = SessionReader(tmp_path)
    assert [e.guidance for e in reader.events()] == ["a", "b"] and reader.torn_tail and not reader.problems
    assert SessionWriter(tmp_path).append(ev.GuidanceChanged(guidance="c")).seq == 3
    log.write_text('{"seq":1,"ts":0,"type":"paused"}\nnot json\n{"seq":2,"ts":0,"type":"paused"}\n')
    with pytest.raises(SessionError, match=r"events.jsonl:2: unreadable"):
        SessionWriter(tmp_path)  # a writer never appends after a hole
    assert "not json" in log.read_text()


def test_a_whole_last_event_that_lost_only_its_newline_is_kept(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"seq":1,"ts":0,"type":"paused"}\n{"seq":2,"ts":0,"type":"unpaused"}')
    assert [e.seq for e in SessionReader(tmp_path).events()] == [1, 2]
    assert SessionWriter(tmp_path).append(ev.Paused()).seq == 3
    assert [e.seq for e in SessionReader(tmp_path).events()] == [1, 2, 3]


def test_checker_fast_path_reports_what_the_full_parse_reports():
    lines = b"".join(b'{"seq":%d,"ts":1.0,"type":"paused"}\n' % i for i in (1, 2, 4, 4, 5))
    fast, slow = LogChecker("log"), LogChecker("log")
    fast.check_lines(lines + b"\n" + b"zz\n")
    for raw in (lines + b"\n" + b"zz\n").split(b"\n")[:-1]:
        slow.check(raw)
    assert [(p.line, p.message.split(":")[0]) for p in fast.problems] == \
           [(p.line, p.message.split(":")[0]) for p in slow.problems] == \
           [(3, "sequence gap"), (4, "duplicate sequence number 4 (the log already reached 4)"), (7, "unreadable event")]


async def test_app_replay_shows_the_same_warnings_and_says_empty_session(finished_session, tmp_path):
    from tui.sources import ReplaySource

    session = _copy(finished_session, tmp_path)
    lines = _lines(session)
    del lines[3]
    _write(session, lines)
    source = ReplaySource(session, follow=False)
    batches = source.batches()
    await batches.__anext__()
    assert any("events.jsonl:4: sequence gap" in d for d in source.diagnostics)
    await batches.aclose()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.jsonl").write_text("")
    source = ReplaySource(empty, follow=False)
    batches = source.batches()
    task = __import__("asyncio").ensure_future(batches.__anext__())
    await source.caught_up.wait()
    assert any("empty session" in d for d in source.diagnostics)
    task.cancel()


def test_replay_takes_the_log_path_and_says_empty_session(finished_session, tmp_path):
    proc = run_bilevel("replay", "--headless", str(finished_session / "events.jsonl"), cwd=tmp_path)
    assert proc.returncode == 0 and "run completed" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.jsonl").write_text("")
    proc = run_bilevel("replay", "--headless", str(empty), cwd=tmp_path)
    assert proc.returncode == 0 and "empty session" in proc.stderr


def test_replay_into_a_closed_pipe_exits_quietly(finished_session, tmp_path):
    cmd = (f"{sys.executable} -m core.cli replay --headless {finished_session} | head -n 1; "
           "echo rc=${PIPESTATUS[0]} >&2")
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert "rc=0" in proc.stderr


def test_llm_reply_nesting_and_surrogates_are_recorded_not_fatal():
    from core.services.llm import extract_json

    with pytest.raises(ValueError, match="nests brackets more than"):
        extract_json('{"a":' * 200_000 + "1" + "}" * 200_000)
    with pytest.raises(ValueError, match="nests brackets more than"):
        extract_json("{" * 200_000)
    assert extract_json('{"changes": {"PATTERN": "\ud800"}}') == {"changes": {"PATTERN": "\ud800"}}


def test_an_event_with_a_lone_surrogate_is_written_escaped_and_reads_back(tmp_path):
    writer = SessionWriter(tmp_path)
    writer.append(ev.ProposalRejected(iteration=1, attempt=1, kind="unparseable", reason="x", raw="a\ud800b"))
    rel = writer.artifact("llm/reply.txt", "a\ud800b")
    writer.close()
    (event,) = SessionReader(tmp_path).events()
    assert event.raw == "a\ud800b"
    assert (tmp_path / rel).read_text(encoding="utf-8") == "a\\ud800b"
    json.loads((tmp_path / "events.jsonl").read_text(encoding="utf-8"))  # valid UTF-8 JSON

"""Tests for core.services.trainer: real subprocesses running the fake scripts in fixtures/scripts."""
from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

import pytest

from core.services import trainer
from core.services.trainer import Progress, _LineSplitter, parse_metrics, parse_progress, run_training
from tests.support.patience import patience

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"


def _is_alive(pid: int) -> bool:
    """A zombie is dead: it only waits for init to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] not in "ZX"


def _pid_after(lines: list[tuple[str, str]], label: str) -> int:
    for _, line in lines:
        if line.startswith(label + " "):
            return int(line.split()[1])
    raise AssertionError(f"the script never printed {label!r}: {lines}")


async def _run(name: str, tmp_path: Path, **kwargs) -> trainer.TrainResult:
    kwargs.setdefault("budget_s", 20.0)
    kwargs.setdefault("grace_s", 5.0)
    return await run_training(SCRIPTS / name, cwd=tmp_path, **kwargs)


# ---------------------------------------------------------------- parse_progress

def test_parse_progress_reads_the_autoresearch_line():
    line = "step 00123 (45.2%) | loss: 3.456789 | lrm: 1.00 | dt: 123ms | tok/sec: 1,234,567 | mfu: 38.1% | epoch: 1 | remaining: 164s"
    assert parse_progress(line) == Progress(
        step=123, percent=45.2, loss=3.456789, tok_per_s=1234567.0, mfu=38.1, remaining_s=164.0
    )


def test_parse_progress_accepts_fields_in_any_order_and_missing_ones():
    progress = parse_progress("epoch 2 | remaining: 3m | loss=2.5 | step: 7")
    assert progress == Progress(step=7, percent=None, loss=2.5, tok_per_s=None, mfu=None, remaining_s=180.0)


def test_parse_progress_derives_percent_from_step_over_total():
    progress = parse_progress("step 50/200, train_loss 1.25e+00")
    assert progress is not None
    assert (progress.step, progress.percent, progress.loss) == (50, 25.0, 1.25)


def test_parse_progress_reads_a_nan_loss():
    progress = parse_progress("step 00002 (100.0%) | loss: nan | mfu: 1.0%")
    assert progress is not None and progress.loss is not None and math.isnan(progress.loss)


@pytest.mark.parametrize(
    "line",
    ["val_bpb: 0.997900", "---", "Traceback (most recent call last):", "", "loading data step by step",
     "val_loss: 3.2 | note: hi"],
)
def test_parse_progress_ignores_lines_that_are_not_progress(line):
    assert parse_progress(line) is None


def test_parse_progress_does_not_read_val_loss_as_training_loss():
    progress = parse_progress("step 5 | val_loss: 9.0")
    assert progress is not None and progress.loss is None


# ---------------------------------------------------------------- parse_metrics

def test_parse_metrics_reads_the_block_after_the_last_separator():
    text = "---\nval_bpb: 9.0\nstep 1 | loss: 2.0\n---\nval_bpb: 0.9979\nnum_steps: 953\npeak_vram_mb: 45,060.2\n"
    assert parse_metrics(text) == {"val_bpb": 0.9979, "num_steps": 953.0, "peak_vram_mb": 45060.2}


def test_parse_metrics_skips_lines_that_are_not_numbers():
    text = "--- \ndevice: cuda\nval_bpb: 1.5\nWarning: something: 3\nnot a metric line\n"
    assert parse_metrics(text) == {"val_bpb": 1.5}


def test_parse_metrics_needs_a_separator_line_exactly():
    assert parse_metrics("val_bpb: 1.0\n----\nval_bpb: 2.0\n") == {}


def test_parse_metrics_keeps_nan_values_as_nan():
    assert math.isnan(parse_metrics("---\nval_bpb: nan\n")["val_bpb"])


# ---------------------------------------------------------------- line splitting

def test_line_splitter_handles_cr_redraws_and_crlf_split_across_chunks():
    splitter = _LineSplitter()
    lines = splitter.feed(b"\rstep 1   \rstep 2\r")
    lines += splitter.feed(b"\nnext line\r\nlast")
    lines += splitter.close()
    assert lines == ["step 1", "step 2", "next line", "last"]


def test_line_splitter_cuts_endless_lines():
    splitter = _LineSplitter()
    lines = splitter.feed(b"y" * (trainer.MAX_LINE_BYTES + 10))
    assert [len(line) for line in lines] == [trainer.MAX_LINE_BYTES]
    assert splitter.close() == ["y" * 10]


# ---------------------------------------------------------------- run_training

async def test_successful_run_parses_progress_and_metrics(tmp_path):
    progress: list[Progress] = []
    lines: list[tuple[str, str]] = []
    result = await _run("ok_run.py", tmp_path, on_progress=progress.append,
                        on_line=lambda stream, line: lines.append((stream, line)))
    assert result.outcome == "ok", result.reason
    assert result.val_bpb == pytest.approx(0.9979)
    assert result.metrics == {
        "val_bpb": 0.9979, "training_seconds": 300.1, "peak_vram_mb": 45060.2, "mfu_percent": 39.8,
        "total_tokens_M": 499.6, "num_steps": 953.0, "num_params_M": 50.3,
    }
    assert result.exit_code == 0 and result.error_tail == ""
    assert [p.step for p in progress] == [0, 1, 2, 3]
    assert progress[1] == Progress(step=1, percent=33.3, loss=3.0, tok_per_s=1234567.0, mfu=38.1, remaining_s=29.0)
    assert ("stderr", "warning: something harmless") in lines
    assert ("stdout", "bytes that are not utf-8: \ufffd\ufffd") in lines
    assert ("stdout", "x" * 200_000) in lines


async def test_crash_reports_exit_code_and_stderr_tail_and_no_number(tmp_path):
    result = await _run("crash.py", tmp_path)
    assert result.outcome == "crash"
    assert result.val_bpb is None
    assert result.exit_code == 1
    assert result.error_tail.splitlines()[-1] == "RuntimeError: boom: shapes do not match"
    assert "Traceback (most recent call last):" in result.error_tail
    assert "noise line" not in result.error_tail  # stdout is only the fallback
    assert result.reason == "exit code 1: RuntimeError: boom: shapes do not match"


async def test_hanging_run_is_killed_at_the_deadline(tmp_path):
    started = time.monotonic()
    result = await _run("hang.py", tmp_path, budget_s=1.0, grace_s=1.0)
    elapsed = time.monotonic() - started
    assert result.outcome == "timeout"
    assert result.val_bpb is None
    assert elapsed >= 2.0  # not before budget + grace; how soon after is bench/bench_deadlines.py's
    assert result.reason.startswith("killed after 2.0 s deadline")
    assert result.error_tail == "started"


async def test_deadline_kills_the_scripts_children_too(tmp_path):
    lines: list[tuple[str, str]] = []
    result = await _run("hang_with_child.py", tmp_path, budget_s=1.0, grace_s=1.0,
                        on_line=lambda stream, line: lines.append((stream, line)))
    assert result.outcome == "timeout"
    script_pid, child_pid = _pid_after(lines, "script"), _pid_after(lines, "child")
    assert not _is_alive(script_pid)
    assert not _is_alive(child_pid)


async def test_script_ignoring_sigterm_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "TERM_GRACE_S", 0.5)
    lines: list[tuple[str, str]] = []
    result = await _run("ignores_sigterm.py", tmp_path, budget_s=0.5, grace_s=0.5,
                        on_line=lambda stream, line: lines.append((stream, line)))
    assert result.outcome == "timeout"
    assert result.exit_code == -9
    assert not _is_alive(_pid_after(lines, "script"))


async def test_children_left_behind_by_a_finished_run_are_killed(tmp_path):
    lines: list[tuple[str, str]] = []
    # The child holds stdout open and never ends by itself: a run that waited for stdout to close
    # would never return (the patience turns that hang into a failure), and a dead child was killed.
    result = await asyncio.wait_for(
        _run("leaves_child.py", tmp_path, on_line=lambda stream, line: lines.append((stream, line))), patience(10))
    assert result.outcome == "ok" and result.val_bpb == 1.25
    assert not _is_alive(_pid_after(lines, "child"))


async def test_run_without_metrics_block_is_no_metrics(tmp_path):
    result = await _run("no_metrics.py", tmp_path)
    assert result.outcome == "no_metrics"
    assert result.val_bpb is None
    assert result.exit_code == 0
    assert result.error_tail.splitlines()[-1] == "done"  # stdout, since stderr is empty


async def test_nan_run_is_diverged_not_a_number(tmp_path):
    result = await _run("nan_loss.py", tmp_path)
    assert result.outcome == "diverged"
    assert result.val_bpb is None
    assert math.isnan(result.metrics["val_bpb"])
    assert "diverged" in result.reason


async def test_nonzero_exit_after_nan_loss_is_diverged(tmp_path):
    result = await _run("nan_then_crash.py", tmp_path)
    assert result.outcome == "diverged"
    assert result.exit_code == 1
    assert result.val_bpb is None
    assert "nan" in result.reason


async def test_autoresearch_fast_fail_is_diverged(tmp_path):
    result = await _run("fast_fail.py", tmp_path)
    assert result.outcome == "diverged", result.reason
    assert result.exit_code == 1
    assert result.error_tail.endswith("FAIL")


async def test_out_of_memory_is_oom(tmp_path):
    result = await _run("oom.py", tmp_path)
    assert result.outcome == "oom"
    assert result.val_bpb is None
    assert "CUDA out of memory" in result.reason
    assert "OutOfMemoryError" in result.error_tail


async def test_cancel_event_stops_the_run(tmp_path):
    cancel = asyncio.Event()

    def on_line(stream: str, line: str) -> None:
        if line == "started":
            cancel.set()

    result = await _run("hang.py", tmp_path, on_line=on_line, cancel=cancel)
    assert result.outcome == "cancelled"  # not TIMEOUT at the 20 s budget; how soon: bench/bench_deadlines.py
    assert result.val_bpb is None


async def test_cancel_set_beforehand_starts_nothing(tmp_path):
    cancel = asyncio.Event()
    cancel.set()
    result = await _run("env_echo.py", tmp_path, cancel=cancel, env={"FAKE_VAL_BPB": "1"})
    assert result.outcome == "cancelled"
    assert not (tmp_path / "ran_here.txt").exists()


async def test_cancelling_the_task_kills_the_group(tmp_path):
    lines: list[tuple[str, str]] = []
    seen_script = asyncio.Event()

    def on_line(stream: str, line: str) -> None:
        lines.append((stream, line))
        if line.startswith("script "):
            seen_script.set()

    task = asyncio.ensure_future(_run("hang_with_child.py", tmp_path, on_line=on_line))
    await asyncio.wait_for(seen_script.wait(), patience(10))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pids = [_pid_after(lines, "script"), _pid_after(lines, "child")]
    deadline = time.monotonic() + patience(2.0)  # SIGKILL is asynchronous
    while any(_is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not any(_is_alive(pid) for pid in pids)


async def test_failing_callback_stops_the_run_and_propagates(tmp_path):
    def explode(progress: Progress) -> None:
        raise ValueError("ui bug")

    with pytest.raises(ValueError, match="ui bug"):
        await _run("ok_run.py", tmp_path, on_progress=explode)


async def test_log_file_gets_every_line_with_stderr_marked(tmp_path):
    log_path = tmp_path / "logs" / "run.log"
    result = await _run("crash.py", tmp_path, log_path=log_path)
    assert result.outcome == "crash"
    log = log_path.read_text().splitlines()
    assert log[0] == "step 00001 (1.0%) | loss: 3.500000"
    assert "noise line 39" in log
    assert "[stderr] RuntimeError: boom: shapes do not match" in log
    assert "[stderr] Traceback (most recent call last):" in log


async def test_environment_is_inherited_overlaid_and_unbuffered_in_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_FAKE_INHERITED", "7")  # allow-listed (core/services/environment.py)
    monkeypatch.setenv("PYTHONUNBUFFERED", "0")
    result = await _run("env_echo.py", tmp_path, env={"FAKE_VAL_BPB": "1.5"})
    assert result.outcome == "ok", result.reason
    assert result.metrics == {"val_bpb": 1.5, "unbuffered": 1.0, "inherited": 7.0}
    assert (tmp_path / "ran_here.txt").read_text() == str(tmp_path)


async def test_missing_interpreter_is_a_crash_not_an_exception(tmp_path):
    result = await _run("ok_run.py", tmp_path, python=str(tmp_path / "no-such-python"))
    assert result.outcome == "crash"
    assert result.exit_code is None and result.val_bpb is None
    assert "could not start" in result.reason

"""Driving a run from the command line: headless runs and studies under Ctrl-C, detached engines.

The CLI parses flags and builds the run; this module runs it to its end. Ctrl-C or SIGTERM
asks for a clean stop (an event, never a kill), so an interrupted session stays resumable.
Exit codes are a contract: 0 done, 1 the run failed, 2 bad usage or configuration,
3 stopped before its iterations were done (``bilevel resume`` continues it), 74 the session
folder stopped taking writes mid-run (a full disk, a read-only folder, no permission, a spent
quota: EX_IOERR), 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from core.record import layout
from core.record.config import Config

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STORAGE = 74  # sysexits' EX_IOERR: the session folder stopped taking writes mid-run


def run_exit_code(state: Any, iterations: int) -> int:
    """How a run that was not interrupted ended: done, stopped with iterations left (resumable), or failed."""
    if state.status == "completed" or (state.status == "stopped" and state.next_iteration > iterations):
        return EXIT_OK
    return EXIT_UNFINISHED if state.status == "stopped" else EXIT_RUN_ERROR


def err(msg: str) -> None:
    print(f"bilevel: {msg}", file=sys.stderr)


def run_until_done(work: Callable[[], Awaitable[Any]], stop: Callable[[str], None]) -> tuple[Any, bool]:
    """Run ``work()`` on a fresh loop; Ctrl-C or SIGTERM calls ``stop`` (a clean stop, never a kill).

    Returns the result and whether the user interrupted it.
    """
    interrupted = False

    async def main_task() -> Any:
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            nonlocal interrupted
            interrupted = True
            stop("interrupted by the user (Ctrl-C)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        return await work()

    result = asyncio.run(main_task())
    return result, interrupted


def begin(engine: Any) -> None:
    """SessionStarted, durable before anything slow: the folder can be resumed from now on."""
    from core.levels.context import FatalRunError
    from core.record.session import StorageFault, storage_fault

    try:
        engine.begin_session()
    except FatalRunError:
        pass  # run() reports it as a failed run
    except (StorageFault, OSError) as exc:  # a storage fault: run() tries again and reports it
        if storage_fault(exc) is None:
            raise


def storage_exit(engine: Any) -> int | None:
    """EXIT_STORAGE with its one line when the run ended on a storage fault, else None."""
    fault = getattr(engine, "storage_fault", None)
    if fault is None:
        return None
    err(f"{fault}; the run stopped and its log is intact up to the last event written: "
        f"free space or fix the folder, then continue with: bilevel resume {engine.dir}")
    return EXIT_STORAGE


def drive(engine: Any, work: Callable[[], Awaitable[Any]] | None = None) -> int:
    """Run one engine headless (``work``: instead of its run, e.g. its audit), one printed line per event;
    the exit code says how it ended."""
    from core.analysis.printer import HeadlessPrinter

    engine.subscribe(HeadlessPrinter())
    begin(engine)
    state, interrupted = run_until_done(work or engine.run, lambda why: engine.request_stop(why, hard=True))
    stored = storage_exit(engine)
    if stored is not None:
        return stored
    if interrupted:
        return EXIT_INTERRUPTED
    return run_exit_code(state, engine.cfg.budget.iterations)


# --- studies -----------------------------------------------------------------------------------


class Prefixed:
    """A stream that prefixes each line (concurrent study members share one terminal)."""

    def __init__(self, out: Any, prefix: str) -> None:
        self.out, self.prefix = out, prefix

    def write(self, text: str) -> int:
        self.out.write("".join(self.prefix + line for line in text.splitlines(keepends=True)))
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def drive_study(study: Any, overrides: dict[str, Any] | None = None) -> int:
    """Run (or continue) a study's members headless, then write and print its report."""
    from core.analysis.printer import HeadlessPrinter
    from core.run.study import StudyRunner

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    runner = StudyRunner(study, overrides=overrides, log=log)
    concurrent = runner.pool().size > 1

    def on_engine(engine: Any, member: Any) -> None:
        print(f"session: {engine.dir} (group {member.group}, repeat {member.repeat}, seed {member.seed})",
              file=sys.stderr)
        engine.subscribe(HeadlessPrinter(Prefixed(sys.stdout, f"[{member.session}] ") if concurrent else None))

    runner.on_engine = on_engine
    outcomes, interrupted = run_until_done(runner.run, runner.request_stop)
    if interrupted:
        err(f"study stopped; continue it with: bilevel resume {study.dir}")
        return EXIT_INTERRUPTED
    for o in runner.failed:
        err(f"{o.member.session} failed: {o.reason}; fix it and continue with: bilevel resume {study.dir}")
    unfinished = [o.member.session for o in outcomes if o.status != "completed"]
    if unfinished and not runner.failed:
        err(f"unfinished: {', '.join(unfinished)}; continue with: bilevel resume {study.dir}")
    write_study_report(study)
    return EXIT_RUN_ERROR if runner.failed or unfinished else EXIT_OK


def write_study_report(study: Any) -> None:
    from core.analysis.report import ReportError, build_report, collect, render_terminal, write_report

    try:
        report = build_report(collect([study.dir]))
        written = write_report(report, layout.report_dir(study.dir))
    except ReportError as exc:
        err(f"no report: {exc}")
        return
    print(render_terminal(report))
    print(f"report: {written.markdown}" + (f" ({written.figure_note})" if written.figure_note else ""),
          file=sys.stderr)


# --- detached engines --------------------------------------------------------------------------


def toml_literal(value: Any) -> str:
    """A value as TOML for ``--set`` (what parse_override reads back)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def detach(cfg: Config, *, config: str | None, demo: bool, group: str | None, overrides: dict[str, Any]) -> int:
    """Start the engine headless in its own session and process group; print the session folder."""
    from core.record.session import new_session_dir

    session = new_session_dir(cfg.sessions_path(), cfg.name).resolve()
    child = ["run", "--headless", "--into", str(session)]
    child += ["--demo"] if demo else [str(Path(config).resolve())]
    if group:
        child += ["--group", group]
    for key, value in overrides.items():
        child += ["--set", f"{key}={toml_literal(value)}"]
    try:
        pid = start_engine_process(session, child).pid
    except OSError as exc:
        err(f"could not start the engine: {exc}")
        return EXIT_RUN_ERROR
    print(session)
    print(f"engine running as pid {pid} (output: {layout.engine_log_path(session)}); "
          f"watch it with: bilevel attach {session}", file=sys.stderr)
    return EXIT_OK


def start_engine_process(session: Path, cli_args: list[str]) -> Any:
    """``python -m core.cli CLI_ARGS`` in its own session and process group, detached from this terminal.

    Its output goes to the session's engine log and its pid into the session's pid file (viewers
    read it to tell whether an engine still runs the session). Returns the ``subprocess.Popen``;
    OSError if it could not be started.
    """
    import os
    import subprocess

    command = [sys.executable, "-m", "core.cli", *cli_args]
    with open(layout.engine_log_path(session), "ab") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=os.getcwd())
    layout.write_atomic(layout.engine_pid_path(session), f"{proc.pid}\n")
    return proc


class BackgroundStartError(RuntimeError):
    """The background engine did not take the session; the message says why (its log's last lines)."""


def resume_in_background(session: Path, *, wait_s: float = 120.0, poll_s: float = 0.1) -> int:
    """Continue a stopped session in a detached headless engine (``bilevel resume --headless``); its pid.

    Returns once that engine has written its ``run_resumed`` event, so a caller that exits then
    leaves a running engine behind, not the promise of one. Raises BackgroundStartError when the
    child exits first or has not resumed within ``wait_s``; the session stays resumable either
    way (only the child writes to it).
    """
    import subprocess
    import time

    from core.record import events as ev

    session = Path(session).resolve()
    log = layout.events_path(session)
    start = log.stat().st_size if log.exists() else 0
    try:
        proc = start_engine_process(session, ["resume", "--headless", str(session)])
    except OSError as exc:
        raise BackgroundStartError(f"could not start `bilevel resume`: {exc}") from exc
    deadline = time.monotonic() + wait_s
    while True:
        with open(log, "rb") as fh:
            fh.seek(start)
            written = fh.read()
        for line in written[:written.rfind(b"\n") + 1].splitlines():
            try:
                event = ev.decode(line)
            except Exception:  # noqa: BLE001 - a line that is not an event is not the child's resume
                continue
            if isinstance(event, ev.RunResumed) and event.pid == proc.pid:
                return proc.pid
        status = proc.poll()
        if status is not None or time.monotonic() > deadline:
            if status is None:  # half-way up: a clean stop (SIGTERM), so the session stays resumable
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            why = f"exited with status {status}" if status is not None else f"did not resume within {wait_s:.0f} s"
            raise BackgroundStartError(f"the background engine (pid {proc.pid}) {why}; {_log_tail(session)}")
        time.sleep(poll_s)


def _log_tail(session: Path, lines: int = 3) -> str:
    path = layout.engine_log_path(session)
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"no output in {path}"
    return f"its last output ({path}): " + " / ".join(tail) if tail else f"no output in {path}"

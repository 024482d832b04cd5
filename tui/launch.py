"""Entry points the command line calls: the app over a live engine, an attached session, a replay.

Imported lazily by :mod:`core.cli`, so ``--headless`` never imports Textual. The live
engine runs beside the app in one event loop and outlives it: when the app closes
(quit, SIGTERM, a dropped SSH connection) the engine is stopped cleanly and awaited, so
the session stays resumable. Detach (when the caller hands a ``background`` starter) stops it
the same way and leaves a detached engine continuing the session.
"""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .app import BilevelApp
from .sources import LiveSource, ReplaySource, TailSource


class LiveEnd(NamedTuple):
    state: Any  # the in-process engine's final state
    background_pid: int | None  # the detached engine that continues the session (Detach), if any


async def run_live_async(engine: Any, *, config_path: Path | None = None,
                         background: Callable[[Path], int] | None = None) -> LiveEnd:
    """Run ``engine`` with the app on top; ``background`` continues a stopped session detached (Detach)."""
    source = LiveSource(engine)
    engine.log = source.log  # diagnostics into the event log, not onto the screen
    task = asyncio.create_task(engine.run())
    source.engine_task = task
    app = BilevelApp(source, config_path=config_path, background=background)
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        engine.request_stop(f"{signame} received", hard=True)
        app.exit(0)

    installed = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - non-Unix
            pass
    try:
        await app.run_async()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if not task.done():
            engine.request_stop("the app was closed", hard=True)
    return LiveEnd(await task, app.background_pid)


def run_live(engine: Any, *, config_path: Path | None = None,
             background: Callable[[Path], int] | None = None) -> LiveEnd:
    return asyncio.run(run_live_async(engine, config_path=config_path, background=background))


def run_attach(session_dir: Path) -> int:
    """Follow a session another process writes; quitting never stops that engine."""
    app = BilevelApp(TailSource(session_dir))
    return app.run() or 0


def run_replay(session_dir: Path, *, speed: float = float("inf"), follow: bool = True) -> int:
    app = BilevelApp(ReplaySource(session_dir, speed=speed, follow=follow))
    return app.run() or 0

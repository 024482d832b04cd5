"""Entry points the command line calls: the app over a live engine, an attached session, a replay.

Imported lazily by :mod:`core.cli`, so ``--headless`` never imports Textual. The live
engine runs beside the app in one event loop and outlives it: when the app closes
(quit, SIGTERM, a dropped SSH connection) the engine is stopped cleanly and awaited, so
the session stays resumable.
"""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from .app import BilevelApp
from .sources import LiveSource, ReplaySource, TailSource


async def run_live_async(engine: Any, *, config_path: Path | None = None) -> Any:
    """Run ``engine`` with the app on top; returns the engine's final state."""
    source = LiveSource(engine)
    engine.log = source.log  # diagnostics into the event log, not onto the screen
    task = asyncio.create_task(engine.run())
    source.engine_task = task
    app = BilevelApp(source, config_path=config_path)
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
    return await task


def run_live(engine: Any, *, config_path: Path | None = None) -> Any:
    return asyncio.run(run_live_async(engine, config_path=config_path))


def run_attach(session_dir: Path) -> int:
    """Follow a session another process writes; quitting never stops that engine."""
    app = BilevelApp(TailSource(session_dir))
    return app.run() or 0


def run_replay(session_dir: Path, *, speed: float = float("inf"), follow: bool = True) -> int:
    app = BilevelApp(ReplaySource(session_dir, speed=speed, follow=follow))
    return app.run() or 0

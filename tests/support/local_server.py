"""Start a real local OpenAI-compatible server (llama.cpp's llama-server, llama-cpp-python's) for a test.

`serve` runs the command, waits until ``GET /models`` answers with the key, and stops the
process afterwards; a server that exits or never answers fails the test with the end of its log.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

START_LIMIT_S = 120.0  # a cold start on a loaded 2-core box, with the model written just before


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    log: Path

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(command: Callable[[int], list[str]], log: Path, *, key: str, name: str) -> Iterator[LocalServer]:
    """`command(port)` listening on 127.0.0.1:port; yields once its model list answers."""
    port = free_port()
    server = LocalServer(f"http://127.0.0.1:{port}/v1", log)
    with log.open("w") as out:
        process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(process, server, key, name)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(process: subprocess.Popen, server: LocalServer, key: str, name: str) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {START_LIMIT_S:g} s: {server.log_tail()}")
        time.sleep(0.2)

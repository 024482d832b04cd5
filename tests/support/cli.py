"""Running `bilevel` as a user does (a real subprocess), on configs of the fast stand-in script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.patience import patience

ROOT = Path(__file__).resolve().parents[2]
QUADRATIC = ROOT / "tests" / "fixtures" / "scripts" / "quadratic_train.py"


def _env(extra: dict | None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}


def start_bilevel(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`bilevel ARGS` in the background, output captured as text."""
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(env))


def run_bilevel(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`bilevel ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(env), timeout=patience(timeout))


def write_fast_config(folder: Path, *, name: str = "t", iterations: int = 3, script: Path = QUADRATIC,
                      gpus: str = "cpu", search_extra: str = "") -> Path:
    """An offline experiment TOML on the fast stand-in script, sessions under ``folder``."""
    cfg = folder / "exp.toml"
    cfg.write_text(f"""
name = "{name}"
[endpoint]
provider = "offline"
[script]
path = "{script}"
[data]
source = "none"
[budget]
time_s = 1
grace_s = 30
iterations = {iterations}
stuck_after = 0
[search]
locked = ["DEPTH"]
{search_extra}
[run]
sessions_dir = "{folder / 'sessions'}"
gpus = "{gpus}"
""")
    return cfg

"""The kill-and-resume bench at 10 kill points: the same checks as bench/bench_kill_resume.py at 200."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cli import ROOT


@pytest.mark.slow
def test_ten_sigkills_at_random_points_lose_nothing_double_nothing_and_leave_no_process():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_kill_resume.py"), "--kills", "10",
                           "--sessions", "2", "--seed", "7"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "violations: 0" in proc.stdout and "tagged processes alive at the end: 0" in proc.stdout

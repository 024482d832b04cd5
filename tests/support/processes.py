"""Whether a process is alive, as the tests and benches that kill process trees need to know."""
from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Running or sleeping: a zombie (Z) or a dead task (X) only waits to be reaped, so it counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"

"""What the Ray tests share: a quiet ray.init, workers that import this checkout, a Ray run config."""
from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import fast_config

ROOT = Path(__file__).resolve().parents[2]
PINNED = ROOT / "tests" / "fixtures" / "scripts" / "gpu_pinned.py"
QUIET: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": "warning"}


@contextmanager
def one_ray_cluster_at_a_time() -> Iterator[None]:
    """Test processes (pytest-xdist workers) take turns: two local clusters at once on a 2-core box
    would each start slower than a test allows itself."""
    with open(Path(tempfile.gettempdir()) / "bilevel-ray-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def workers_import_this_checkout() -> Iterator[None]:
    """Ray's workers inherit the driver's environment at cluster start: put this checkout on their path."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def ray_config(tmp_path: Path, **overrides: Any):
    return fast_config(tmp_path, **{"run.executor": "ray", "run.worker": "fresh", **overrides})

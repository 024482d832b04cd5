"""A prepared dataset's folder: where datasets live, when one is ready, and how it is written
(built in a hidden staging folder, renamed into place whole, one preparation per name at a time).

Both preparations share it: :mod:`baseline.prepare` (stdlib or a folder of text) and
:mod:`baseline.climbmix` (the reference shards), so neither has to import the other's helpers.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

FORMAT = "bilevel-dataset"
FORMAT_VERSION = 1

Log = Callable[[str], None]


class PrepareError(Exception):
    """A problem with the source or the settings that the user can fix."""


def data_root() -> Path:
    """Where datasets live: $BILEVEL_DATA_ROOT, else the user cache folder's ``data``
    (platformdirs: $XDG_CACHE_HOME/bilevel or ~/.cache/bilevel on Linux; train.py's default agrees)."""
    env = os.environ.get("BILEVEL_DATA_ROOT")
    return Path(env).expanduser() if env else platformdirs.user_cache_path("bilevel") / "data"


def data_ready(data_dir: Path) -> bool:
    """True when ``data_dir`` holds a complete dataset whose files match its meta.json."""
    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            return False
        if not (data_dir / "tokenizer.json").is_file():
            return False
        for split in ("train", "val"):
            size = (data_dir / f"{split}.bin").stat().st_size
            if size != 2 * int(meta["tokens"][split]):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def read_meta(data_dir: Path) -> dict[str, object]:
    try:
        return json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A hidden folder next to ``target`` that replaces it only if the block completes."""
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(stage, 0o755)  # mkdtemp makes it private; the dataset is ordinary data
    try:
        yield stage
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        replacing = target.exists()
        if replacing:
            os.rename(target, old)
        try:
            os.rename(stage, target)
        except OSError:
            if replacing:
                os.rename(old, target)  # put the previous dataset back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def exclusive(root: Path, name: str) -> Iterator[None]:
    """Serialise preparations of one dataset; clears leftovers of killed ones."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, no cleanup
        yield
        return
    with open(root / f".{name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            # Holding the lock, no one else is building this name: staging folders left
            # by a killed process are garbage.
            for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
                for stale in root.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

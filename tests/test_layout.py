"""The session layout: one artifact reader that keeps to its session, one atomic writer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import layout
from core.record.layout import ArtifactPathError
from core.record.session import SessionWriter
from tests.conftest import fast_config
from tests.support.queue_source import QueueSource


@pytest.fixture
def session(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    writer = SessionWriter(path)
    writer.artifact("baseline/train.py", "LR = 0.1\n")
    writer.close()
    (tmp_path / "secret.txt").write_text("not yours")
    return path


@pytest.mark.parametrize("relpath", ["../secret.txt", "artifacts/../../secret.txt", "artifacts/../../s/../secret.txt"])
def test_the_artifact_reader_refuses_parent_paths(session: Path, relpath: str):
    with pytest.raises(ArtifactPathError, match="outside the session"):
        layout.read_artifact(session, relpath)


def test_the_artifact_reader_refuses_absolute_paths(session: Path):
    with pytest.raises(ArtifactPathError):
        layout.read_artifact(session, str(session.parent / "secret.txt"))
    with pytest.raises(ArtifactPathError):
        layout.read_artifact(session, "/etc/passwd")


def test_the_artifact_reader_refuses_a_symlink_out_of_the_session(session: Path):
    os.symlink(session.parent / "secret.txt", session / "artifacts" / "link.txt")
    with pytest.raises(ArtifactPathError):
        layout.read_artifact(session, "artifacts/link.txt")


def test_the_artifact_reader_reads_what_the_writer_wrote(session: Path):
    assert layout.read_artifact(session, "artifacts/baseline/train.py") == "LR = 0.1\n"


def test_the_engine_and_the_app_read_artifacts_through_the_one_reader(tmp_path: Path, session: Path):
    engine = Engine(fast_config(tmp_path), session)
    try:
        with pytest.raises(ArtifactPathError):
            engine.read_artifact("../secret.txt")
        assert engine.read_artifact("artifacts/baseline/train.py") == "LR = 0.1\n"
    finally:
        engine.writer.close()
    source = QueueSource(session)
    assert source.read_artifact("../secret.txt") is None
    assert source.read_artifact(str(session.parent / "secret.txt")) is None
    assert source.read_artifact("artifacts/baseline/train.py") == "LR = 0.1\n"


def test_an_artifact_name_cannot_escape_on_write(session: Path):
    writer = SessionWriter(session)
    try:
        with pytest.raises(ArtifactPathError):
            writer.artifact("../../escaped.txt", "x")
    finally:
        writer.close()
    assert not (session.parent / "escaped.txt").exists()


def test_the_atomic_writer_leaves_no_temp_file_and_replaces_whole(tmp_path: Path):
    target = tmp_path / "deep" / "file.json"
    layout.write_atomic(target, "one")
    layout.write_atomic(target, b"two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


def test_iteration_artifacts_are_named_by_the_layout():
    assert layout.train_script_name(0) == "baseline/train.py" == layout.baseline_script_name()
    assert layout.train_script_name(7) == "iterations/0007/train.py"
    assert layout.train_log_name(7, seed=3) == "iterations/0007/train.seed3.log"
    assert layout.artifact_rel(layout.diff_name(7)) == "artifacts/iterations/0007/diff.patch"

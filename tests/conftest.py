"""Shared fixtures: a fast contract-honouring training script, configs, and engine runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.record import config
from core.record import events as ev
from core.engine.engine import Engine
from tests.support import Reply, ScriptedOpenAI, scripted_openai  # noqa: F401 (fixture)

FIXTURES = Path(__file__).parent / "fixtures"
QUADRATIC = FIXTURES / "scripts" / "quadratic_train.py"


def fast_config(tmp_path: Path, **overrides: Any) -> config.Config:
    """Offline, the fast stand-in script, no data preparation."""
    data: dict[str, Any] = {
        "name": "t",
        "endpoint": {"provider": "offline"},
        "script": {"path": str(QUADRATIC)},
        "data": {"source": "none"},
        "budget": {"time_s": 1.0, "grace_s": 30.0, "iterations": 3},
        "search": {"locked": ["DEPTH"]},
        "run": {"sessions_dir": str(tmp_path / "sessions"), "gpus": "cpu"},
    }
    return config.from_dict(config.apply_overrides(data, overrides))


def llm_config(tmp_path: Path, server: ScriptedOpenAI, **overrides: Any) -> config.Config:
    return fast_config(tmp_path, **{"endpoint.provider": "openai", "endpoint.base_url": server.base_url,
                                    "endpoint.model": "test-model", "endpoint.max_retries": 1,
                                    "endpoint.timeout_s": 20.0, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, e: ev.Event) -> None:
        self.events.append(e)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


async def run_engine(cfg: config.Config, **kw: Any) -> tuple[Engine, Recorder]:
    engine = Engine.create(cfg, **kw)
    rec = Recorder()
    engine.subscribe(rec)
    await engine.run()
    return engine, rec


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session", autouse=True)
def isolated_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets go to a per-test-session folder, never the user's cache."""
    import os

    root = tmp_path_factory.mktemp("data-root")
    old = os.environ.get("BILEVEL_DATA_ROOT")
    os.environ["BILEVEL_DATA_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("BILEVEL_DATA_ROOT", None)
    else:
        os.environ["BILEVEL_DATA_ROOT"] = old


@pytest.fixture(scope="session", autouse=True)
def isolated_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mechanism ledger goes to a per-test-session file, never the user's data folder."""
    import os

    path = tmp_path_factory.mktemp("ledger") / "mechanisms.sqlite"
    old = os.environ.get("BILEVEL_LEDGER")
    os.environ["BILEVEL_LEDGER"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BILEVEL_LEDGER", None)
    else:
        os.environ["BILEVEL_LEDGER"] = old

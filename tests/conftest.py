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
        # no stuck-loop pause (as in the demo): a long test run is never held; tests of the rule set it
        "budget": {"time_s": 1.0, "grace_s": 30.0, "iterations": 3, "stuck_after": 0},
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


# The fast lane (`pytest -m "not slow"`, README) leaves out what pays one of these costs; the full
# suite runs everything. Whole files are marked here, beside the cost that puts them in the full lane
# only, so a test added to one of them lands in its lane without a marker of its own; a slow test in
# a fast file carries `@pytest.mark.slow`. The times are bench/RESULTS.md's ("Test lanes").
SLOW_FILES = {
    # training in subprocesses (the tiny GPT, real train.py runs) and the CLI end to end
    "test_cli_runs.py": "the demo and runs of the CLI that train",
    "test_climbmix.py": "data preparation and training on a real corpus layout",
    "test_kill_resume.py": "an engine killed at random points and resumed, in subprocesses",
    "test_script_folder.py": "a public script folder trained through the CLI",
    "test_warm_worker.py": "warm training workers running train.py",
    "test_workload.py": "the tokenizer, the data and train.py as real processes",
    "test_noise.py": "bilevel noise: the baseline trained again and again",
    "test_log_integrity.py": "engines in subprocesses, killed and read back",
    "test_engine_processes.py": "the engine's own processes: detach, signals, exit codes",
    "test_classical_study.py": "whole studies through the CLI",
    "test_study.py": "whole studies",
    "test_script_doctor.py": "the doctor through the CLI on real scripts",
    "test_tui_attach.py": "the app attached to an engine in another process",
    "test_tui_detach.py": "a detached engine outliving the app",
    "test_parallel_trials.py": "trials on several slots at once",
    "test_code_scope_runs.py": "code scope's hostile edits through the engine, each run walled and scored apart",
    # clusters and servers
    "test_ray_executor.py": "a Ray cluster",
    "test_ray_node_loss.py": "a Ray cluster that loses a node",
    "test_llama_server.py": "llama-server with tiny models",
    "test_real_llm.py": "llama-cpp-python's server",
    "test_real_models.py": "llama-server with SmolLM2-135M: a real model at every level",
    "test_build_llama_server.py": "CMake configure, build and install of a packed project",
    # measured (bench/RESULTS.md, "Test lanes, re-split by measured time"): files whose every test costs seconds
    "test_research.py": "research sessions: generated mechanisms validated and run in sandbox workers, hooks timed out",
    "test_tui_snapshots.py": "SVG snapshots of the app over recorded sessions, at two or three sizes each",
    "test_tui_app.py": "the app driven by keys over live engine runs and replays",
    "test_tui_run_end.py": "the app over live engine runs to their end: approvals, stop, quit",
    "test_doctor.py": "bilevel doctor: each run imports torch in a subprocess and starts a sandbox worker",
    "test_hostile_mechanisms.py": "hostile mechanisms in sandbox workers, each one stopped and its traces checked",
    "test_prescreen.py": "the pre-screen's paired searches on the surrogate, with and without a mechanism",
    "test_evidence.py": "keep-chain audits of whole runs, bilevel audit killed and resumed",
    "test_tui_slots.py": "the app over live parallel runs on several slots, trials aborted",
    "test_research_duplicates.py": "research sessions whose generated mechanisms are validated in sandbox workers",
}

# A module fixture that pays one of the costs above puts every test of its file that uses it in the full lane.
SLOW_FIXTURES = {
    ("test_report.py", "study"): "a study through the CLI: bilevel noise, then two groups twice",
    ("test_report_figures.py", "study"): "a study through the CLI: two groups twice, 12 iterations each",
    ("test_plugins.py", "plugin_path"): "a plugin distribution built and pip-installed, then the CLI run with it",
}


def pytest_configure(config: pytest.Config) -> None:
    """Say which lane runs (tests/support/lanes.py): the fast lane's property tests draw fewer examples."""
    import os

    from tests.support.lanes import LANE_VARIABLE

    fast = "not slow" in " ".join((config.option.markexpr or "").split())
    os.environ[LANE_VARIABLE] = "fast" if fast else "full"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        why = SLOW_FILES.get(item.path.name) or next(
            (why for name in getattr(item, "fixturenames", ()) if (why := SLOW_FIXTURES.get((item.path.name, name)))), None)
        if why is not None:
            item.add_marker(pytest.mark.slow(reason=why))


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

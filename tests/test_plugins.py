"""A third party's proposer, mechanism and executor, installed as a package, run a study as ours do.

The plugin is a real distribution built from a pyproject on disk and pip-installed (offline,
into a target folder that only the study's subprocess sees); its entry points are all the
product learns of it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.record import config, events as ev, registry
from core.record.session import SessionReader
from tests.support.cli import ROOT, run_bilevel
from tests.support.patience import patience

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "bilevel-grid-plugin"
version = "0.3.0"

[project.entry-points."bilevel.proposers"]
grid = "bilevel_grid_plugin:Grid"

[project.entry-points."bilevel.mechanisms"]
marker = "bilevel_grid_plugin:Marker"

[project.entry-points."bilevel.executors"]
counting = "bilevel_grid_plugin:Counting.from_run_config"

[tool.setuptools]
py-modules = ["bilevel_grid_plugin"]
"""

PLUGIN_MODULE = '''
"""A grid-walking Level 1 proposer, a mechanism that only observes, and an executor that counts its runs."""
from core.services.executors import LocalExecutor
from mechanisms.base import Mechanism


class Grid:
    source = "grid"

    def __init__(self, seed):
        self.seed = seed

    def propose(self, schema, values, frozen, iteration, attempt, history=()):
        names = [n for n, s in schema.items() if not s.locked and n not in frozen and s.kind == "float"
                 and s.minimum is not None and s.maximum is not None and s.minimum > 0]
        name = names[(iteration + attempt) % len(names)]
        spec = schema[name]
        step = ((iteration * 7 + attempt) % 10 + 0.5) / 10
        value = float(f"{spec.minimum * (spec.maximum / spec.minimum) ** step:.4g}")
        return {name: value}, f"grid plugin step {step:.2f} on {name}"


class Marker(Mechanism):
    name = "marker"

    def observe(self, state, result):
        return None


class Counting(LocalExecutor):
    name = "counting"
    warm_workers = False
    runs = 0

    async def run(self, slot, script, trial):
        Counting.runs += 1
        with open(trial.log_path.parent / "counting-runs.txt", "a") as f:  # beside the training logs, in the session
            f.write(f"attempt {trial.attempt} on {slot.name}\\n")
        return await super().run(slot, script, trial)
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The plugin, built and installed with pip into a folder of its own (removed with the temporary folder)."""
    source = tmp_path_factory.mktemp("plugin-source")
    (source / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (source / "bilevel_grid_plugin.py").write_text(PLUGIN_MODULE)
    target = tmp_path_factory.mktemp("plugin-site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=patience(300))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list(target.glob("bilevel_grid_plugin-0.3.0.dist-info/entry_points.txt"))
    return target


def _with_plugin(plugin: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)])}


def _events(root: Path) -> list[ev.Event]:
    (session,) = [p for p in (root / "sessions").iterdir() if p.is_dir()]
    return list(SessionReader(session).events())


def test_a_proposer_that_is_not_installed_is_refused_with_the_choices():
    assert "grid" not in registry.names("proposer")  # this process never sees the plugin
    with pytest.raises(config.ConfigError, match=r"search.proposer: unknown proposer 'grid' \(proposers: llm, offline, "
                                                 r"tpe, cmaes, sobol"):
        config.demo_config(**{"script.preset": "surrogate", "search.proposer": "grid"})


def test_an_installed_plugin_proposes_observes_and_trains_a_surrogate_study(tmp_path, plugin_path):
    proc = run_bilevel("run", "--demo", "--set", "script.preset=surrogate", "--set", "search.proposer=grid",
                       "--set", 'search.mechanisms=["marker"]', "--set", "run.executor=counting",
                       "--iterations", "3", "--headless", cwd=tmp_path, env=_with_plugin(plugin_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(tmp_path)

    made = [e for e in events if isinstance(e, ev.ProposalMade)]
    assert made and {e.source for e in made} == {"grid"}
    assert all(e.hypothesis.startswith("grid plugin step ") and len(e.changes.params) == 1 for e in made)
    finished = [e for e in events if isinstance(e, ev.IterationFinished) and e.iteration > 0]
    assert [e.iteration for e in finished] == [1, 2, 3]
    assert {e.source for e in finished} == {"grid"} and all(e.decision in ("keep", "discard") for e in finished)

    [marker] = [e for e in events if isinstance(e, ev.MechanismActivated)]
    assert (marker.name, marker.origin, marker.hooks) == ("marker", "config", ["observe"])
    assert all(e.mechanisms.get("marker", {}).get("observe") == 1 for e in finished)

    [slots] = [e for e in events if isinstance(e, ev.SlotsConfigured)]
    assert slots.executor == "counting"
    runs = list(tmp_path.rglob("counting-runs.txt"))
    assert sum(len(p.read_text().splitlines()) for p in runs) == 4  # the baseline and three iterations


def test_the_plugin_entries_are_listed_with_their_package(plugin_path):
    listing = subprocess.run(
        [sys.executable, "-c", "from core.record import registry\n"
         "for kind in ('proposer', 'mechanism', 'executor'):\n"
         "    print(kind, [(e.name, e.origin) for e in registry.plugins(kind)])"],
        capture_output=True, text=True, env={**os.environ, **_with_plugin(plugin_path)}, timeout=patience(120))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [
        "proposer [('grid', 'bilevel-grid-plugin 0.3.0')]",
        "mechanism [('marker', 'bilevel-grid-plugin 0.3.0')]",
        "executor [('counting', 'bilevel-grid-plugin 0.3.0')]",
    ]


def test_init_and_help_name_the_plugin_entries_with_their_package(tmp_path, plugin_path):
    target = tmp_path / "bilevel.toml"
    assert run_bilevel("init", str(target), cwd=tmp_path, env=_with_plugin(plugin_path)).returncode == 0
    written = target.read_text()
    for name in ("grid", "marker", "counting"):
        assert re.search(rf'#\s+"{name}"\s+from the package bilevel-grid-plugin 0.3.0', written), name
    assert config.load(target).search.proposer == ""  # still a valid config
    shown = run_bilevel("run", "--help", cwd=tmp_path, env=_with_plugin(plugin_path))
    help_text = " ".join(shown.stdout.replace("-\n", "-").split())  # argparse wraps after a hyphen
    assert "proposers (search.proposer): llm, offline, tpe, cmaes, sobol, random, grid [bilevel-grid-plugin 0.3.0]." in help_text

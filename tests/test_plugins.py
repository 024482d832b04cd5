"""A third party's proposer, mechanism and executor, installed as a package, run a study as ours do.

The plugin is a real distribution built from a pyproject on disk and pip-installed (offline,
into a target folder that only the study's subprocess sees); its entry points are all the
product learns of it.
"""
from __future__ import annotations

import os
import re
import types
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.cli import _choices_epilog
from core.engine.engine import builtin_mechanism
from core.levels.proposers import make_proposer
from core.record import config, events as ev, example_config, registry
from core.services.executor_choice import make_executor
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
    options = {"stride": "grid steps between one iteration and the next"}

    def __init__(self, seed, stride=7):
        self.seed, self.stride = seed, stride

    def propose(self, schema, values, frozen, iteration, attempt, history=()):
        names = [n for n, s in schema.items() if not s.locked and n not in frozen and s.kind == "float"
                 and s.minimum is not None and s.maximum is not None and s.minimum > 0]
        name = names[(iteration + attempt) % len(names)]
        spec = schema[name]
        step = ((iteration * self.stride + attempt) % 10 + 0.5) / 10
        value = float(f"{spec.minimum * (spec.maximum / spec.minimum) ** step:.4g}")
        return {name: value}, f"grid plugin step {step:.2f} on {name} (stride {self.stride})"


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
                       "--set", "plugins.grid.stride=3", "--iterations", "3", "--headless", cwd=tmp_path, env=_with_plugin(plugin_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(tmp_path)

    made = [e for e in events if isinstance(e, ev.ProposalMade)]
    assert made and {e.source for e in made} == {"grid"}
    assert all(e.hypothesis.startswith("grid plugin step ") and len(e.changes.params) == 1 for e in made)
    assert all(e.hypothesis.endswith("(stride 3)") for e in made)  # [plugins.grid] reached the factory
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
    assert re.search(r'#\s+"grid"\s+from the package bilevel-grid-plugin 0.3.0 \(reads plugins.grid.stride\)', written)
    assert config.load(target).search.proposer == ""  # still a valid config
    shown = run_bilevel("run", "--help", cwd=tmp_path, env=_with_plugin(plugin_path))
    help_text = " ".join(shown.stdout.replace("-\n", "-").split())  # argparse wraps after a hyphen
    assert ("proposers (search.proposer): llm, offline, tpe, cmaes, sobol, random, grid [bilevel-grid-plugin 0.3.0; "
            "plugins.grid.stride].") in help_text


# --- plugins found in a folder on sys.path, as importlib.metadata finds any installed package -----------------------
# (the distribution's files written directly: the installed layout is all the registry reads, and the tests stay in
# this process, fast; the real pip-installed distribution above proves the layout is what pip writes)


def _install(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]], module: str = "") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {target}\n" for n, target in points.items()) + "\n"
        for group, points in entry_points.items()))
    if module:
        (site / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path that packages are 'installed' into; their modules are forgotten afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.endswith("_plugin"):
            del sys.modules[name]


CLASHING = """
from mechanisms.base import Mechanism


class Proposer:
    source = "tpe"

    def __init__(self, seed):
        pass


class Tabu(Mechanism):
    name = "tabu"
"""


def test_a_plugin_that_takes_a_built_ins_name_or_another_plugins_is_refused_with_the_reason(site):
    _install(site, "shadow-plugin", "1.0", {"bilevel.proposers": {"tpe": "shadow_plugin:Proposer",
                                                                  "twin": "shadow_plugin:Proposer"},
                                            "bilevel.mechanisms": {"tabu": "shadow_plugin:Tabu"}}, CLASHING)
    _install(site, "twin-plugin", "2.0", {"bilevel.proposers": {"twin": "shadow_plugin:Proposer",
                                                                "solo": "shadow_plugin:Proposer"}})
    # listed: the built-ins and the one plugin name that is its own; neither clash is
    assert registry.names("proposer") == ("llm", "offline", "tpe", "cmaes", "sobol", "random", "solo")
    assert [e.origin for e in registry.entries("proposer")][2:] == ["built-in"] * 4 + ["twin-plugin 2.0"]
    assert registry.names("mechanism") == ("tabu", "bandit", "orthogonal", "cmaes_hint")
    shadow = (r"the package shadow-plugin 1.0 provides a proposer named 'tpe', a built-in's name: a plugin never "
              r"takes a built-in's name, so it is refused; rename its entry point \(group bilevel.proposers\)")
    twin = (r"shadow-plugin 1.0 and twin-plugin 2.0 each provide a proposer named 'twin': which one a config means "
            r"would be chance, so every one is refused")
    assert [re.fullmatch(shadow + ".*", registry.refused("proposer")[0]) is not None,
            re.fullmatch(twin + ".*", registry.refused("proposer")[1]) is not None] == [True, True]
    assert "a mechanism named 'tabu', a built-in's name" in registry.refused("mechanism")[0]

    # choosing either name is refused with the reason, and so is loading any config while they are installed
    with pytest.raises(registry.PluginError, match=shadow):
        registry.entry("proposer", "tpe")
    with pytest.raises(registry.PluginError, match=twin):
        registry.entry("proposer", "twin")
    with pytest.raises(config.ConfigError, match=r"<demo>: \(top level\): " + shadow):
        config.demo_config(**{"search.group": "tpe"})
    assert "Refused: the package shadow-plugin 1.0 provides a proposer named 'tpe'" in _choices_epilog()


OPTIONED = """
from core.services.executors import LocalExecutor
from mechanisms.base import Mechanism


class Span:
    source = "span"
    options = {"width": "grid points per parameter", "lean": "lean toward the upper bound"}

    def __init__(self, seed, width=4, lean=False):
        self.seed, self.width, self.lean = seed, width, lean

    def propose(self, schema, values, frozen, iteration, attempt, history=()):
        return {}, "nothing"


class Paced(LocalExecutor):
    name = "paced"
    options = {"pause_s": "a pause before each run"}
    pause_s = 0.0

    @classmethod
    def from_run_config(cls, run_cfg, pause_s=0.0):
        made = cls.from_config(run_cfg.gpus)
        made.pause_s = pause_s
        return made


class Tagged(Mechanism):
    name = "tagged"
    options = {"tag": "a label for its notes"}

    def __init__(self, tag=""):
        self.tag = tag


class Mimic(Span):
    source = "llm"
    options = {}
"""


def test_a_plugins_declared_options_are_checked_listed_and_reach_its_factory(site):
    _install(site, "span-plugin", "0.1.0", {"bilevel.proposers": {"span": "span_plugin:Span"},
                                            "bilevel.executors": {"paced": "span_plugin:Paced.from_run_config"},
                                            "bilevel.mechanisms": {"tagged": "span_plugin:Tagged"}}, OPTIONED)
    assert [o.key for o in registry.options(registry.entry("proposer", "span"))] == ["plugins.span.width",
                                                                                       "plugins.span.lean"]
    # an executor's factory is a bound classmethod: its options are its class's
    assert [o.key for o in registry.options(registry.entry("executor", "paced"))] == ["plugins.paced.pause_s"]

    cfg = config.demo_config(**{"search.proposer": "span", "plugins.span.width": 9, "plugins.paced.pause_s": 0.25,
                                "plugins.tagged.tag": "t1"})
    proposer = make_proposer(cfg)
    assert (proposer.source, proposer.point.width, proposer.point.lean, proposer.point.seed) == ("span", 9, False, 0)
    executor = make_executor(types.SimpleNamespace(executor="paced", gpus="cpu"), cfg.plugins)
    assert (executor.name, executor.pause_s) == ("paced", 0.25)
    assert builtin_mechanism("tagged", cfg.plugins).tag == "t1"
    assert builtin_mechanism("tabu", cfg.plugins).name == "tabu"  # a built-in takes no plugin table

    with pytest.raises(config.ConfigError, match=r"plugins.span.depth: the proposer 'span' \(span-plugin 0.1.0\) has "
                                                 r"no option 'depth' \(its options: width, lean\)"):
        config.demo_config(**{"plugins.span.depth": 2})
    with pytest.raises(config.ConfigError, match=r"plugins.tpe: no installed plugin is called 'tpe' \(plugins: span, "
                                                 r"paced, tagged; a built-in reads the config's own keys\)"):
        config.demo_config(**{"plugins.tpe.n_startup_trials": 2})
    with pytest.raises(config.ConfigError, match=r"plugins.span: expected a table of the plugin.s options, got 3"):
        config.demo_config(**{"plugins.span": 3})

    written = example_config.render()
    assert re.search(r'#\s+"span"\s+from the package span-plugin 0.1.0 \(reads plugins.span.width, '
                     r'plugins.span.lean\)', written)
    assert re.search(r'#\s+"paced"\s+from the package span-plugin 0.1.0 \(reads plugins.paced.pause_s\)', written)
    assert config.loads(written).plugins == {}  # still a valid config, plugins installed
    assert "span [span-plugin 0.1.0; plugins.span.width; plugins.span.lean]" in _choices_epilog()


def test_a_plugin_proposer_that_labels_its_proposals_with_another_name_is_refused(site):
    _install(site, "mimic-plugin", "1.0", {"bilevel.proposers": {"mimic": "mimic_plugin:Mimic"}}, OPTIONED)
    with pytest.raises(registry.PluginError, match=r"the proposer 'mimic' \(mimic-plugin 1.0\) labels its proposals "
                                                   r"'llm'; a proposer's source must be its registry name, 'mimic'"):
        make_proposer(config.demo_config(**{"search.proposer": "mimic"}))


def test_a_plugin_declaring_its_options_badly_is_refused_where_they_are_read(site):
    _install(site, "bad-plugin", "1.0", {"bilevel.proposers": {"bad": "bad_plugin:Bad"}},
             'class Bad:\n    source = "bad"\n    options = ["width"]\n')
    with pytest.raises(config.ConfigError, match=r"plugins.bad: the proposer 'bad' \(bad-plugin 1.0\) declares its "
                                                 r"options as list; expected a mapping"):
        config.demo_config(**{"plugins.bad.width": 2})
    assert "(its options cannot be read: the proposer 'bad'" in example_config.render()

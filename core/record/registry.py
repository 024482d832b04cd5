"""The names a user chooses from, declared once: groups, Level 1 proposers, executors, built-in mechanisms.

Each entry says in one line what it is, which config keys it reads (its options) and where its
factory lives (``"module:attr"``, imported only by the layer that builds it, never here: this
layer imports nothing else of the project). Config validation, ``bilevel init``'s comments,
the CLI's help and the README's tables all read these entries, so a new one is one entry here.

Third parties add proposers, executors and mechanisms as package entry points in the groups
``bilevel.proposers``, ``bilevel.executors`` and ``bilevel.mechanisms``; they are listed by
name here (nothing of theirs is imported until one is chosen or its options are asked for). A
plugin's name is its own: one that takes a built-in's name, or one two packages both provide, is
refused (``refused``; loading a config fails with the reason), so a package can never quietly
change what a config already means, and a config never means one of two packages by chance.

A plugin declares its options once, on its factory: ``options = {"span": "what it means"}`` (on the
class, or the function). The user sets them in the config's ``[plugins.NAME]`` table; config
validation refuses a key the plugin does not declare, ``bilevel init``'s comments and ``bilevel run
--help`` list them (``options``), and the factory gets the table's values as keyword arguments.

What a factory is called with:

- a proposer: ``factory(seed=..., **its options)`` (the run's ``search.seed``); it returns either a full
  proposer (``core.levels.proposer.Proposer``: a ``source`` label and ``open(...)``) or a point
  proposer (a ``source`` label and ``propose(schema, values, frozen, iteration, attempt,
  history) -> (changes, hypothesis)``), as the offline and classical ones are; its ``source``
  must be its registry name (the proposals' label in the log; checked where it is built);
- an executor: ``factory(run_cfg, **its options)`` (the ``[run]`` section), returning an
  ``core.services.executors.Executor``;
- a mechanism: ``factory(**its options)`` (a built-in: ``factory()``), returning a
  ``mechanisms.base.Mechanism``.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, Mapping

Kind = Literal["proposer", "executor", "mechanism"]
ENTRY_POINT_GROUPS: dict[Kind, str] = {"proposer": "bilevel.proposers", "executor": "bilevel.executors",
                                       "mechanism": "bilevel.mechanisms"}
KINDS: tuple[Kind, ...] = ("proposer", "executor", "mechanism")
LEVELS = ("inner", "strategy", "research")
PLUGIN_TABLE = "plugins"  # the config's [plugins.NAME] tables: a plugin's options


@dataclass(frozen=True)
class Option:
    """A config key an entry reads, and what it means there."""

    key: str  # dotted: "run.gpus"
    doc: str


@dataclass(frozen=True)
class Entry:
    """A proposer, executor or mechanism: its name, what it is, what it reads, where its factory is."""

    kind: Kind
    name: str
    summary: str
    target: str  # "module:attr" of the factory
    options: tuple[Option, ...] = ()
    origin: str = "built-in"  # or the distribution that provides the entry point
    # proposers only: reads the Level 1 prompt (the LLM); ``described`` is how the guidance warning names it
    prompted: bool = False
    described: str = ""
    research: bool = True  # Level 2 may run beside it (its mechanisms shape prompts this proposer reads or ignores)
    # proposers only: each proposal is a whole point of the searched space (a classical sampler), so
    # search.max_changes, the one-hypothesis limit of the LLM and the perturbation, does not bind it
    whole_points: bool = False
    # mechanisms only: it acts only by adding text to the Level 1 prompt, so beside a proposer that
    # reads no prompt it does nothing at all (a group of it would run as a copy of the group without it)
    prompt_only: bool = False


@dataclass(frozen=True)
class Group:
    """An ablation group: the levels it runs, its Level 1 proposer and the mechanisms it starts with."""

    name: str
    levels: tuple[str, ...]
    summary: str
    proposer: str = ""  # "": the LLM (offline mode's perturbation when the endpoint is offline)
    mechanisms: tuple[str, ...] = ()


_SEED = Option("search.seed", "seeds every proposal, so a resumed run proposes the same")
_BOUNDS = Option("search.bounds", "the searched ranges and choices")
_SCOPE = Option("search.scope", '"constants" (the paper\'s) or "code": edits to the training code beside constants')

GROUPS: tuple[Group, ...] = (
    Group("A", ("inner",), "Level 1"),
    Group("B", ("inner", "strategy"), "Level 1 + 1.5"),
    Group("C", ("inner", "strategy", "research"), "Level 1 + 1.5 + 2"),
    Group("D", ("inner", "research"), "Level 1 + 2"),
    # Classical search at Level 1 (Optuna samplers instead of the LLM; core/levels/classical.py).
    Group("tpe", ("inner",), "Optuna's TPE sampler (multivariate, 8 random start-up trials)", proposer="tpe"),
    Group("cmaes", ("inner",), "Optuna's CMA-ES sampler, started at the baseline", proposer="cmaes"),
    Group("sobol", ("inner",), "scrambled Sobol quasi-random points: the neutral search", proposer="sobol"),
    Group("random", ("inner",), "independent uniform random points (Bergstra & Bengio's baseline)", proposer="random"),
    # The LLM groups with CMA-ES's next suggestion in each prompt (mechanisms/cmaes_hint.py).
    Group("A+cmaes", ("inner",), "A, with CMA-ES's next point in every prompt as one candidate",
          mechanisms=("cmaes_hint",)),
    Group("C+cmaes", ("inner", "strategy", "research"), "C, with CMA-ES's next point in every prompt as one candidate",
          mechanisms=("cmaes_hint",)),
    # The floor an LLM has to clear (the scorecard runs it beside CMA-ES): offline mode's perturbation.
    Group("offline", ("inner",), "offline mode's seeded random perturbation of 1-3 parameters, no LLM",
          proposer="offline"),
)

PROPOSERS: tuple[Entry, ...] = (
    Entry("proposer", "llm", "the LLM at the endpoint, reading the prompt, the history and the guidance",
          "core.levels.llm_proposer:LLMProposer", prompted=True,
          options=(Option("endpoint.model", "the model asked"), Option("search.guidance", "what it is told to aim at"),
                   Option("search.history_tokens", "how much history the prompt holds"),
                   Option("search.max_reasks", "re-asks after an unusable proposal"), _SCOPE)),
    Entry("proposer", "offline", "offline mode's seeded random perturbation of 1-3 active parameters",
          "core.levels.offline:OfflineProposer", described="offline mode's seeded perturbation", options=(_SEED, _SCOPE)),
    Entry("proposer", "tpe", "Optuna's TPE sampler", "core.levels.classical:tpe",
          described="the classical sampler 'tpe'", research=False, whole_points=True, options=(_SEED, _BOUNDS)),
    Entry("proposer", "cmaes", "Optuna's CMA-ES sampler, started at the baseline", "core.levels.classical:cmaes",
          described="the classical sampler 'cmaes'", research=False, whole_points=True, options=(_SEED, _BOUNDS)),
    Entry("proposer", "sobol", "scrambled Sobol quasi-random points", "core.levels.classical:sobol",
          described="the classical sampler 'sobol'", research=False, whole_points=True, options=(_SEED, _BOUNDS)),
    Entry("proposer", "random", "independent uniform random points", "core.levels.classical:random_search",
          described="the classical sampler 'random'", research=False, whole_points=True, options=(_SEED, _BOUNDS)),
)

EXECUTORS: tuple[Entry, ...] = (
    Entry("executor", "local", "this machine's GPUs (each run pinned to one) or cpu:N CPU slots",
          "core.services.executors:LocalExecutor.from_run_config",
          options=(Option("run.gpus", '"auto", "0,1", "cpu" or "cpu:N"'),
                   Option("run.worker", '"warm": a long-lived worker per slot; "fresh": a process per run'))),
    Entry("executor", "ray", "a Ray cluster through Ray Core (pip install 'bilevel-autoresearch[ray]')",
          "core.services.ray_executor:RayExecutor.from_config",
          options=(Option("run.ray_address", "the cluster to join; empty: start a local one"),
                   Option("run.gpus", "the slots of a local cluster"))),
)

MECHANISMS: tuple[Entry, ...] = (
    Entry("mechanism", "tabu", "vetoes proposals that land on a recently trained region", "mechanisms.tabu:Tabu"),
    Entry("mechanism", "bandit", "chooses which parameter to explore next by UCB1", "mechanisms.bandit:Bandit"),
    Entry("mechanism", "orthogonal", "pushes the search onto dimensions it has not touched lately",
          "mechanisms.orthogonal:Orthogonal"),
    Entry("mechanism", "cmaes_hint", "puts CMA-ES's next point in every LLM prompt as one candidate",
          "mechanisms.cmaes_hint:CmaesHint", prompt_only=True),
)

BUILT_IN: dict[Kind, tuple[Entry, ...]] = {"proposer": PROPOSERS, "executor": EXECUTORS, "mechanism": MECHANISMS}


class UnknownEntry(ValueError):
    """No built-in and no installed plugin has this name."""


class PluginError(ValueError):
    """A plugin that is refused (its name clashes), or a chosen entry's factory that cannot be loaded."""


def group_names() -> tuple[str, ...]:
    return tuple(g.name for g in GROUPS)


def group(name: str) -> Group:
    found = next((g for g in GROUPS if g.name == name), None)
    if found is None:
        raise UnknownEntry(f"unknown group {name!r} (groups: {', '.join(group_names())})")
    return found


def _installed(kind: Kind) -> tuple[Entry, ...]:
    """Every installed package's entry of this kind, clashes included (by name; nothing is imported)."""
    return _scan(tuple(sys.path))[kind]


@functools.lru_cache(maxsize=4)
def _scan(path: tuple[str, ...]) -> dict[Kind, tuple[Entry, ...]]:
    """The installed entries of every kind, read once per ``sys.path``: a scan of the installed packages
    costs ~10 ms, and loading one config asks for them a dozen times (a package installed while this
    process runs is seen by the next one)."""
    found: dict[Kind, list[Entry]] = {kind: [] for kind in KINDS}
    every = metadata.entry_points()
    for kind in KINDS:
        for ep in every.select(group=ENTRY_POINT_GROUPS[kind]):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "a plugin"
            found[kind].append(Entry(kind, ep.name, f"from the package {origin}", ep.value, origin=origin,
                                     described=f"the plugin proposer {ep.name!r}" if kind == "proposer" else ""))
    return {kind: tuple(entries) for kind, entries in found.items()}


def _clashes(kind: Kind) -> dict[str, str]:
    """The refused plugin names of this kind, each with why."""
    ours = {e.name for e in BUILT_IN[kind]}
    by_name: dict[str, list[Entry]] = {}
    for e in _installed(kind):
        by_name.setdefault(e.name, []).append(e)
    why = {}
    for name, found in by_name.items():
        group_ = ENTRY_POINT_GROUPS[kind]
        if name in ours:
            packages = " and ".join(dict.fromkeys(e.origin for e in found))
            why[name] = (f"the package {packages} provides a {kind} named {name!r}, a built-in's name: a plugin never "
                         f"takes a built-in's name, so it is refused; rename its entry point (group {group_}) or "
                         "uninstall the package")
        elif len(found) > 1:
            packages = " and ".join(e.origin for e in found)
            why[name] = (f"{packages} each provide a {kind} named {name!r}: which one a config means would be "
                         "chance, so every one is refused; uninstall all but one")
    return why


def refused(kind: Kind) -> tuple[str, ...]:
    """Why each clashing plugin of this kind is refused (empty when none clashes); config loading fails on any."""
    return tuple(_clashes(kind).values())


def plugins(kind: Kind) -> tuple[Entry, ...]:
    """The installed packages' entries of this kind (by name; nothing is imported), less the refused ones."""
    clashing = _clashes(kind)
    return tuple(e for e in _installed(kind) if e.name not in clashing)


def entries(kind: Kind) -> tuple[Entry, ...]:
    """Every entry of this kind: the built-ins, then the installed plugins'."""
    return BUILT_IN[kind] + plugins(kind)


def names(kind: Kind) -> tuple[str, ...]:
    return tuple(e.name for e in entries(kind))


def entry(kind: Kind, name: str) -> Entry:
    """The entry called ``name``; UnknownEntry lists the choices, PluginError says why a clashing plugin is refused."""
    clashing = _clashes(kind)
    if name in clashing:
        raise PluginError(clashing[name])
    for e in BUILT_IN[kind]:
        if e.name == name:
            return e
    every = entries(kind)
    found = next((e for e in every if e.name == name), None)
    if found is None:
        raise UnknownEntry(f"unknown {kind} {name!r} ({kind}s: {', '.join(e.name for e in every)})")
    return found


def load(entry: Entry) -> Any:
    """The factory ``entry.target`` names, imported now (a run's chosen entry, or a plugin whose options are asked for)."""
    point = metadata.EntryPoint(name=entry.name, value=entry.target, group=ENTRY_POINT_GROUPS[entry.kind])
    try:
        return point.load()
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"the {entry.kind} {entry.name!r} ({entry.origin}: {entry.target}) cannot be loaded: "
                          f"{exc}") from exc


def options(entry: Entry) -> tuple[Option, ...]:
    """What an entry reads: a built-in's config keys; a plugin's ``plugins.NAME.KEY``, as its factory declares them.

    A plugin's factory is imported for this (PluginError when it cannot be, or declares them badly).
    """
    if entry.origin == "built-in":
        return entry.options
    factory = load(entry)
    declared = getattr(factory, "options", None)
    if declared is None:  # a bound classmethod (``Counting.from_run_config``) does not show its class's attributes
        declared = getattr(getattr(factory, "__self__", None), "options", None)
    if declared is None:
        return ()
    if not isinstance(declared, Mapping) or not all(isinstance(k, str) and k.isidentifier() and isinstance(v, str)
                                                    for k, v in declared.items()):
        raise PluginError(f"the {entry.kind} {entry.name!r} ({entry.origin}) declares its options as "
                          f"{type(declared).__name__}; expected a mapping of option names to what each means")
    return tuple(Option(f"{PLUGIN_TABLE}.{entry.name}.{key}", doc) for key, doc in declared.items())


def settings(entry: Entry, tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The keyword arguments an entry's factory gets: its declared options set in ``[plugins.NAME]`` (a built-in: none)."""
    table = tables.get(entry.name) if entry.origin != "built-in" else None
    if not table:
        return {}
    declared = {o.key.rsplit(".", 1)[1] for o in options(entry)}
    return {key: value for key, value in table.items() if key in declared}

"""The names a user chooses from, declared once: groups, Level 1 proposers, executors, built-in mechanisms.

Each entry says in one line what it is, which config keys it reads (its options) and where its
factory lives (``"module:attr"``, imported only by the layer that builds it, never here: this
layer imports nothing else of the project). Config validation, ``bilevel init``'s comments,
the CLI's help and the README's tables all read these entries, so a new one is one entry here.

Third parties add proposers, executors and mechanisms as package entry points in the groups
``bilevel.proposers``, ``bilevel.executors`` and ``bilevel.mechanisms``; they are listed by
name here (nothing of theirs is imported until one is chosen). A plugin's name never replaces
one of ours: a built-in wins, so a package cannot quietly change what a config already means.

What a factory is called with:

- a proposer: ``factory(seed=...)`` (the run's ``search.seed``); it returns either a full
  proposer (``core.levels.proposer.Proposer``: a ``source`` label and ``open(...)``) or a point
  proposer (a ``source`` label and ``propose(schema, values, frozen, iteration, attempt,
  history) -> (changes, hypothesis)``), as the offline and classical ones are;
- an executor: ``factory(run_cfg)`` (the ``[run]`` section), returning an
  ``core.services.executors.Executor``;
- a mechanism: ``factory()``, returning a ``mechanisms.base.Mechanism``.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Literal

Kind = Literal["proposer", "executor", "mechanism"]
ENTRY_POINT_GROUPS: dict[Kind, str] = {"proposer": "bilevel.proposers", "executor": "bilevel.executors",
                                       "mechanism": "bilevel.mechanisms"}
LEVELS = ("inner", "strategy", "research")


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

GROUPS: tuple[Group, ...] = (
    Group("A", ("inner",), "Level 1"),
    Group("B", ("inner", "strategy"), "Level 1 + 1.5"),
    Group("C", ("inner", "strategy", "research"), "Level 1 + 1.5 + 2"),
    Group("D", ("inner", "research"), "Level 1 + 2"),
    # Classical search at Level 1 (Optuna samplers instead of the LLM; core/levels/classical.py).
    Group("tpe", ("inner",), "Optuna's TPE sampler (multivariate, 8 random start-up trials)", proposer="tpe"),
    Group("cmaes", ("inner",), "Optuna's CMA-ES sampler, started at the baseline", proposer="cmaes"),
    Group("sobol", ("inner",), "scrambled Sobol quasi-random points: the neutral search", proposer="sobol"),
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
                   Option("search.max_reasks", "re-asks after an unusable proposal"))),
    Entry("proposer", "offline", "offline mode's seeded random perturbation of 1-3 active parameters",
          "core.levels.offline:OfflineProposer", described="offline mode's seeded perturbation", options=(_SEED,)),
    Entry("proposer", "tpe", "Optuna's TPE sampler", "core.levels.classical:tpe",
          described="the classical sampler 'tpe'", research=False, options=(_SEED, _BOUNDS)),
    Entry("proposer", "cmaes", "Optuna's CMA-ES sampler, started at the baseline", "core.levels.classical:cmaes",
          described="the classical sampler 'cmaes'", research=False, options=(_SEED, _BOUNDS)),
    Entry("proposer", "sobol", "scrambled Sobol quasi-random points", "core.levels.classical:sobol",
          described="the classical sampler 'sobol'", research=False, options=(_SEED, _BOUNDS)),
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
          "mechanisms.cmaes_hint:CmaesHint"),
)

BUILT_IN: dict[Kind, tuple[Entry, ...]] = {"proposer": PROPOSERS, "executor": EXECUTORS, "mechanism": MECHANISMS}


class UnknownEntry(ValueError):
    """No built-in and no installed plugin has this name."""


def group_names() -> tuple[str, ...]:
    return tuple(g.name for g in GROUPS)


def group(name: str) -> Group:
    found = next((g for g in GROUPS if g.name == name), None)
    if found is None:
        raise UnknownEntry(f"unknown group {name!r} (groups: {', '.join(group_names())})")
    return found


def plugins(kind: Kind) -> tuple[Entry, ...]:
    """The installed packages' entries of this kind (by name; nothing is imported), less our own names."""
    ours = {e.name for e in BUILT_IN[kind]}
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUPS[kind]):
        if ep.name in ours or any(e.name == ep.name for e in found):
            continue  # a built-in wins; of two plugins with one name, the first installed
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "a plugin"
        found.append(Entry(kind, ep.name, f"from the package {origin}", ep.value, origin=origin,
                           described=f"the plugin proposer {ep.name!r}" if kind == "proposer" else ""))
    return tuple(found)


def entries(kind: Kind) -> tuple[Entry, ...]:
    """Every entry of this kind: the built-ins, then the installed plugins'."""
    return BUILT_IN[kind] + plugins(kind)


def names(kind: Kind) -> tuple[str, ...]:
    return tuple(e.name for e in entries(kind))


def entry(kind: Kind, name: str) -> Entry:
    """The entry called ``name``; UnknownEntry lists the choices."""
    for e in BUILT_IN[kind]:
        if e.name == name:
            return e
    every = entries(kind)
    found = next((e for e in every if e.name == name), None)
    if found is None:
        raise UnknownEntry(f"unknown {kind} {name!r} ({kind}s: {', '.join(e.name for e in every)})")
    return found

"""One registry of groups, proposers, executors and mechanisms: what config, init, help and the README read."""
from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

import mechanisms
from core.cli import build_parser, main
from core.levels.proposer import Algorithmic, Proposer
from core.levels.proposers import make_proposer
from core.record import config, registry
from core.services.plugins import load

README = Path(__file__).resolve().parent.parent / "README.md"


def _config_keys() -> set[str]:
    keys = set()
    for section, tp in typing.get_type_hints(config.Config).items():
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            keys |= {f"{section}.{field}" for field in tp.__struct_fields__}
    return keys


def test_every_declared_option_is_a_config_key():
    known = _config_keys()
    declared = {o.key for kind in registry.BUILT_IN for e in registry.entries(kind) for o in e.options}
    assert declared and declared <= known, declared - known


def test_the_config_accepts_exactly_the_registered_groups_and_executors():
    assert list(config.GROUPS) == list(registry.group_names())
    llm = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    for name in registry.group_names():
        # a group whose mechanism only writes prompt text needs a proposer that reads the prompt
        prompt_only = any(registry.entry("mechanism", m).prompt_only for m in registry.group(name).mechanisms)
        data = {"search": {"group": name}, **({"endpoint": llm} if prompt_only else {})}
        assert config.from_dict(data).search.active_levels == registry.group(name).levels
    assert config.from_dict({"run": {"executor": "ray"}}).run.executor == "ray"
    with pytest.raises(config.ConfigError, match=r"run.executor: expected one of 'local', 'ray', got 'slurm'"):
        config.from_dict({"run": {"executor": "slurm"}})


def test_the_group_chooses_the_proposer_unless_search_proposer_does():
    assert config.demo_config().proposer == "offline"
    assert config.demo_config(**{"search.group": "cmaes"}).proposer == "cmaes"
    assert config.demo_config(**{"search.proposer": "sobol"}).proposer == "sobol"
    with pytest.raises(config.ConfigError, match="search.proposer: the LLM proposer needs an endpoint"):
        config.demo_config(**{"search.proposer": "llm"})
    with pytest.raises(config.ConfigError, match="proposer 'tpe' searches with a classical sampler"):
        config.demo_config(**{"search.proposer": "tpe", "search.group": "C"})


@pytest.mark.parametrize("name", registry.names("proposer"))
def test_each_proposer_is_built_from_its_entry_and_labels_its_proposals_with_its_name(name):
    overrides = {"search.proposer": name}
    if name == "llm":
        overrides.update({"endpoint.provider": "openai", "endpoint.base_url": "http://127.0.0.1:9/v1",
                          "endpoint.model": "m"})
    proposer = make_proposer(config.demo_config(**overrides))
    assert isinstance(proposer, Proposer) and proposer.source == name
    assert isinstance(proposer, Algorithmic) is (name != "llm")  # only the LLM reads the prompt itself


def test_the_registered_mechanisms_are_the_library_of_built_ins():
    entries = registry.entries("mechanism")
    assert [e.name for e in entries] == list(mechanisms.BUILTINS)
    assert all(load(e) is mechanisms.BUILTINS[e.name] for e in entries)
    with pytest.raises(mechanisms.UnknownMechanism, match="choose one of: tabu, bandit, orthogonal, cmaes_hint"):
        mechanisms.builtin("nope")


def test_the_executors_factories_load():
    from core.services.executors import LocalExecutor
    from core.services.ray_executor import RayExecutor

    local, ray = (load(registry.entry("executor", n)) for n in ("local", "ray"))
    assert local.__self__ is LocalExecutor and ray.__self__ is RayExecutor
    assert LocalExecutor.warm_workers and not RayExecutor.warm_workers


def _table_names(heading: str) -> list[str]:
    """The first column of the README table whose header cell is ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"| `{heading}` |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(re.match(r"\| `([^`]+)` \|", line).group(1))
    return rows


@pytest.mark.parametrize("heading, names", [
    ("search.group", registry.group_names()),
    ("search.proposer", tuple(e.name for e in registry.PROPOSERS)),
    ("run.executor", tuple(e.name for e in registry.EXECUTORS)),
    ("search.mechanisms", tuple(e.name for e in registry.MECHANISMS)),
])
def test_the_readme_tables_list_every_registered_entry(heading, names):
    assert _table_names(heading) == list(names)


def test_init_and_help_list_every_registered_entry(tmp_path, capsys):
    target = tmp_path / "bilevel.toml"
    assert main(["init", str(target)]) == 0
    written = target.read_text()
    assert "# @" not in written  # every marker was filled in
    for kind in registry.BUILT_IN:
        for e in registry.entries(kind):
            assert re.search(rf'#\s+"{re.escape(e.name)}"\s+{re.escape(e.summary)}', written), e.name
    for g in registry.GROUPS:
        assert f'"{g.name}"' in written
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # noqa: SLF001 - argparse keeps them there
    text = " ".join(run.format_help().split())
    assert all(g.name in text for g in registry.GROUPS)
    assert "proposers (search.proposer): llm, offline, tpe, cmaes, sobol, random." in text
    assert "executors (run.executor): local, ray." in text

"""Configuration: typed, validated, with errors that name the file, line and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.record import config
from core.cli import main
from core.record.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_example_config_written_by_init_is_valid(tmp_path, capsys):
    target = tmp_path / "bilevel.toml"
    assert main(["init", str(target)]) == 0
    cfg = config.load(target)
    assert cfg.endpoint.provider == "openai" and cfg.endpoint.model == "deepseek-flash"
    assert cfg.search.locked == ("DEPTH", "ASPECT_RATIO")
    assert main(["init", str(target)]) == 2  # never overwrites silently


def test_unknown_key_is_rejected_with_line_and_known_keys(tmp_path):
    p = write(tmp_path, '[search]\ngroup = "A"\nmin_detla = 0.1\n')
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    msg = str(exc.value)
    assert f"{p}:3" in msg and "search.min_detla" in msg and "min_delta" in msg


def test_wrong_type_names_the_expected_type(tmp_path):
    p = write(tmp_path, '[budget]\niterations = "ten"\n')
    with pytest.raises(ConfigError, match=r"exp.toml:2: budget.iterations: expected an integer, got 'ten'"):
        config.load(p)


def test_out_of_range_value_is_rejected(tmp_path):
    p = write(tmp_path, '[search]\nmin_delta = -0.5\n')
    with pytest.raises(ConfigError, match=r"search.min_delta: expected a value >= 0"):
        config.load(p)


def test_bad_choice_lists_the_choices(tmp_path):
    p = write(tmp_path, '[search]\ngroup = "E"\n')
    with pytest.raises(ConfigError, match=r"expected one of 'A', 'B', 'C', 'D'"):
        config.load(p)


def test_api_key_itself_is_refused_in_favour_of_a_variable_name(tmp_path):
    p = write(tmp_path, '[endpoint]\nprovider="openai"\nbase_url="http://x/v1"\nmodel="m"\napi_key_env="sk-abc123-secret"\n')
    with pytest.raises(ConfigError, match="NAME of an environment variable") as exc:
        config.load(p)
    assert "sk-abc123-secret" not in str(exc.value).split(":", 2)[-1].replace("api_key_env", "")


def test_openai_provider_needs_url_and_model(tmp_path):
    with pytest.raises(ConfigError, match="endpoint.base_url: required"):
        config.load(write(tmp_path, '[endpoint]\nprovider = "openai"\n'))


def test_invalid_toml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[search\n"))


def test_cli_overrides_win_over_the_file(tmp_path):
    p = write(tmp_path, '[budget]\niterations = 30\n[search]\nmin_delta = 0.01\n')
    cfg = config.load(p, {"budget.iterations": 3, **dict([config.parse_override("search.min_delta=0.002")])})
    assert cfg.budget.iterations == 3 and cfg.search.min_delta == 0.002


def test_groups_select_levels_and_levels_override():
    assert config.from_dict({"search": {"group": "C"}}).search.active_levels == ("inner", "strategy", "research")
    assert config.from_dict({"search": {"levels": ["inner", "research"]}}).search.active_levels == ("inner", "research")
    with pytest.raises(ConfigError, match="unknown level"):
        config.from_dict({"search": {"levels": ["inner", "magic"]}})


def test_relative_script_path_resolves_from_the_config_folder(tmp_path):
    p = write(tmp_path, '[script]\npath = "my/train.py"\n')
    assert config.load(p).script_path() == tmp_path / "my/train.py"


def test_config_round_trips_through_its_dict():
    cfg = config.demo_config()
    again = config.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_cli_exit_code_2_on_bad_config(tmp_path, capsys):
    p = write(tmp_path, "[nope]\n")
    assert main(["run", str(p), "--headless"]) == 2
    assert "unknown key" in capsys.readouterr().err

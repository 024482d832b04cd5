"""Configuration: typed, validated, with errors that name the file, line and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.record import config
from core.cli import main
from core.record.config import ConfigError
from tests.support.patience import patience


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
    with pytest.raises(ConfigError, match=r"expected one of 'A', 'A\+cmaes', 'B', 'C', 'C\+cmaes', 'D', 'cmaes', 'offline', 'random', 'sobol', 'tpe'"):
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


# --- hardening: what a bad value does through `bilevel run` (exit 2, file:line:key, nothing echoed) ---

BAD_VALUES = [
    ("[budget]\ngrace_s = nan\n", 2, "budget.grace_s", "finite"),
    ("[budget]\ntime_s = 1e308\n", 2, "budget.time_s", "<= 604800"),
    ("[budget]\ntime_s = inf\n", 2, "budget.time_s", "finite"),
    ("[budget]\ntime_s = -inf\n", 2, "budget.time_s", "finite"),
    ("[search]\nmin_delta = nan\n", 2, "search.min_delta", "finite"),
    ("[level2]\nhook_timeout_s = nan\n", 2, "level2.hook_timeout_s", "finite"),
    ("[level2]\nimport_timeout_s = inf\n", 2, "level2.import_timeout_s", "finite"),
    ("[acceptance]\nnoise_sigma = nan\n", 2, "acceptance.noise_sigma", "finite"),
    ("[endpoint]\ntimeout_s = inf\n", 2, "endpoint.timeout_s", "finite"),
    ("[endpoint]\ntemperature = nan\n", 2, "endpoint.temperature", "finite"),
    ("[endpoint]\nprice_in_per_m = inf\n", 2, "endpoint.price_in_per_m", "finite"),
    ("[search]\n\n[search.bounds.MATRIX_LR]\nmin = nan\nmax = 0.1\n", 4, "search.bounds.MATRIX_LR.min", "finite"),
    ("[search.bounds.MATRIX_LR]\nmin = 0.01\nmax = inf\n", 3, "search.bounds.MATRIX_LR.max", "finite"),
    ("[search.bounds.MATRIX_LR]\nmin = 0.5\nmax = 0.1\n", 1, "search.bounds.MATRIX_LR", "min < max"),
    ("[search.bounds.WEIGHT_DECAY]\nchoices = [0.0, nan]\n", 2, "search.bounds.WEIGHT_DECAY.choices", "finite"),
]


@pytest.mark.parametrize("text, line, key, expected", BAD_VALUES, ids=[b[2] + ":" + b[0].split("=")[-1].strip()
                                                                        for b in BAD_VALUES])
def test_a_non_finite_or_absurd_float_is_refused_through_bilevel_run(tmp_path, capsys, text, line, key, expected):
    p = write(tmp_path, text)
    assert main(["run", str(p), "--headless"]) == 2
    err = capsys.readouterr().err
    assert f"{p}:{line}: {key}:" in err and expected in err
    assert "Traceback" not in err


def test_every_float_key_has_both_bounds():
    """A float key without an upper bound would let `inf` (or a 309-digit budget) through again."""
    import msgspec

    def floats(info, path=()):
        if isinstance(info, msgspec.inspect.StructType):
            for f in info.fields:
                yield from floats(f.type, path + (f.name,))
        elif isinstance(info, msgspec.inspect.UnionType):
            for t in info.types:
                yield from floats(t, path)
        elif isinstance(info, msgspec.inspect.FloatType):
            yield path, info

    found = list(floats(msgspec.inspect.type_info(config.Config)))
    assert len(found) >= 10
    assert [".".join(p) for p, info in found if info.ge is None or info.le is None] == []


def test_a_config_that_is_not_utf8_is_a_clear_error_through_bilevel_run(tmp_path, capsys):
    p = tmp_path / "exp.toml"
    p.write_bytes(b'[search]\nguidance = "caf\xe9"\n')  # Latin-1, as an old editor saves it
    assert main(["run", str(p), "--headless"]) == 2
    err = capsys.readouterr().err
    assert f"{p}:2: not UTF-8" in err and "Traceback" not in err


def test_a_non_utf8_config_gives_no_traceback_in_a_real_process(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "exp.toml"
    p.write_bytes(b"name = \"x\"\n\xff\xfe\n")
    proc = subprocess.run([sys.executable, "-m", "core.cli", "run", str(p), "--headless"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=patience(120))
    assert proc.returncode == 2 and f"{p}:2: not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("pasted", ["sk-abc123-secret", "sk_live_0123456789abcdef", "sk-proj-AbCdEf0123456789AbCdEf",
                                    "Bearer abcdef", "ABCDEF0123456789ABCDEF0123456789ABCDEF", "my key"])
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path, capsys, pasted):
    p = write(tmp_path, f'[endpoint]\nprovider = "openai"\nbase_url = "http://x/v1"\nmodel = "m"\n'
                        f'api_key_env = "{pasted}"\n')
    assert main(["run", str(p), "--headless"]) == 2
    captured = capsys.readouterr()
    assert f"{p}:5: endpoint.api_key_env:" in captured.err and "NAME of an environment variable" in captured.err
    assert pasted not in captured.err and pasted not in captured.out


def test_a_key_given_with_set_is_refused_without_echoing_it(tmp_path, capsys):
    p = write(tmp_path, '[endpoint]\nprovider = "openai"\nbase_url = "http://x/v1"\nmodel = "m"\n')
    assert main(["run", str(p), "--headless", "--set", "endpoint.api_key_env=sk-abc123-secret"]) == 2
    captured = capsys.readouterr()
    assert "endpoint.api_key_env" in captured.err and "sk-abc123-secret" not in captured.err + captured.out


def test_a_wrong_typed_api_key_env_is_not_echoed_either(tmp_path):
    with pytest.raises(ConfigError) as exc:
        config.load(write(tmp_path, "[endpoint]\napi_key_env = 1234567890123\n"))
    assert "1234567890123" not in str(exc.value) and "exp.toml:2: endpoint.api_key_env" in str(exc.value)


@pytest.mark.parametrize("name", ["DEEPSEEK_API_KEY", "OPENAI_API_KEY", "BILEVEL_TEST_KEY", "_X1"])
def test_ordinary_variable_names_are_accepted(name):
    assert config.from_dict({"endpoint": {"api_key_env": name}}).endpoint.api_key_env == name


def test_set_overrides_are_validated_like_the_file(tmp_path, capsys):
    p = write(tmp_path, "[budget]\niterations = 3\n")
    assert main(["run", str(p), "--headless", "--set", "budget.grace_s=nan"]) == 2
    assert "budget.grace_s: expected a finite number" in capsys.readouterr().err


def test_the_config_is_frozen_and_typed():
    cfg = config.from_dict({"budget": {"time_s": 5}})
    assert cfg.budget.time_s == 5.0 and isinstance(cfg.budget.time_s, float)
    assert cfg.search.locked == ("DEPTH", "ASPECT_RATIO") and isinstance(cfg.search.locked, tuple)
    with pytest.raises(AttributeError):
        cfg.budget.time_s = 1.0  # type: ignore[misc]


def test_the_internal_base_dir_cannot_be_set_from_a_file(tmp_path):
    with pytest.raises(ConfigError, match="exp.toml:1: base_dir: unknown key"):
        config.load(write(tmp_path, 'base_dir = "/elsewhere"\n'))


def test_to_dict_is_plain_data_that_a_json_round_trip_keeps_equal():
    import json

    data = config.demo_config().to_dict()
    assert json.loads(json.dumps(data)) == data  # the session log holds it; the fold compares it

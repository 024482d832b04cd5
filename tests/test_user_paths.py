"""Every user folder comes from platformdirs, an environment override still wins, and the places
that must find one folder without the product installed (train.py run on its own, the llama-server
install step that runs before `pip install`) resolve the same folder on Linux."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from baseline import dataset_folder
from core.services.environment import compile_cache_env
from tests.support import build_llama_server as build
from tests.test_workload import import_train_module
from tui.keys import keymap_path
from tui.settings import settings_path

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG folders are Linux's")

# (XDG_CACHE_HOME or XDG_CONFIG_HOME, the base folder it gives under HOME=/h): set, unset, and a
# relative one, which the XDG spec says to ignore
CASES = [("/x/base", "/x/base"), (None, None), ("relative/base", None)]


def _env(monkeypatch: pytest.MonkeyPatch, name: str, value: str | None) -> None:
    monkeypatch.setenv("HOME", "/h")
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)


@linux
@pytest.mark.parametrize("xdg, base", CASES)
def test_config_files_live_in_the_user_config_folder(monkeypatch, xdg, base) -> None:
    _env(monkeypatch, "XDG_CONFIG_HOME", xdg)
    monkeypatch.delenv("BILEVEL_SETTINGS", raising=False)
    monkeypatch.delenv("BILEVEL_KEYMAP", raising=False)
    folder = Path(base or "/h/.config") / "bilevel"
    assert settings_path() == folder / "settings.toml"
    assert keymap_path() == folder / "keymap.toml"


def test_the_environment_names_the_config_files_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "ignored"))
    monkeypatch.setenv("BILEVEL_SETTINGS", str(tmp_path / "s.toml"))
    monkeypatch.setenv("BILEVEL_KEYMAP", str(tmp_path / "k.toml"))
    assert (settings_path(), keymap_path()) == (tmp_path / "s.toml", tmp_path / "k.toml")


@linux
@pytest.mark.parametrize("xdg, base", CASES)
def test_data_compile_cache_and_llama_server_share_one_cache_folder(monkeypatch, xdg, base) -> None:
    _env(monkeypatch, "XDG_CACHE_HOME", xdg)
    monkeypatch.delenv("BILEVEL_DATA_ROOT", raising=False)
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    cache = Path(base or "/h/.cache") / "bilevel"
    assert dataset_folder.data_root() == cache / "data"
    assert Path(compile_cache_env()["TORCHINDUCTOR_CACHE_DIR"]) == cache / "compile"
    # the install step reads its environment as a mapping and is standard library only
    env = {"HOME": "/h", **({} if xdg is None else {"XDG_CACHE_HOME": xdg})}
    assert build.cache_folder(env) == cache / "llama-server" / build.VERSION
    # train.py run on its own looks where `bilevel prepare` puts the stdlib data
    assert import_train_module().data_dir() == cache / "data" / "stdlib"


def test_the_environment_names_the_data_folders_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ignored"))
    monkeypatch.setenv("BILEVEL_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "one"))
    assert dataset_folder.data_root() == tmp_path / "root"
    assert import_train_module().data_dir() == tmp_path / "one"

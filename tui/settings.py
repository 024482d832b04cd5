"""The user's settings file (``settings.toml`` in the user config folder, ``~/.config/bilevel`` on Linux):
what the app remembers between runs.

Only plain ``key = value`` lines at the top level (the theme today). A file that does not parse is
left untouched and nothing is remembered, rather than overwriting what the user wrote.
"""
from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

SETTINGS_ENV = "BILEVEL_SETTINGS"


def settings_path() -> Path:
    """$BILEVEL_SETTINGS, else the user config folder's (platformdirs: $XDG_CONFIG_HOME or ~/.config on Linux)."""
    return Path(os.environ.get(SETTINGS_ENV, platformdirs.user_config_path("bilevel") / "settings.toml"))


def load_settings(path: Path) -> dict[str, Any] | None:
    """The settings; {} when there is no file, None when it cannot be read (then it is never rewritten)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def remember(path: Path, key: str, value: str | int | float | bool) -> str:
    """Set ``key`` in the file, atomically; the empty string, or why it was not written."""
    settings = load_settings(path)
    if settings is None:
        return f"{path} does not parse as TOML; left as it is"
    if any(isinstance(v, (dict, list)) for v in settings.values()):
        return f"{path} holds tables or lists this app does not rewrite; left as it is"
    settings[key] = value
    # JSON strings, numbers and booleans are valid TOML values
    text = "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in settings.items())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".settings-", suffix=".toml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        return f"could not write {path}: {exc}"
    return ""

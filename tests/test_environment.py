"""The training subprocess's environment is an allow-list: an API key never reaches it."""
from __future__ import annotations

import os

from core.services.environment import allowed, training_env
from core.services.trainer import run_training

KEY = "sk-should-never-reach-train-py"


def test_the_allow_list_passes_what_training_needs_and_drops_credentials() -> None:
    source = {"PATH": "/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/x",
              "BILEVEL_SEED": "1", "OPENAI_API_KEY": KEY, "HF_TOKEN": "t", "BILEVEL_API_KEY": KEY,
              "AWS_SECRET_ACCESS_KEY": "s", "RANDOM_THING": "r", "LC_ALL": "C"}
    env = training_env(source=source)
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/x",
                   "BILEVEL_SEED": "1", "LC_ALL": "C"}
    assert not allowed("BILEVEL_API_KEY")  # the prefix does not let a credential through


def test_a_listed_variable_passes_but_the_endpoint_key_never_does() -> None:
    source = {"WANDB_MODE": "offline", "OPENAI_API_KEY": KEY}
    env = training_env(source=source, listed=["WANDB_MODE", "OPENAI_API_KEY"], never=["OPENAI_API_KEY"])
    assert env == {"WANDB_MODE": "offline"}


async def test_a_script_printing_its_environment_shows_no_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", KEY)
    script = tmp_path / "train.py"
    script.write_text("import os\nfor k, v in sorted(os.environ.items()):\n    print(k, '=', v)\n"
                      "print('---')\nprint('val_bpb: 1.0')\n")
    lines: list[str] = []
    result = await run_training(script, cwd=tmp_path, budget_s=30, log_path=tmp_path / "train.log",
                                on_line=lambda stream, line: lines.append(line),
                                env={"BILEVEL_SEED": "7"})
    assert result.val_bpb == 1.0
    text = "\n".join(lines) + (tmp_path / "train.log").read_text()
    assert KEY not in text
    assert "BILEVEL_SEED = 7" in text and f"PATH = {os.environ['PATH']}" in text

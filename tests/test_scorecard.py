"""`bilevel scorecard` against the scripted OpenAI-protocol server: the plan, the cost printed before
anything runs, and the scorecard in the study's report (and again from `bilevel report`)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from core.cli import main
from core.record.study import Study
from core.run.scorecard import GROUPS, estimate, scorecard_plan
from core.record import config as config_mod
from tests.support import ScriptedOpenAI

CHANGES = [{"MATRIX_LR": 0.05}, {"WARMDOWN_RATIO": 0.6}, {"EMBEDDING_LR": 0.7}, {"WEIGHT_DECAY": 0.25},
           {"SCALAR_LR": 0.6}, {"FINAL_LR_FRAC": 0.05}]
STRATEGY = {"diagnosis": "the rates move the score", "freeze": [], "unfreeze": [], "keep": {},
            "guidance": "try the warmdown next", "reasoning": "the trace"}


def _config(tmp_path: Path, base_url: str, prices: bool = True) -> Path:
    p = tmp_path / "score.toml"
    price = "price_in_per_m = 0.27\nprice_out_per_m = 1.1\n" if prices else ""
    p.write_text(f'name = "s"\n[endpoint]\nprovider = "openai"\nbase_url = "{base_url}"\nmodel = "test-model"\n'
                 f'max_retries = 0\n{price}[run]\nsessions_dir = "{tmp_path / "sessions"}"\n')
    return p


def test_the_plan_runs_the_llm_beside_cmaes_and_offline_on_the_surrogate_with_shared_seeds(tmp_path):
    base = config_mod.load(_config(tmp_path, "http://127.0.0.1:9/v1"))
    plan = scorecard_plan(base, repeats=2, iterations=4)
    assert [c.search.group for c in plan] == [g for g in GROUPS for _ in range(2)]
    assert all(c.surrogate and c.budget.iterations == 4 for c in plan)
    assert [c.offline for c in plan] == [False] * 4 + [True] * 4  # cmaes and offline never call the LLM
    assert {c.search.seed for c in plan if c.search.group == "A"} == {c.search.seed for c in plan
                                                                      if c.search.group == "cmaes"}
    cost = estimate(plan)
    assert cost.calls > 8 and cost.prompt_tokens > cost.completion_tokens > 0 and cost.dollars > 0
    with pytest.raises(config_mod.ConfigError, match="offline"):
        scorecard_plan(config_mod.with_overrides(base, {"endpoint.provider": "offline"}), 1)


def test_the_estimate_is_printed_before_anything_runs(tmp_path, capsys):
    code = main(["scorecard", str(_config(tmp_path, "http://127.0.0.1:9/v1", prices=False)), "--estimate"])
    err = capsys.readouterr().err
    assert code == 0 and "estimated: about" in err and "no price configured" in err
    assert not (tmp_path / "sessions").exists()  # nothing planned on disk, nothing called


@pytest.mark.slow
def test_the_scorecard_runs_every_group_and_its_report_keeps_the_scorecard(tmp_path, capsys):
    changes = itertools.cycle(CHANGES)
    replies = {"garbage": 1}  # the first Level 1 reply is unusable: one re-ask in the record

    def respond(req: dict) -> str:
        system = req["messages"][0]["content"]
        if "search strategy" in system:
            return json.dumps(STRATEGY)
        if replies["garbage"]:
            replies["garbage"] -= 1
            return "I would rather not say."
        return json.dumps({"changes": next(changes), "hypothesis": "a scripted guess that differs each time"})

    with ScriptedOpenAI(responder=respond) as server:
        code = main(["scorecard", str(_config(tmp_path, server.base_url)), "--repeats", "2", "--iterations", "2",
                     "--set", "search.outer_period=1", "--set", "search.research_period=50"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert captured.err.index("estimated: about") < captured.err.index("study: ")  # the cost first
    (study_dir,) = (tmp_path / "sessions").glob("*-study-*")
    study = Study.load(study_dir)
    assert study.kind == "scorecard" and study.groups == list(GROUPS) and study.repeats == 2
    report = (study_dir / "report" / "report.md").read_text()
    table = report[report.index("## Scorecard"):]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:8] if line.startswith("| ") and not line.startswith("| group")}
    assert set(rows) == set(GROUPS)
    header = [c.strip() for c in table.splitlines()[2].split("|")[1:-1]]
    a, cmaes, offline = (dict(zip(header[1:], rows[g])) for g in ("A", "cmaes", "offline"))
    assert a["re-asks"] == "1" and a["valid L1"] == "80 %" and a["L1 1st try"] == "75 %"  # 4 asked, 1 re-asked
    assert a["$"] != "—" and a["tokens"] != "0" and a["Δ vs cmaes [95 % CI]"].startswith(("+", "-"))
    assert cmaes["Δ vs cmaes [95 % CI]"] == "(baseline)" and cmaes["tokens"] == "0" and offline["valid L1"] == "—"
    c = dict(zip(header[1:], rows["C"]))
    assert c["valid L1.5"] == "100 %"  # Level 1.5 answered every cycle
    # `bilevel report` on the study shows the scorecard again, from the kept sessions
    assert main(["report", str(study_dir), "--no-plots", "--out", str(tmp_path / "again")]) == 0
    assert "Scorecard" in capsys.readouterr().out and "## Scorecard" in (tmp_path / "again" / "report.md").read_text()

"""`bilevel report`: statistics on hand-computed cases, and a report on a study generated here from real runs."""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from core.record import events as ev
from core.analysis import stats
from core.analysis.report import build_report, collect, write_report
from core.record.session import SessionReader
from core.record.state import fold
from tests.conftest import llm_config, run_engine
from tests.support.cli import QUADRATIC, run_bilevel, write_fast_config
from tests.support import ScriptedOpenAI



# --- statistics on hand-computed cases -----------------------------------------------------


def test_exact_permutation_p_of_fully_separated_samples():
    # 20 ways to pick 3 of 6; only {1,2,3} and {4,5,6} are as extreme: p = 2/20
    assert stats.permutation_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert stats.permutation_pvalue([4, 5, 6], [1, 2, 3]) == pytest.approx(0.1)


def test_exact_permutation_p_of_identical_samples_is_one():
    assert stats.permutation_pvalue([1, 2], [1, 2]) == pytest.approx(1.0)


def test_sampled_permutation_p_is_reproducible_and_close_to_exact():
    a, b = [0.1, 0.4, 0.3, 0.9, 0.2, 0.5, 0.7, 0.35], [0.6, 0.8, 1.1, 0.75, 0.95, 0.45, 1.2, 0.85]
    exact = stats.permutation_pvalue(a, b, n_resamples=20000)  # 12870 arrangements: enumerated
    sampled = stats.permutation_pvalue(a, b, n_resamples=5000, random_state=7)  # fewer: sampled
    assert sampled == stats.permutation_pvalue(a, b, n_resamples=5000, random_state=7)
    assert abs(sampled - exact) < 0.01


def test_bootstrap_of_two_values_spans_them():
    # resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 95 % interval is [0, 1]
    ci = stats.bootstrap_mean_ci([0.0, 1.0], random_state=3)
    assert (ci.low, ci.high) == (0.0, 1.0)


def test_bootstrap_of_a_constant_is_that_constant_and_of_one_value_is_none():
    ci = stats.bootstrap_mean_ci([0.25, 0.25, 0.25])
    assert (ci.low, ci.high) == (0.25, 0.25)
    assert stats.bootstrap_mean_ci([0.25]) is None


def test_bootstrap_of_a_difference_of_constants_is_the_difference():
    ci = stats.bootstrap_diff_ci([1.0, 1.0], [0.25, 0.25])
    assert (ci.low, ci.high) == (0.75, 0.75)
    wide = stats.bootstrap_diff_ci([0.0, 1.0, 2.0], [0.0, 0.1, 0.2], random_state=1)
    assert wide.low < 0.9 < wide.high  # the true difference of means


def test_summary_std_is_the_sample_std_and_mad_the_median_absolute_deviation():
    s = stats.summarize([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(math.sqrt(7 / 3)) and s.mad == 1.0


def test_neutral_search_shows_the_selection_bias_of_keeping_the_minimum():
    # min of 31 standard normals minus the first: about −2.04σ; a threshold no draw clears keeps Δ at 0
    assert -2.2 < stats.null_search_delta(1.0, 30).mean < -1.9
    assert stats.null_search_delta(1.0, 30, threshold=100.0).mean == 0.0
    assert stats.null_search_delta(1.0, 0).mean == 0.0
    assert stats.null_search_delta(1.0, 30, threshold=2.0).mean > stats.null_search_delta(1.0, 30).mean


def test_missing_scipy_is_a_clear_error_not_a_silent_fallback(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kw):
        if name.startswith("scipy"):
            raise ImportError("no scipy here")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(stats.StatsUnavailable, match=r"bilevel-autoresearch\[report\]"):
        stats.permutation_pvalue([0.1, 0.4], [0.6, 0.8])


# --- a study generated here: groups A and C × 2 repeats × 3 iterations ------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    cfg = write_fast_config(root, name="rep", iterations=3,
                            search_extra="outer_period = 1\nresearch_period = 1")
    noise = run_bilevel("noise", str(cfg), "--runs", "3", cwd=root)
    assert noise.returncode == 0, noise.stderr
    run = run_bilevel("run", str(cfg), "--group", "A,C", "--repeats", "2", "--headless", cwd=root)
    assert run.returncode == 0, run.stderr
    (path,) = [p for p in (root / "sessions").iterdir() if "-study-" in p.name]
    return path


def md_rows(markdown: str, section: str) -> list[list[str]]:
    """The rows of the first table under a ## heading."""
    lines = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]


def states(study: Path) -> dict[str, object]:
    return {name: fold(SessionReader(study / name).events()) for name in ("A-r1", "A-r2", "C-r1", "C-r2")}


def test_markdown_numbers_are_the_numbers_in_the_events(study):
    markdown = (study / "report" / "report.md").read_text()
    rows = {r[2]: r for r in md_rows(markdown, "Per repeat")}
    by_group: dict[str, list[float]] = {}
    for name, s in states(study).items():
        row = rows[name]
        assert row[0] == s.group and row[4] == f"{s.baseline_val_bpb:.6f}" and row[5] == f"{s.best_val_bpb:.6f}"
        assert row[6] == f"{s.best_val_bpb - s.baseline_val_bpb:+.6f}"
        assert row[7] == str(len(s.proposals)) and row[8] == str(sum(r.decision == "keep" for r in s.proposals))
        by_group.setdefault(s.group, []).append(s.best_val_bpb - s.baseline_val_bpb)
    groups = {r[0]: r for r in md_rows(markdown, "Per group")}
    for g, deltas in by_group.items():
        assert groups[g][3] == f"{statistics.mean(deltas):+.6f}" and groups[g][4] == f"{statistics.stdev(deltas):.6f}"
        assert groups[g][6] == "0.000100"  # the floor measured before the study
    (pair,) = md_rows(markdown, "Group comparisons")
    expected = stats.permutation_pvalue(by_group["A"], by_group["C"])
    assert pair[0] == "A − C" and pair[3] == f"{expected:.4f}"


def test_csv_files_carry_the_event_values_at_full_precision(study):
    with open(study / "report" / "repeats.csv") as fh:
        rows = {r["session"]: r for r in csv.DictReader(fh)}
    for name, s in states(study).items():
        assert float(rows[name]["baseline"]) == s.baseline_val_bpb and float(rows[name]["best"]) == s.best_val_bpb
        runs = [e for e in SessionReader(study / name).events() if isinstance(e, ev.TrainingFinished)]
        assert float(rows[name]["device_hours"]) == pytest.approx(sum(e.duration_s for e in runs) / 3600)
    with open(study / "report" / "groups.csv") as fh:
        groups = {r["group"]: r for r in csv.DictReader(fh)}
    for g in groups.values():
        assert float(g["ci_low"]) <= float(g["mean_delta"]) <= float(g["ci_high"])
        assert float(g["neutral_delta_mean"]) <= 0


def test_level2_mechanisms_are_attributed_to_the_iterations_they_ran_in(study):
    with open(study / "report" / "mechanisms.csv") as fh:
        rows = list(csv.DictReader(fh))
    for name in ("C-r1", "C-r2"):
        events = list(SessionReader(study / name).events())
        activated = {e.name for e in events if isinstance(e, ev.MechanismActivated)}
        assert activated, "offline Level 2 activates a built-in mechanism"
        mine = {r["mechanism"]: r for r in rows if r["session"] == name}
        assert set(mine) == activated
        for mech, row in mine.items():
            calls = sum(sum(e.mechanisms.get(mech, {}).values()) for e in events if isinstance(e, ev.IterationFinished))
            vetoes = sum(1 for e in events if isinstance(e, ev.MechanismEffect) and e.name == mech and e.effect == "vetoed")
            assert int(row["hook calls"]) == calls and int(row["vetoed"]) == vetoes
    assert not [r for r in rows if r["group"] == "A"]
    assert "### C / C-r1" in (study / "report" / "report.md").read_text()


def test_parameter_exploration_counts_every_trained_proposal(study):
    with open(study / "report" / "parameters.csv") as fh:
        rows = list(csv.DictReader(fh))
    for group in ("A", "C"):
        proposed = sum(int(r["proposed"]) for r in rows if r["group"] == group)
        changes = sum(len(r.changes) for name, s in states(study).items() if s.group == group
                      for r in s.proposals if r.decision in ("keep", "discard", "crash"))
        assert proposed == changes


def test_report_command_prints_the_table_and_writes_where_told(study, tmp_path):
    done = run_bilevel("report", str(study), "--out", str(tmp_path / "out"), "--no-plots", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Per group" in done.stdout and "A − C" in done.stdout
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.md", "repeats.csv", "groups.csv", "pairwise.csv", "parameters.csv", "mechanisms.csv",
            "iterations.csv"} <= names


def test_report_of_a_path_that_is_no_session_is_a_usage_error(tmp_path):
    done = run_bilevel("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "no session" in done.stderr


def test_figures_are_written_as_png_and_svg(study, tmp_path):
    written = write_report(build_report(collect([study])), tmp_path / "fig")
    names = sorted(p.name for p in written.figures)
    assert names == sorted(f"{stem}.{fmt}" for stem in ("cost", "iterations_1", "iterations_2", "parameters",
                                                         "running_best", "running_best_ci") for fmt in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in written.figures)
    assert (tmp_path / "fig" / "running_best.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![running_best](running_best.png)" in written.markdown.read_text()


def test_without_matplotlib_the_report_says_why_figures_are_missing(study, tmp_path, monkeypatch):
    from core.analysis import plots

    monkeypatch.setattr(plots, "unavailable", lambda: "matplotlib is not installed")
    written = write_report(build_report(collect([study])), tmp_path / "nofig")
    assert not written.figures and "Figures skipped: matplotlib is not installed" in written.markdown.read_text()


# --- cost and comparability ---------------------------------------------------------------------


async def test_tokens_and_dollars_per_level_from_the_llm_responses(tmp_path):
    with ScriptedOpenAI(responder=lambda req: '{"changes": {"LR": 0.03}, "hypothesis": "h"}') as server:
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 2, "endpoint.price_in_per_m": 2.0, "endpoint.price_out_per_m": 8.0}))
    calls = len(rec.of(ev.LLMResponse))
    report = build_report(collect([engine.dir]))
    group = report.group("A")
    assert group.tokens("inner") == (57 * calls, 21 * calls, calls)  # the scripted server's usage per reply
    assert group.level_dollars("inner") == pytest.approx((57 * 2.0 + 21 * 8.0) * calls / 1e6)
    assert group.delta_per_dollar == pytest.approx(group.summary.mean / group.dollars)
    hours = sum(e.duration_s for e in rec.of(ev.TrainingFinished)) / 3600
    assert group.device_hours == pytest.approx(hours)
    assert group.delta_per_device_hour == pytest.approx(group.summary.mean / hours)


async def test_sessions_of_different_scripts_are_flagged_as_not_comparable(tmp_path):
    other = tmp_path / "other_train.py"
    other.write_text(QUADRATIC.read_text().replace("LR = 0.04", "LR = 0.05"))
    from tests.conftest import fast_config

    first, _ = await run_engine(fast_config(tmp_path, **{"budget.iterations": 1}))
    second, _ = await run_engine(fast_config(tmp_path, **{"budget.iterations": 1, "script.path": str(other)}))
    report = build_report(collect([first.dir, second.dir]))
    assert any("not comparable" in w for w in report.warnings)


DRIFTING_SCRIPT = """
from pathlib import Path
LR = 0.04
DEPTH = 4
TIME_BUDGET = 1
runs = Path("runs.count")
n = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(n + 1))
print("---")
print(f"val_bpb: {1.0 + 0.01 * n:.6f}")  # the same seed, a different value every run
"""


async def test_a_workload_that_is_not_deterministic_at_a_fixed_seed_is_flagged(tmp_path, study):
    from tests.conftest import fast_config

    script = tmp_path / "drifting_train.py"
    script.write_text(DRIFTING_SCRIPT)
    sessions = [(await run_engine(fast_config(tmp_path, **{"budget.iterations": 0, "script.path": str(script)})))[0]
                for _ in range(2)]
    report = build_report(collect([s.dir for s in sessions]))
    assert any("not deterministic at a fixed seed" in w and "0.010000" in w for w in report.warnings)
    assert not any("not deterministic" in w for w in build_report(collect([study])).warnings)


async def test_sessions_with_different_settings_are_never_pooled_and_the_report_says_what_differs(tmp_path):
    from core.analysis.report import render_terminal
    from tests.conftest import fast_config

    one, _ = await run_engine(fast_config(tmp_path / "a", **{"budget.iterations": 1}))
    two, _ = await run_engine(fast_config(tmp_path / "b", **{"budget.iterations": 2}))
    report = build_report(collect([one.dir, two.dir]))
    assert sorted(g.group for g in report.groups) == ["A (iterations=1)", "A (iterations=2)"]
    assert any("differ in iterations" in w and "never pooled" in w for w in report.warnings)
    text = render_terminal(report)
    assert "rejected" in text and "level 2" in text

"""The report's figures and its noise marks: their data checked against the events of a real surrogate study,
their drawing against committed image snapshots (BILEVEL_UPDATE_FIGURES=1 rewrites the snapshots; look at them)."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from core.analysis import figure_data as fd
from core.analysis import plots
from core.analysis.keeps import BEYOND, WITHIN, KeepVerdict
from core.analysis.report import build_report, collect, write_report
from core.record import events as ev
from core.record.session import SessionReader
from tests.support.cli import run_bilevel

pytest.importorskip("matplotlib")

SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_report_figures"
SIGMA = 0.0005  # baseline/surrogate.py's NOISE_SIGMA, which it prints as noise_sigma


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Groups B (freezes) and C (mechanisms) × 2 repeats × 12 iterations on the surrogate, run as a user runs it."""
    root = tmp_path_factory.mktemp("surrogate-study")
    done = run_bilevel("run", "--demo", "--group", "B,C", "--repeats", "2", "--set", "script.preset=surrogate",
                       "--set", "search.outer_period=2", "--set", "search.research_period=1", "--iterations", "12",
                       # the paper's rule keeps any improvement, so some keeps fall within 2σ (the default rule's
                       # margin would keep none of those, and the report would have nothing to mark)
                       "--set", "acceptance.rule=paper",
                       "--headless", cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = [p for p in (root / "sessions").iterdir() if "-study-" in p.name]
    return path


@pytest.fixture(scope="module")
def report(study):
    return build_report(collect([study]))


def events(study: Path, name: str) -> list[ev.Event]:
    return list(SessionReader(study / name).events())


def keeps_from_events(evs: list[ev.Event]) -> dict[int, float]:
    """keep iteration -> best before − val_bpb, straight from the log."""
    return {e.iteration: e.best_before - e.val_bpb for e in evs
            if isinstance(e, ev.IterationFinished) and e.decision == "keep"}


# --- σ and the keeps within noise ------------------------------------------------------------


def test_the_surrogates_declared_sigma_is_each_sessions_and_each_groups_sigma(report):
    for s in report.sessions:
        assert s.sigma.value == SIGMA and s.sigma.source == "declared by the script"
    for g in report.groups:
        assert g.noise_std == SIGMA and g.sigma_source == "declared by the script" and g.null is not None
        assert not any("no noise floor known" in w for w in report.warnings)


def test_a_keep_is_within_noise_exactly_when_it_beat_the_best_by_at_most_two_sigma(study, report):
    judged = 0
    for s in report.sessions:
        expected = {it: (WITHIN if gain <= 2 * SIGMA else BEYOND) for it, gain in keeps_from_events(events(study, s.name)).items()}
        assert {it: v.verdict for it, v in s.verdicts.items()} == expected
        judged += len(expected)
    assert judged >= 3, "the study has keeps to judge"
    assert {v.verdict for s in report.sessions for v in s.verdicts.values()} == {WITHIN, BEYOND}, \
        "the seeds give both kinds of keep; if the surrogate changed, pick other groups or iterations"


def test_keeps_that_held_per_group_and_the_keeps_table_mark_the_noise_keeps(study, report, tmp_path):
    written = write_report(report, tmp_path / "out", plots=False)
    text = written.markdown.read_text()
    for g in report.groups:
        gains = [gain for s in g.sessions for gain in keeps_from_events(events(study, s.name)).values()]
        beyond = sum(gain > 2 * SIGMA for gain in gains)
        assert g.held == (beyond, len(gains) - beyond, 0)
        row = next(ln for ln in text.split("## Per group", 1)[1].splitlines() if ln.startswith(f"| {g.group} |"))
        assert row.rstrip(" |").endswith(f"{beyond} of {len(gains)}")
    keeps = text.split("## Keeps", 1)[1].split("\n## ", 1)[0]
    within = sum(v.verdict == WITHIN for s in report.sessions for v in s.verdicts.values())
    assert sum(ln.startswith("|") and ln.endswith("| **within noise** |") for ln in keeps.splitlines()) == within
    with open(tmp_path / "out" / "iterations.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["decision"] == "keep"]
    assert sum(r["keep_verdict"] == WITHIN for r in rows) == within
    assert all(float(r["improvement_sigmas"]) > 0 for r in rows)


def test_the_verdict_source_is_pluggable(study):
    class NothingHeld:  # as the keep-chain audit will: its own verdict on each keep
        name = "held on fresh seeds"

        def __call__(self, state, sigma):
            return {r.iteration: KeepVerdict(r.iteration, r.best_before - r.val_bpb, None, "did not hold")
                    for r in state.proposals if r.decision == "keep"}

    audited = build_report(collect([study]), verdicts=NothingHeld())
    assert audited.verdict_name == "held on fresh seeds"
    assert all(g.held == (0, 0, sum(s.count("keep") for s in g.sessions)) for g in audited.groups)
    judged = build_report(collect([study]), noise_k=0.0)  # k = 0: every keep that improved stands out
    assert all(g.held[0] == sum(s.count("keep") for s in g.sessions) for g in judged.groups)


def test_the_report_command_takes_k_and_refuses_a_negative_one(study, report, tmp_path):
    done = run_bilevel("report", str(study), "--out", str(tmp_path / "k0"), "--no-plots", "--noise-k", "0",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "k0" / "groups.csv") as fh:
        rows = {r["group"]: r for r in csv.DictReader(fh)}
    for g in report.groups:  # k = 0: every keep improved, so every keep held
        assert int(rows[g.group]["keeps_held"]) == sum(s.count("keep") for s in g.sessions)
    assert "at most 0σ" in (tmp_path / "k0" / "report.md").read_text()
    bad = run_bilevel("report", str(study), "--out", str(tmp_path / "bad"), "--no-plots", "--noise-k", "-1",
                      cwd=tmp_path)
    assert bad.returncode == 2 and "finite number ≥ 0" in bad.stderr


def test_training_device_seconds_are_the_summed_run_durations_and_price_the_gain(study, report):
    for g in report.groups:
        per_repeat = []
        for s in g.sessions:
            runs = [e.duration_s for e in events(study, s.name) if isinstance(e, ev.TrainingFinished)]
            assert s.device_seconds == pytest.approx(sum(runs))  # one CPU slot: one device per run
            per_repeat.append(sum(runs))
        assert g.device_seconds == pytest.approx(sum(per_repeat) / len(per_repeat))
        if g.summary.mean < 0:
            assert g.seconds_per_milli_gain == pytest.approx(g.device_seconds / (-g.summary.mean * 1000))


# --- what the figures draw ----------------------------------------------------------------------


def test_every_iteration_is_a_point_and_unscored_ones_carry_no_value(study, report):
    data = fd.figure_data(report)
    for group, traces in data.traces.items():
        for t in traces:
            finished = [e for e in events(study, t.session) if isinstance(e, ev.IterationFinished)]
            assert [p.iteration for p in t.points] == [e.iteration for e in finished]
            for p, e in zip(t.points, finished):
                if e.decision in ("crash", "rejected"):
                    assert p.kind in fd.UNSCORED and p.val_bpb is None
                else:
                    assert p.val_bpb == e.val_bpb
                    verdict = report_session(report, t.session).verdicts.get(e.iteration)
                    assert (p.kind == fd.KEPT_NOISE) == (verdict is not None and verdict.verdict == WITHIN)
            assert t.sigma == SIGMA and t.best[-1][1] == min(e.val_bpb for e in finished
                                                             if e.decision in ("baseline", "keep"))
    kinds = {p.kind for ts in data.traces.values() for t in ts for p in t.points}
    assert {fd.BASELINE, fd.KEPT, fd.KEPT_NOISE, fd.DISCARDED, fd.CRASHED} <= kinds


def report_session(report, name):
    return next(s for s in report.sessions if s.name == name)


def test_marks_fall_after_the_iteration_that_finished_before_each_activation_and_freeze(study, report):
    data = fd.figure_data(report)
    seen = set()
    for traces in data.traces.values():
        for t in traces:
            last, expected = -1, []
            for e in events(study, t.session):
                if isinstance(e, ev.IterationFinished):
                    last = e.iteration
                elif isinstance(e, ev.MechanismActivated):
                    expected.append((last + 0.5, "mechanism on", e.name))
                elif isinstance(e, ev.ParamFrozen):
                    expected.append((last + 0.5, "freeze", e.name))
            drawn = [(m.x, m.kind, name) for m in t.marks if m.kind in ("mechanism on", "freeze")
                     for name in m.label.split(", ")]
            assert sorted(drawn) == sorted(expected)
            seen |= {kind for _, kind, _ in expected}
    assert seen == {"mechanism on", "freeze"}, "group C activates mechanisms and group B freezes parameters"


def test_a_band_has_an_interval_only_with_two_repeats(study, report):
    two = fd.running_best_bands(report)
    assert [b.n for b in two] == [2, 2] and all(b.has_ci for b in two)
    assert all(low <= mean <= high for b in two for _, mean, low, high in b.rows)
    one = fd.running_best_bands(build_report(collect([study / "B-r1"])))
    assert one[0].n == 1 and not one[0].has_ci and all(r[2] is None and r[3] is None for r in one[0].rows)


def test_effect_bars_keep_kept_changes_apart_from_discarded_ones(study, report):
    rows = fd.effect_rows(report)
    for group in ("B", "C"):
        kept, dropped = [], []
        for s in report.group(group).sessions:
            for e in events(study, s.name):
                if isinstance(e, ev.IterationFinished) and e.decision in ("keep", "discard"):
                    (kept if e.decision == "keep" else dropped).extend([e.val_bpb - e.best_before] * len(e.changes.params))
        mine = [r for r in rows if r.group == group]
        assert sorted(x for r in mine for x in r.kept) == pytest.approx(sorted(kept))
        assert sorted(x for r in mine for x in r.discarded) == pytest.approx(sorted(dropped))
    assert all(x < 0 for r in rows for x in r.kept)  # a keep beat the best: its own bar cannot look harmful


def test_each_group_has_one_colour_in_every_figure():
    colors = fd.group_colors(["A", "tpe", "C", "A (model=x)", "A (model=y)"])
    assert colors["A"] == fd.FIXED_COLORS["A"] and colors["C"] == fd.FIXED_COLORS["C"]
    assert len(set(colors.values())) == 5
    assert fd.group_colors(["C", "A"]) == {"C": fd.FIXED_COLORS["C"], "A": fd.FIXED_COLORS["A"]}


def test_surrogate_figures_say_so_and_an_unbanded_group_says_why(report, tmp_path):
    written = write_report(report, tmp_path / "fig")
    names = sorted(p.name for p in written.figures if p.suffix == ".svg")
    assert names == ["cost.svg", "iterations_1.svg", "iterations_2.svg", "parameters.svg", "running_best.svg",
                     "running_best_ci.svg"]
    for p in written.figures:
        if p.suffix == ".svg":
            assert "SURROGATE" in p.read_text(), p.name
    data = fd.figure_data(report)
    data.bands[0] = fd.Band(data.bands[0].group, 1, [(i, m, None, None) for i, m, _, _ in data.bands[0].rows])
    (svg,) = plots.running_best_band_figure(data.bands, data.colors, tmp_path / "one", formats=("svg",))
    assert "no interval for B" in svg.read_text() and "(n=1, no CI)" in svg.read_text()


def test_an_audited_sessions_trace_carries_the_audits_verdict_on_each_keep(tmp_path):
    """A session audited at its end: the trace of its figure holds the audit's measured verdicts, keyed by keep
    (superseded and unmeasured keeps are not drawn as verdicts); a session never audited has none."""
    from core.record.session import SessionWriter
    from tests.support.scripted_engine import StepClock

    path = tmp_path / "audited"
    writer = SessionWriter(path, clock=StepClock())
    try:
        for e in [ev.SessionStarted(session="audited", group="A", levels=["inner"], provider="offline",
                                    config={"budget": {"iterations": 4}}),
                  ev.IterationFinished(iteration=0, decision="baseline", val_bpb=1.0, best_after=1.0),
                  ev.IterationFinished(iteration=1, decision="keep", val_bpb=0.99, best_before=1.0, best_after=0.99),
                  ev.IterationFinished(iteration=2, decision="discard", val_bpb=1.0, best_before=0.99, best_after=0.99),
                  ev.IterationFinished(iteration=3, decision="keep", val_bpb=0.985, best_before=0.99, best_after=0.985),
                  ev.IterationFinished(iteration=4, decision="keep", val_bpb=0.98, best_before=0.985, best_after=0.98),
                  ev.RunFinished(status="completed", iterations=4),
                  ev.AuditPlanned(audit=1, repeats=3, chain=[1, 3, 4], keeps=[1, 3, 4]),
                  ev.AuditVerdict(audit=1, iteration=1, effect=0.01, ci_low=0.005, ci_high=0.015, verdict="holds"),
                  ev.AuditVerdict(audit=1, iteration=3, effect=0.0, ci_low=-0.004, ci_high=0.004,
                                  verdict="within noise"),
                  ev.AuditVerdict(audit=1, iteration=4, verdict="unmeasured"),
                  ev.AuditFinished(audit=1, status="completed")]:
            writer.append(e)
    finally:
        writer.close()
    (trace,) = fd.figure_data(build_report(collect([path]))).traces["A"]
    assert trace.audit == {1: "holds", 3: "within noise"}
    # the report judges a keep by its audit where one finished: the keep the audit found within noise is drawn so
    assert {p.iteration: p.kind for p in trace.points if p.iteration in trace.audit} == {1: fd.KEPT, 3: fd.KEPT_NOISE}


def test_the_running_best_figure_draws_every_iteration_and_the_marks(report, tmp_path):
    written = write_report(report, tmp_path / "rb")
    svg = next(p for p in written.figures if p.name == "running_best.svg").read_text()
    assert "dots: every iteration" in svg and "tick: mechanism activated" in svg and "tick: parameter frozen" in svg
    assert "SURROGATE" in svg


# --- image snapshots of each figure kind -------------------------------------------------------


def _trace(group: str, session: str, sigma: float | None) -> fd.SessionTrace:
    pts = [fd.TracePoint(0, fd.BASELINE, 1.000), fd.TracePoint(1, fd.DISCARDED, 1.004),
           fd.TracePoint(2, fd.KEPT, 0.990), fd.TracePoint(3, fd.CRASHED, None),
           fd.TracePoint(4, fd.KEPT_NOISE if sigma else fd.KEPT, 0.9895), fd.TracePoint(5, fd.REJECTED, None),
           fd.TracePoint(6, fd.DISCARDED, 0.996), fd.TracePoint(7, fd.KEPT, 0.981)]
    best = [(0, 1.0), (1, 1.0), (2, 0.99), (3, 0.99), (4, 0.9895), (5, 0.9895), (6, 0.9895), (7, 0.981)]
    marks = [fd.TraceMark(2.5, "mechanism on", "tabu"), fd.TraceMark(4.5, "freeze", "LR, WD"),
             fd.TraceMark(5.5, "mechanism off", "tabu")]
    return fd.SessionTrace(group, session, pts, best, 1.0, marks, sigma)


def _bands() -> list[fd.Band]:
    rows3 = [(i, -0.002 * i, -0.003 * i, -0.001 * i) for i in range(6)]
    return [fd.Band("A", 3, rows3), fd.Band("C", 1, [(i, -0.004 * i, None, None) for i in range(6)])]


def _effects() -> tuple[list[fd.EffectRow], dict]:
    effects = [fd.EffectRow("A", "LR", (-0.01, -0.004), (0.02, 0.01)), fd.EffectRow("C", "LR", (-0.02,), (0.03,)),
               fd.EffectRow("A", "WD", (), (0.005,))]
    return effects, {("A", "LR"): (4, 2), ("C", "LR"): (2, 1), ("A", "WD"): (1, 0)}


def _audited(trace: fd.SessionTrace) -> fd.SessionTrace:
    trace.audit = {2: "holds", 4: "within noise", 7: "harmful"}
    return trace


COLORS = fd.group_colors(["A", "C"])
KINDS = {
    "trace": lambda stem: plots.trace_figure([_trace("A", "A-r1", 0.002), _trace("A", "A-r2", 0.002)], COLORS["A"],
                                             stem, surrogate=True, formats=("png",), dpi=60),
    "trace_no_sigma": lambda stem: plots.trace_figure([_trace("C", "C-r1", None)], COLORS["C"], stem,
                                                      formats=("png",), dpi=60),
    "band": lambda stem: plots.running_best_band_figure(_bands(), COLORS, stem, surrogate=True, formats=("png",),
                                                        dpi=60),
    "effects": lambda stem: plots.exploration_figure(*_effects(), COLORS, stem, formats=("png",), dpi=60),
    "cost": lambda stem: plots.cost_figure([("A", "A-r1", 10.0, -0.01), ("A", "A-r2", 12.0, -0.004),
                                            ("C", "C-r1", 11.0, -0.02)], COLORS, stem, formats=("png",), dpi=60),
    "trace_audited": lambda stem: plots.trace_figure([_audited(_trace("C", "C-r1", None))], COLORS["C"], stem,
                                                     formats=("png",), dpi=60),
    "running_best": lambda stem: plots.running_best_figure(
        {"A": [_trace("A", "r", None).best], "C": [[(0, 1.0), (3, 0.97), (7, 0.97)]]}, {"A": [1.0], "C": [1.0]},
        COLORS, stem, surrogate=True, formats=("png",), dpi=60,
        points={"A": [[(p.iteration, p.val_bpb) for p in _trace("A", "r", None).points if p.val_bpb is not None]],
                "C": [[(0, 1.0), (1, 1.01), (2, 0.985), (3, 0.97), (5, 0.99), (7, 0.975)]]},
        marks={"A": [[(2.5, "mechanism on"), (4.5, "freeze")]], "C": [[(1.5, "mechanism on")]]}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_figure_kind_matches_its_snapshot(kind, tmp_path):
    from matplotlib.testing.compare import compare_images

    (png,) = KINDS[kind](tmp_path / kind)
    expected = SNAPSHOTS / f"{kind}.png"
    if os.environ.get("BILEVEL_UPDATE_FIGURES") == "1":
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, expected)
    assert expected.is_file(), f"no snapshot {expected}: run with BILEVEL_UPDATE_FIGURES=1 and look at it"
    diff = compare_images(str(expected), str(png), tol=2.0)
    assert diff is None, diff


def test_a_snapshot_comparison_catches_a_changed_figure(tmp_path):
    from matplotlib.testing.compare import compare_images

    # the snapshot's figure with one thing less: the second repeat's noise band
    (png,) = plots.trace_figure([_trace("A", "A-r1", 0.002), _trace("A", "A-r2", None)], COLORS["A"],
                                tmp_path / "changed", surrogate=True, formats=("png",), dpi=60)
    assert compare_images(str(SNAPSHOTS / "trace.png"), str(png), tol=2.0) is not None

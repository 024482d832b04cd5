"""The ablation report: what each group achieved, how sure we can be, and what it cost.

The numbers come from :mod:`core.analysis.ablation` (sessions folded from their events,
statistics per group and between groups); this module renders them: tokens, dollars and
device-hours; which parameters each group explored; and, for Level 2 groups, which
mechanism was active at each iteration and what it did. Output: a terminal table,
Markdown, CSV and figures.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.analysis.audit_report import audit_figure, audit_section
from core.analysis.ablation import (LEVEL_NAMES, Comparison, GroupStats, Inputs, Report, ReportError,  # noqa: F401
                                    SessionData, build_report, collect, load_session, parameter_rows)
from core.analysis.figure_data import Figures, figure_data
from core.analysis.keeps import WITHIN
from core.analysis.scorecard import SCORE_HEADER, SCORE_NOTE, score_cells, scorecard_rows
from core.analysis.stats import Interval
from core.record.attribution import keeps_held
from core.record.config import is_surrogate
from core.record.layout import report_dir
from core.record.safe_text import safe_block, safe_line

SURROGATE_NOTE = ("SURROGATE: these sessions ran baseline/surrogate.py (script.preset = \"surrogate\"): val_bpb is "
                  "a documented response surface plus seeded noise, not a training run")
EFFECTS = ("prompt", "vetoed", "modified", "overrode")


# --- rendering ------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 6, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _ci(i: Interval | None) -> str:
    return "—" if i is None else f"[{i.low:+.6f}, {i.high:+.6f}]"


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.4f}"


def _money(v: float | None) -> str:
    return "—" if v is None else f"${v:.4f}"


def repeat_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        for s in g.sessions:
            rows.append([g.group, str(s.repeat or "—"), s.name, str(s.seed), _f(s.baseline), _f(s.best),
                         _f(s.delta, signed=True), str(len(s.proposals)), str(s.count("keep")), str(s.count("crash")),
                         str(s.count("rejected")), level2_outcomes(s), f"{s.device_hours:.4f}", s.state.status,
                         _sigma(s.sigma and s.sigma.value, s.sigma and s.sigma.source), _held(s.held),
                         f"{s.device_seconds:.1f}"])
    return rows


REPEAT_HEADER = ["group", "repeat", "session", "seed", "baseline", "best", "Δ", "iterations", "kept", "crashed",
                 "rejected", "level 2", "device-h", "status", "σ", "keeps that held", "training device-s"]


def _sigma(value: float | None, source: str | None) -> str:
    return "—" if value is None else f"{value:.6f} ({source})"


def _held(counts: tuple[int, int, int]) -> str:
    """'2 of 3' (held of judged), '— of 2' when no keep could be judged, '—' without keeps."""
    held, not_held, unknown = counts
    if held + not_held == 0:
        return f"— of {unknown}" if unknown else "—"
    return f"{held} of {held + not_held}" + (f" (+{unknown} unjudged)" if unknown else "")


def level2_outcomes(s: SessionData) -> str:
    """This session's Level 2 research outcomes, e.g. "activated 1, rejected 2"; "—" without any."""
    counts: dict[str, int] = {}
    for outcome in s.state.research.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"
GROUP_HEADER = ["group", "levels", "n", "mean Δ", "std Δ", "95% CI of mean Δ", "σ (noise)", "mean Δ/σ",
                "neutral-search Δ", "keeps that held"]
PAIR_HEADER = ["comparison", "difference of mean Δ", "95% CI", "permutation p"]


def group_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        null = "—" if g.null is None else f"{g.null.mean:+.6f} [{g.null.low:+.6f}, {g.null.high:+.6f}]"
        rows.append([g.group, "+".join(g.levels), str(g.summary.n), _f(g.summary.mean, signed=True),
                     _f(g.summary.std), _ci(g.ci), _f(g.noise_std),
                     "—" if g.mean_sigmas is None else f"{g.mean_sigmas:+.2f}", null, _held(g.held)])
    return rows


def pair_rows(report: Report) -> list[list[str]]:
    return [[f"{c.first} − {c.second}", _f(c.difference, signed=True), _ci(c.ci), _p(c.pvalue)]
            for c in report.comparisons]


COST_HEADER = ["group", "tokens inner", "tokens strategy", "tokens research", "$ inner", "$ strategy", "$ research",
               "device-h / repeat", "Δ per device-h", "Δ per $", "training device-s / repeat",
               "device-s per 0.001 gained"]


def cost_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        toks = [g.tokens(level) for level in LEVEL_NAMES]
        rows.append([g.group, *[f"{p:,}+{c:,}" for p, c, _ in toks],
                     *[_money(g.level_dollars(level)) for level in LEVEL_NAMES],
                     f"{g.device_hours:.4f}", _f(g.delta_per_device_hour, 4, signed=True),
                     _f(g.delta_per_dollar, 4, signed=True), f"{g.device_seconds:.1f}",
                     _f(g.seconds_per_milli_gain, 1)])
    return rows


KEEP_HEADER = ["group", "session", "iteration", "changes", "val_bpb", "improvement", "improvement / σ", "verdict"]


def change_cell(change: Any) -> str:
    """A keep's change in one cell: its constants, and "code: N edits" for a code keep (search.scope = "code")."""
    params = json.dumps(change.params, ensure_ascii=False) if change.params else ""
    edits = getattr(change, "edits", [])
    code = f"code: {len(edits)} edit{'s' if len(edits) != 1 else ''}" if edits else ""
    return " + ".join(p for p in (code, params) if p)[:80] or "{}"


def keep_rows(report: Report) -> list[list[str]]:
    """Every keep with its improvement over the best before it, in σ where σ is known, and its verdict."""
    rows = []
    for g in report.groups:
        for s in g.sessions:
            records = {r.iteration: r for r in s.proposals}
            for it, v in sorted(s.verdicts.items()):
                r = records[it]
                verdict = f"**{v.verdict}**" if v.verdict == WITHIN else v.verdict
                rows.append([g.group, s.name, str(it), change_cell(r.changes),
                             _f(r.val_bpb), _f(v.improvement, signed=True),
                             "—" if v.sigmas is None else f"{v.sigmas:.2f}", verdict])
    return rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # names, reasons and effects come from configs, mechanisms and LLMs: one line per cell
    header, rows = [safe_line(c) for c in header], [[safe_line(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda c: safe_line(c).replace("|", "\\|")  # noqa: E731 - one line per cell, as text_table
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def render_terminal(report: Report) -> str:
    parts = [SURROGATE_NOTE, ""] if report_is_surrogate(report) else []
    parts += ["Per repeat (Δ = best − baseline; negative is better)", text_table(REPEAT_HEADER, repeat_rows(report)),
             "", "Per group", text_table(GROUP_HEADER, group_rows(report))]
    if report.comparisons:
        parts += ["", "Group comparisons", text_table(PAIR_HEADER, pair_rows(report))]
    parts += ["", "Cost", text_table(COST_HEADER, cost_rows(report))]
    if report.scorecard:
        parts += ["", "Scorecard (the endpoint's LLM beside CMA-ES and offline mode)",
                  text_table(SCORE_HEADER, score_cells(scorecard_rows(report, random_state=report.seed)))]
    if report.warnings:
        parts += ["", *[f"warning: {safe_line(w)}" for w in report.warnings]]
    return safe_block("\n".join(parts))


def render_markdown(report: Report, figures: Sequence[Path] = (), figure_note: str = "") -> str:
    kinds = {s.device_kind for s in report.sessions}
    out = ["# bilevel report" + (" — SURROGATE workload" if report_is_surrogate(report) else ""), "",
           *([f"**{SURROGATE_NOTE}**", ""] if report_is_surrogate(report) else []),
           f"{len(report.sessions)} session(s) in {len(report.groups)} group(s). Δ = best − baseline val_bpb "
           "(negative is better). Intervals: percentile bootstrap of the mean, 95 %; p: two-sided permutation "
           f"test of the difference of means (random state {report.seed}). Device-hours are "
           f"{'GPU' if kinds == {'gpu'} else 'CPU' if kinds == {'cpu'} else 'device'}-hours: training time × devices.",
           ""]
    floors = {g.noise.fingerprint: g.noise for g in report.groups if g.noise is not None}
    for f in floors.values():
        out += [f"Noise floor σ = {f.std:.6f} (MAD {f.mad:.6f}) over {f.runs} seeds for fingerprint "
                f"{f.fingerprint} [{f.hardware}]" + (f", measured in {f.session}" if f.session else "") + ".", ""]
    for g in report.groups:
        if g.noise is None and g.noise_std is not None:
            out += [f"Group {g.group}: σ = {g.noise_std:.6f}, {g.sigma_source} (no measured floor).", ""]
    out += [f"A keep is *within noise* when it beat the best before it by at most {report.noise_k:g}σ; "
            f"*keeps that held* counts the keeps judged {report.verdict_name or 'held'}. Training device-s: "
            "the sum of the training runs' durations × devices (never wall time, which measures the machine's load).",
            ""]
    if report.scorecard:
        out += ["## Scorecard", "", md_table(SCORE_HEADER, score_cells(scorecard_rows(report, random_state=report.seed))),
                "", SCORE_NOTE, ""]
    if report.warnings:
        out += ["**Read with care:**", "", *[f"- {safe_line(w)}" for w in report.warnings], ""]
    if report.notes:
        out += ["Notes:", "", *[f"- {safe_line(n)}" for n in report.notes], ""]
    out += ["## Per repeat", "", md_table(REPEAT_HEADER, repeat_rows(report)), "",
            "## Per group", "", md_table(GROUP_HEADER, group_rows(report)), "",
            "*neutral-search Δ*: mean [95 % range] of Δ for a search whose changes do nothing, from selection "
            "among runs with the measured noise σ under the same keep rule and iteration count.", ""]
    if report.comparisons:
        out += ["## Group comparisons", "", md_table(PAIR_HEADER, pair_rows(report)), ""]
    out += ["## Cost", "", md_table(COST_HEADER, cost_rows(report)), "",
            "Tokens are prompt+completion summed over the group's repeats; dollars at the model's price "
            "(`[endpoint] price_in_per_m` / `price_out_per_m`, the `[prices]` table, $0 on a local server, the "
            "built-in table; — where no price is known).", ""]
    params = parameter_rows(report)
    if params:
        out += ["## Parameters explored", "",
                md_table(["group", "parameter", "proposed", "kept", "crashed", "mean effect", "best effect"],
                         [[p.group, p.name, str(p.proposed), str(p.kept), str(p.crashed), _f(p.mean_effect, signed=True),
                           _f(p.best_effect, signed=True)] for p in params]),
                "", "*effect*: val_bpb − best before, over the proposals that touched the parameter and scored.", ""]
    keeps = keep_rows(report)
    if keeps:
        out += ["## Keeps", "", md_table(KEEP_HEADER, keeps), "",
                f"*improvement*: best before − val_bpb; **within noise** marks a keep no larger than "
                f"{report.noise_k:g}σ.", ""]
    out += _mechanism_section(report)
    out += audit_section(report.sessions)  # core/analysis/audit_report.py
    if figures or figure_note:
        out += ["## Figures", ""]
        out += [f"![{f.stem}]({f.name})" for f in figures if f.suffix == ".png"]
        if figure_note:
            out += [figure_note]
        out.append("")
    return safe_block("\n".join(out))  # session names, paths and hardware strings are not ours either


def _mechanism_section(report: Report) -> list[str]:
    level2 = [g for g in report.groups if "research" in g.levels or any(s.mechanisms for s in g.sessions)]
    if not level2:
        return []
    out = ["## Mechanisms", "",
           "Which search mechanism was active at each iteration and what it did (hook calls from "
           "IterationFinished; proposals whose prompt it shaped, vetoes, modifications and overrides from "
           "MechanismEffect); the keeps that followed while it was active, and how many of those held in the "
           "keep-chain audit (held of measured).", ""]
    for g in level2:
        for s in g.sessions:
            out.append(f"### {safe_line(g.group)} / {safe_line(s.name)}")
            out.append("")
            if not s.mechanisms:
                out += ["No mechanism was active.", ""]
                continue
            out.append(md_table(mechanism_header(), [r[2:] for r in mechanism_rows_for(g.group, s)]))
            out.append("")
            timeline = [[str(it), t.phase if t.final else "", ", ".join(t.active) or "—",
                         "; ".join(f"{name} {effect}: {detail[:80]}" for name, effect, detail in t.effects) or "—"]
                        for it, t in sorted(s.timeline.items())]
            if timeline:
                out += [md_table(["iteration", "decision", "active", "effects"], timeline), ""]
    return out


# the effects' columns: a "prompt" effect is one proposal whose prompt the mechanism shaped
EFFECT_COLUMNS = {"prompt": "proposals shaped", "vetoed": "vetoed", "modified": "modified", "overrode": "overrode"}


def mechanism_header() -> list[str]:
    return ["mechanism", "origin", "active from", "iterations active", "hook calls",
            *[EFFECT_COLUMNS[k] for k in EFFECTS], "keeps that followed", "held in the audit", "deactivated"]


def mechanism_rows_for(group: str, s: SessionData) -> list[list[str]]:
    rows = []
    for m in s.mechanisms.values():
        start = "start" if m.activated_after is None else f"after #{m.activated_after}"
        off = "—" if m.deactivated_after is None and not m.deactivation_reason else (
            f"after #{m.deactivated_after}: {m.deactivation_reason[:60]}")
        held = keeps_held(s.state, m)  # core/record/attribution.py: the same count the ledger records
        rows.append([group, s.name, m.name, m.origin or "—", start, str(len(m.iterations)), str(sum(m.calls.values())),
                     *[str(m.effects.get(k, 0)) for k in EFFECTS], str(len(held.keeps)), held.text(), off])
    return rows


# --- files -------------------------------------------------------------------------------------


def _raw(v: Any) -> Any:
    return "" if v is None else v


def write_csvs(report: Report, out: Path) -> list[Path]:
    files = {
        "repeats.csv": (["group", "repeat", "session", "seed", "baseline", "best", "delta", "iterations", "kept",
                         "crashed", "device_hours", "train_runs", "dollars", "status", "fingerprint", "sigma",
                         "sigma_source", "keeps_held", "keeps_not_held", "keeps_unjudged", "training_device_seconds"],
                        [[g.group, _raw(s.repeat), s.name, s.seed, _raw(s.baseline), _raw(s.best), _raw(s.delta),
                          len(s.proposals), s.count("keep"), s.count("crash"), s.device_hours, s.train_runs,
                          _raw(s.total_dollars), s.state.status, s.fingerprint, _raw(s.sigma and s.sigma.value),
                          _raw(s.sigma and s.sigma.source), *s.held, s.device_seconds]
                         for g in report.groups for s in g.sessions]),
        "groups.csv": (["group", "levels", "n", "mean_delta", "std_delta", "mad_delta", "ci_low", "ci_high", "noise_std",
                        "mean_delta_sigmas", "neutral_delta_mean", "neutral_delta_low", "neutral_delta_high",
                        "device_hours_per_repeat", "dollars_per_repeat", "delta_per_device_hour", "delta_per_dollar",
                        *[f"{lv}_{k}" for lv in LEVEL_NAMES for k in ("prompt_tokens", "completion_tokens", "dollars")],
                        "sigma_source", "keeps_held", "keeps_not_held", "keeps_unjudged",
                        "training_device_seconds_per_repeat", "device_seconds_per_milli_gain"],
                       [[g.group, "+".join(g.levels), g.summary.n, _raw(g.summary.mean), _raw(g.summary.std),
                         _raw(g.summary.mad), _raw(g.ci and g.ci.low), _raw(g.ci and g.ci.high), _raw(g.noise_std),
                         _raw(g.mean_sigmas), _raw(g.null and g.null.mean), _raw(g.null and g.null.low),
                         _raw(g.null and g.null.high), g.device_hours, _raw(g.dollars), _raw(g.delta_per_device_hour),
                         _raw(g.delta_per_dollar),
                         *[x for lv in LEVEL_NAMES for x in (*g.tokens(lv)[:2], _raw(g.level_dollars(lv)))],
                         g.sigma_source, *g.held, g.device_seconds, _raw(g.seconds_per_milli_gain)]
                        for g in report.groups]),
        "pairwise.csv": (["first", "second", "difference", "ci_low", "ci_high", "pvalue"],
                         [[c.first, c.second, c.difference, _raw(c.ci and c.ci.low), _raw(c.ci and c.ci.high),
                           _raw(c.pvalue)] for c in report.comparisons]),
        "iterations.csv": (["group", "session", "iteration", "decision", "val_bpb", "best_before", "best_after",
                            "changes", "rule", "source", "keep_verdict", "improvement_sigmas"],
                           [[g.group, s.name, r.iteration, r.decision, _raw(r.val_bpb), _raw(r.best_before),
                             _raw(r.best_after), json.dumps(r.changes.params, ensure_ascii=False), r.rule, r.source,
                             *_verdict_cells(s, r.iteration)]
                            for g in report.groups for s in g.sessions for r in s.state.records]),
        "parameters.csv": (["group", "parameter", "proposed", "kept", "crashed", "mean_effect", "best_effect",
                            "mean_kept_effect", "mean_discarded_effect"],
                           [[p.group, p.name, p.proposed, p.kept, p.crashed, _raw(p.mean_effect), _raw(p.best_effect),
                             _raw(p.mean_kept_effect), _raw(p.mean_discarded_effect)]
                            for p in parameter_rows(report)]),
        "mechanisms.csv": (["group", "session", *mechanism_header()],
                           [row for g in report.groups for s in g.sessions for row in mechanism_rows_for(g.group, s)]),
    }
    written = []
    for name, (header, rows) in files.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        path = out / name
        path.write_text(buf.getvalue(), encoding="utf-8")
        written.append(path)
    return written


def _verdict_cells(s: SessionData, iteration: int) -> list[Any]:
    v = s.verdicts.get(iteration)
    return ["", ""] if v is None else [v.verdict, _raw(v.sigmas)]


@dataclass
class Written:
    report: Report
    markdown: Path
    csvs: list[Path]
    figures: list[Path]
    figure_note: str


def write_report(report: Report, out: Path, *, plots: bool = True) -> Written:
    """report.md, the CSV files and (with matplotlib) the figures, all under ``out``."""
    from core.analysis import plots as plots_mod

    out.mkdir(parents=True, exist_ok=True)
    csvs = write_csvs(report, out)
    figures: list[Path] = []
    note = ""
    if plots:
        missing = plots_mod.unavailable()
        if missing:
            note = f"Figures skipped: {missing}."
        else:
            figures += draw_figures(figure_data(report, report.noise_k), out)
            figures += audit_figure(report.sessions, out / "audit", surrogate=report_is_surrogate(report))
    else:
        note = "Figures not requested (--no-plots)."
    md = out / "report.md"
    md.write_text(render_markdown(report, figures, note), encoding="utf-8")
    return Written(report, md, csvs, figures, note)


def draw_figures(data: Figures, out: Path) -> list[Path]:
    """Every figure kind of the report, from its data; one colour per group throughout."""
    from core.analysis import plots as plots_mod

    kw = {"surrogate": data.surrogate}
    figures = plots_mod.running_best_figure(
        {g: [t.best for t in ts] for g, ts in data.traces.items()},
        {g: [t.baseline for t in ts] for g, ts in data.traces.items()}, data.colors, out / "running_best",
        points={g: [[(p.iteration, p.val_bpb) for p in t.points if p.val_bpb is not None] for t in ts]
                for g, ts in data.traces.items()},
        marks={g: [[(m.x, m.kind) for m in t.marks] for t in ts] for g, ts in data.traces.items()}, **kw)
    figures += plots_mod.running_best_band_figure(data.bands, data.colors, out / "running_best_ci", **kw)
    figures += plots_mod.exploration_figure(data.effects, data.proposed, data.colors, out / "parameters", **kw)
    figures += plots_mod.cost_figure(data.cost, data.colors, out / "cost", **kw)
    for i, (group, traces) in enumerate(data.traces.items(), 1):
        figures += plots_mod.trace_figure(traces, data.colors[group], out / f"iterations_{i}", **kw)
    return figures


def report_is_surrogate(report: Report) -> bool:
    return any(is_surrogate(s.state.config) for s in report.sessions)


def default_out(paths: Sequence[Path]) -> Path:
    """The study's report/ folder, a single session's report/ folder, else ./bilevel-report."""
    if len(paths) == 1:
        return report_dir(Path(paths[0]))
    return Path("bilevel-report")

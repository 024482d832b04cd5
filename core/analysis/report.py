"""The ablation report: what each group achieved, how sure we can be, and what it cost.

Everything is computed from the sessions' events (nothing is re-measured): per repeat the
baseline, the best and Δ = best − baseline; per group mean ± std, a bootstrap 95 % CI of
the mean Δ and, where a noise floor is known, Δ in noise units next to what a search of
neutral changes would show by selection alone; pairwise group differences with a
bootstrap CI and a permutation p-value; tokens, dollars and device-hours; which
parameters each group explored; and, for Level 2 groups, which mechanism was active at
each iteration and what it did. Output: a terminal table, Markdown, CSV and figures.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.record import events as ev
from core.services.noise_store import NoiseFloor, NoiseStore, dataset_id, script_digest
from core.record.session import EVENTS_FILE, SessionReader
from core.record.state import IterationRecord, RunState
from core.analysis.plots import ParamRow
from core.analysis.stats import (Interval, NullDelta, Summary, bootstrap_diff_ci, bootstrap_mean_ci, null_search_delta,
                    permutation_pvalue, summarize)
from core.record.config import is_surrogate
from core.record.study import Study, is_study

LEVEL_NAMES = ("inner", "strategy", "research")
TRAINED = ("keep", "discard")  # iterations with a score that the rule judged
EFFECTS = ("prompt", "vetoed", "modified", "overrode")
RELIABLE_NOISE_RUNS = 5  # fewer seeds than this give a σ that may be far off


SURROGATE_NOTE = ("SURROGATE: these sessions ran baseline/surrogate.py (script.preset = \"surrogate\"): val_bpb is "
                  "a documented response surface plus seeded noise, not a training run")


class ReportError(Exception):
    pass


# --- one session, from its events ---------------------------------------------------------


@dataclass
class MechanismUse:
    name: str
    origin: str = ""
    activated_after: int | None = None  # the last iteration finished before it was activated
    deactivated_after: int | None = None
    deactivation_reason: str = ""
    iterations: list[int] = field(default_factory=list)  # iterations it was active for
    calls: Counter = field(default_factory=Counter)  # hook -> calls
    effects: Counter = field(default_factory=Counter)  # effect kind -> count
    kept_while_active: int = 0


@dataclass
class SessionData:
    path: Path
    state: RunState
    seed: int = 0
    acceptance: ev.AcceptanceConfigured | None = None
    fingerprint: str = ""
    hardware: str = ""
    device_seconds: float = 0.0
    device_kind: str = "cpu"
    train_runs: int = 0
    tokens: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # level -> (prompt, completion, calls)
    mechanisms: dict[str, MechanismUse] = field(default_factory=dict)
    timeline: dict[int, dict[str, Any]] = field(default_factory=dict)  # iteration -> active, effects
    repeat: int | None = None
    noise: NoiseFloor | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> str:
        return self.state.group or "+".join(self.state.levels) or "?"

    @property
    def baseline(self) -> float | None:
        return self.state.baseline_val_bpb

    @property
    def best(self) -> float | None:
        return self.state.best_val_bpb

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.best is None else self.best - self.baseline

    @property
    def proposals(self) -> list[IterationRecord]:
        return self.state.proposals

    def count(self, decision: str) -> int:
        return sum(1 for r in self.proposals if r.decision == decision)

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600

    @property
    def prices(self) -> tuple[float | None, float | None]:
        e = self.state.config.get("endpoint", {})
        return e.get("price_in_per_m"), e.get("price_out_per_m")

    def dollars(self, level: str) -> float | None:
        pin, pout = self.prices
        prompt, completion, _ = self.tokens.get(level, (0, 0, 0))
        if pin is None and pout is None:
            return None if (prompt or completion) else 0.0
        return prompt / 1e6 * (pin or 0.0) + completion / 1e6 * (pout or 0.0)

    @property
    def total_dollars(self) -> float | None:
        parts = [self.dollars(level) for level in LEVEL_NAMES]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    def curve(self) -> list[tuple[int, float]]:
        """(iteration, best val_bpb accepted so far) from the baseline on."""
        out: list[tuple[int, float]] = []
        best: float | None = None
        for r in self.state.records:
            if r.decision == "baseline":
                best = r.val_bpb
            elif r.decision == "keep" and r.best_after is not None:
                best = r.best_after
            if best is not None:
                out.append((r.iteration, best))
        return out


def load_session(path: Path) -> SessionData:
    events = list(SessionReader(path).events())
    state = RunState()
    data = SessionData(path=Path(path), state=state)
    slot_devices = 1
    last_finished: int | None = None
    active: dict[str, MechanismUse] = {}
    for e in events:
        state.apply(e)
        if isinstance(e, ev.SessionStarted):
            data.seed = e.seed
        elif isinstance(e, ev.AcceptanceConfigured):
            data.acceptance = e  # the last one is the rule in force
        elif isinstance(e, ev.TrainingStarted):
            slot_devices = 1 if e.slot in ("", "cpu") else len([d for d in e.slot.split(",") if d.strip()])
            if e.slot not in ("", "cpu"):
                data.device_kind = "gpu"
        elif isinstance(e, ev.TrainingFinished):
            data.device_seconds += e.duration_s * slot_devices
            data.train_runs += 1
        elif isinstance(e, ev.LLMResponse):
            p, c, n = data.tokens.get(e.level, (0, 0, 0))
            data.tokens[e.level] = (p + e.prompt_tokens, c + e.completion_tokens, n + 1)
        elif isinstance(e, ev.MechanismActivated):
            use = data.mechanisms.setdefault(e.name, MechanismUse(e.name))
            use.origin, use.activated_after = e.origin, last_finished
            active[e.name] = use
        elif isinstance(e, ev.MechanismDeactivated):
            use = data.mechanisms.setdefault(e.name, MechanismUse(e.name))
            use.deactivated_after, use.deactivation_reason = last_finished, e.reason
            active.pop(e.name, None)
        elif isinstance(e, ev.MechanismEffect):
            use = data.mechanisms.setdefault(e.name, MechanismUse(e.name))
            use.effects[e.effect] += 1
            slot = data.timeline.setdefault(e.iteration, {"active": [], "effects": []})
            slot["effects"].append(f"{e.name} {e.effect}: {e.detail[:80]}")
        elif isinstance(e, ev.IterationFinished):
            last_finished = e.iteration
            names = sorted(set(active) | set(e.mechanisms))
            slot = data.timeline.setdefault(e.iteration, {"active": [], "effects": []})
            slot["active"], slot["decision"] = names, e.decision
            for name in names:
                use = data.mechanisms.setdefault(name, MechanismUse(name))
                use.iterations.append(e.iteration)
                use.calls.update(e.mechanisms.get(name, {}))
                use.kept_while_active += e.decision == "keep"
    if not state.session:
        raise ReportError(f"{path}: the session never started")
    if data.acceptance is not None:
        data.fingerprint, data.hardware = data.acceptance.fingerprint, data.acceptance.hardware
    else:  # older sessions: script and corpus only (the hardware was not recorded)
        try:
            text = (data.path / state.baseline_script).read_text(encoding="utf-8")
            data.fingerprint = f"{script_digest(text)[:12]}/{dataset_id(state.data)}"
        except OSError:
            data.fingerprint = ""
    return data


def _is_noise_session(path: Path) -> bool:
    for e in SessionReader(path).events():
        if isinstance(e, ev.NoiseStarted):
            return True
        if isinstance(e, (ev.IterationStarted, ev.IterationFinished)):
            return False
    return False


@dataclass
class Inputs:
    sessions: list[SessionData]
    studies: list[Study]
    notes: list[str]


def collect(paths: Iterable[Path]) -> Inputs:
    """Sessions from session and study folders; noise sessions and never-started ones are noted."""
    sessions: list[SessionData] = []
    studies: list[Study] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if is_study(path):
            study = Study.load(path)
            studies.append(study)
            for m in study.members:
                folder = study.session_dir(m)
                if not (folder / EVENTS_FILE).is_file():
                    notes.append(f"{study.dir.name}/{m.session}: not started yet (bilevel resume {study.dir})")
                    continue
                _add(folder, sessions, notes, seen, repeat=m.repeat)
        elif (path / EVENTS_FILE).is_file():
            _add(path, sessions, notes, seen)
        else:
            raise ReportError(f"{path}: neither a session (no {EVENTS_FILE}) nor a study (no study.json)")
    return Inputs(sessions, studies, notes)


def _add(path: Path, sessions: list[SessionData], notes: list[str], seen: set[Path], repeat: int | None = None) -> None:
    key = path.resolve()
    if key in seen:
        return
    seen.add(key)
    if _is_noise_session(path):
        notes.append(f"{path.name}: a noise measurement, not a search (its floor is used where it applies)")
        return
    try:
        data = load_session(path)
    except ReportError as exc:
        notes.append(str(exc))
        return
    data.repeat = repeat
    sessions.append(data)


# --- statistics per group and between groups ------------------------------------------------


@dataclass
class GroupStats:
    group: str
    sessions: list[SessionData]
    deltas: list[float]
    summary: Summary
    ci: Interval | None
    noise_std: float | None = None
    noise: NoiseFloor | None = None
    null: NullDelta | None = None
    levels: list[str] = field(default_factory=list)

    @property
    def mean_sigmas(self) -> float | None:
        if self.noise_std and self.summary.mean is not None:
            return self.summary.mean / self.noise_std
        return None

    @property
    def device_hours(self) -> float:
        return _mean([s.device_hours for s in self.sessions]) or 0.0

    @property
    def dollars(self) -> float | None:
        values = [s.total_dollars for s in self.sessions]
        return None if any(v is None for v in values) else _mean([v for v in values if v is not None])

    def tokens(self, level: str) -> tuple[int, int, int]:
        rows = [s.tokens.get(level, (0, 0, 0)) for s in self.sessions]
        return tuple(sum(r[i] for r in rows) for i in range(3))  # type: ignore[return-value]

    def level_dollars(self, level: str) -> float | None:
        values = [s.dollars(level) for s in self.sessions]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def delta_per_device_hour(self) -> float | None:
        m = self.summary.mean
        return m / self.device_hours if m is not None and self.device_hours > 0 else None

    @property
    def delta_per_dollar(self) -> float | None:
        m, d = self.summary.mean, self.dollars
        return m / d if m is not None and d else None


@dataclass
class Comparison:
    first: str
    second: str
    difference: float  # mean Δ of first − mean Δ of second (negative: first improved more)
    ci: Interval | None
    pvalue: float | None


@dataclass
class Report:
    groups: list[GroupStats]
    comparisons: list[Comparison]
    sessions: list[SessionData]
    notes: list[str]
    warnings: list[str]
    seed: int = 0

    def group(self, name: str) -> GroupStats:
        return next(g for g in self.groups if g.group == name)


def build_report(inputs: Inputs, *, random_state: int = 0, extra_stores: Sequence[Path] = ()) -> Report:
    if not inputs.sessions:
        raise ReportError("no search sessions to report on" + (": " + "; ".join(inputs.notes) if inputs.notes else ""))
    kinds = {is_surrogate(s.state.config) for s in inputs.sessions}
    if len(kinds) > 1:
        fake = sorted(s.name for s in inputs.sessions if is_surrogate(s.state.config))
        raise ReportError(f"{len(fake)} of these sessions ran the surrogate workload ({', '.join(fake[:3])}"
                          f"{' …' if len(fake) > 3 else ''}), whose val_bpb is a response surface, not a training "
                          "run: report surrogate and real sessions separately")
    order = [g for st in inputs.studies for g in st.groups]
    order += sorted({s.group for s in inputs.sessions} - set(order))
    for s in inputs.sessions:
        s.noise = _noise_floor(s, extra_stores)
    groups = []
    for name in dict.fromkeys(order):
        members = [s for s in inputs.sessions if s.group == name]
        if not members:
            continue
        members.sort(key=lambda s: (s.repeat or 0, s.seed, s.name))
        deltas = [s.delta for s in members if s.delta is not None]
        g = GroupStats(name, members, deltas, summarize(deltas), bootstrap_mean_ci(deltas, random_state=random_state),
                       levels=list(members[0].state.levels))
        _noise_reference(g, random_state)
        groups.append(g)
    comparisons = [
        Comparison(a.group, b.group, (a.summary.mean or 0.0) - (b.summary.mean or 0.0),
                   bootstrap_diff_ci(a.deltas, b.deltas, random_state=random_state),
                   permutation_pvalue(a.deltas, b.deltas, random_state=random_state))
        for a, b in combinations(groups, 2) if a.deltas and b.deltas
    ]
    return Report(groups, comparisons, inputs.sessions, list(inputs.notes), _warnings(groups, inputs.sessions),
                  random_state)


def _noise_floor(s: SessionData, extra_stores: Sequence[Path]) -> NoiseFloor | None:
    a = s.acceptance
    if a is not None and a.noise_std:
        return NoiseFloor(fingerprint=a.fingerprint, std=a.noise_std, mad=a.noise_mad or 0.0, mean=0.0,
                          runs=a.noise_runs, hardware=a.hardware, session=a.noise_session)
    if not s.fingerprint or a is None:
        return None
    candidates = list(extra_stores) + [s.path.parent / "noise.json", s.path.parent.parent / "noise.json"]
    store = s.state.config.get("acceptance", {}).get("noise_store")
    if store:
        candidates.insert(0, Path(store))
    for c in candidates:
        try:
            floor = NoiseStore(c).get(s.fingerprint)
        except ValueError:
            continue
        if floor is not None:
            return floor
    return None


def _noise_reference(g: GroupStats, random_state: int) -> None:
    """σ for the group (when all its sessions share one floor) and the neutral-search Δ under its rule."""
    floors = {s.noise.fingerprint: s.noise for s in g.sessions if s.noise is not None}
    if len(floors) != 1 or any(s.noise is None for s in g.sessions):
        return
    floor = next(iter(floors.values()))
    g.noise_std, g.noise = floor.std, floor
    first = g.sessions[0].acceptance
    threshold = first.threshold if first is not None and first.threshold is not None else (
        float(g.sessions[0].state.config.get("search", {}).get("min_delta", 0.0)))
    confirm = bool(first.confirm) if first is not None else False
    trained = round(_mean([sum(1 for r in s.proposals if r.decision in TRAINED) for s in g.sessions]) or 0)
    g.null = null_search_delta(floor.std, trained, threshold=threshold, confirm=confirm, random_state=random_state)


def _warnings(groups: list[GroupStats], sessions: list[SessionData]) -> list[str]:
    out = []
    prints = Counter(s.fingerprint for s in sessions)
    if len(prints) > 1:
        detail = ", ".join(f"{fp or '?'} ({n})" for fp, n in prints.items())
        out.append(f"the sessions ran different scripts, corpora or hardware (fingerprints: {detail}); "
                   "their numbers are not comparable")
    same_seed: dict[tuple[str, int], list[float]] = {}
    for s in sessions:
        if s.baseline is not None:
            same_seed.setdefault((s.fingerprint, s.seed), []).append(s.baseline)
    spread = max((max(v) - min(v) for v in same_seed.values() if len(v) > 1), default=0.0)
    if spread > 0:
        out.append(f"baselines with the same seed differ by up to {spread:.6f} between sessions: the workload is "
                   "not deterministic at a fixed seed (a time budget on a busy machine, GPU non-determinism), so "
                   "a noise floor measured over seeds alone may understate run-to-run noise")
    budgets = {json.dumps(s.state.config.get("budget", {}).get("time_s")) for s in sessions}
    if len(budgets) > 1:
        out.append(f"the sessions used different training budgets ({', '.join(sorted(budgets))} s)")
    for g in groups:
        if g.summary.n < 3:
            out.append(f"group {g.group}: {g.summary.n} repeat(s) — too few for a trustworthy interval")
        if g.null is not None and g.summary.mean is not None and g.summary.mean >= g.null.low:
            out.append(f"group {g.group}: mean Δ {g.summary.mean:+.6f} is within what a search of neutral "
                       f"changes shows by selection among noisy runs alone ({g.null.low:+.6f} … {g.null.high:+.6f})")
        if g.noise is not None and g.noise.runs < RELIABLE_NOISE_RUNS:
            out.append(f"group {g.group}: its noise floor comes from {g.noise.runs} runs — a rough estimate of σ "
                       f"(measure with --runs {RELIABLE_NOISE_RUNS} or more)")
        if g.noise_std is None:
            out.append(f"group {g.group}: no noise floor known for its script/corpus/hardware "
                       "(measure one with `bilevel noise CONFIG --runs 5`)")
        unfinished = [s.name for s in g.sessions if s.state.status != "completed"]
        if unfinished:
            out.append(f"group {g.group}: unfinished session(s) {', '.join(unfinished)}")
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- parameters explored ------------------------------------------------------------------


def parameter_rows(report: Report) -> list[ParamRow]:
    rows: dict[tuple[str, str], ParamRow] = {}
    for g in report.groups:
        for s in g.sessions:
            for r in s.proposals:
                if r.decision not in ("keep", "discard", "crash"):
                    continue
                for name in r.changes:
                    row = rows.setdefault((g.group, name), ParamRow(g.group, name))
                    row.proposed += 1
                    row.kept += r.decision == "keep"
                    row.crashed += r.decision == "crash"
                    if r.delta is not None:
                        row.effects.append(r.delta)
    return sorted(rows.values(), key=lambda r: (r.group, -r.proposed, r.name))


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
                         f"{s.device_hours:.4f}", s.state.status])
    return rows


REPEAT_HEADER = ["group", "repeat", "session", "seed", "baseline", "best", "Δ", "iterations", "kept", "crashed",
                 "device-h", "status"]
GROUP_HEADER = ["group", "levels", "n", "mean Δ", "std Δ", "95% CI of mean Δ", "σ (noise)", "mean Δ/σ",
                "neutral-search Δ"]
PAIR_HEADER = ["comparison", "difference of mean Δ", "95% CI", "permutation p"]


def group_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        null = "—" if g.null is None else f"{g.null.mean:+.6f} [{g.null.low:+.6f}, {g.null.high:+.6f}]"
        rows.append([g.group, "+".join(g.levels), str(g.summary.n), _f(g.summary.mean, signed=True),
                     _f(g.summary.std), _ci(g.ci), _f(g.noise_std),
                     "—" if g.mean_sigmas is None else f"{g.mean_sigmas:+.2f}", null])
    return rows


def pair_rows(report: Report) -> list[list[str]]:
    return [[f"{c.first} − {c.second}", _f(c.difference, signed=True), _ci(c.ci), _p(c.pvalue)]
            for c in report.comparisons]


COST_HEADER = ["group", "tokens inner", "tokens strategy", "tokens research", "$ inner", "$ strategy", "$ research",
               "device-h / repeat", "Δ per device-h", "Δ per $"]


def cost_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        toks = [g.tokens(level) for level in LEVEL_NAMES]
        rows.append([g.group, *[f"{p:,}+{c:,}" for p, c, _ in toks],
                     *[_money(g.level_dollars(level)) for level in LEVEL_NAMES],
                     f"{g.device_hours:.4f}", _f(g.delta_per_device_hour, 4, signed=True),
                     _f(g.delta_per_dollar, 4, signed=True)])
    return rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
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
    if report.warnings:
        parts += ["", *[f"warning: {w}" for w in report.warnings]]
    return "\n".join(parts)


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
    if report.warnings:
        out += ["**Read with care:**", "", *[f"- {w}" for w in report.warnings], ""]
    if report.notes:
        out += ["Notes:", "", *[f"- {n}" for n in report.notes], ""]
    out += ["## Per repeat", "", md_table(REPEAT_HEADER, repeat_rows(report)), "",
            "## Per group", "", md_table(GROUP_HEADER, group_rows(report)), "",
            "*neutral-search Δ*: mean [95 % range] of Δ for a search whose changes do nothing, from selection "
            "among runs with the measured noise σ under the same keep rule and iteration count.", ""]
    if report.comparisons:
        out += ["## Group comparisons", "", md_table(PAIR_HEADER, pair_rows(report)), ""]
    out += ["## Cost", "", md_table(COST_HEADER, cost_rows(report)), "",
            "Tokens are prompt+completion summed over the group's repeats; dollars from "
            "`[endpoint] price_in_per_m` / `price_out_per_m` (— where no price is configured).", ""]
    params = parameter_rows(report)
    if params:
        out += ["## Parameters explored", "",
                md_table(["group", "parameter", "proposed", "kept", "crashed", "mean effect", "best effect"],
                         [[p.group, p.name, str(p.proposed), str(p.kept), str(p.crashed), _f(p.mean_effect, signed=True),
                           _f(p.best_effect, signed=True)] for p in params]),
                "", "*effect*: val_bpb − best before, over the proposals that touched the parameter and scored.", ""]
    out += _mechanism_section(report)
    if figures or figure_note:
        out += ["## Figures", ""]
        out += [f"![{f.stem}]({f.name})" for f in figures if f.suffix == ".png"]
        if figure_note:
            out += [figure_note]
        out.append("")
    return "\n".join(out)


def _mechanism_section(report: Report) -> list[str]:
    level2 = [g for g in report.groups if "research" in g.levels or any(s.mechanisms for s in g.sessions)]
    if not level2:
        return []
    out = ["## Mechanisms", "",
           "Which search mechanism was active at each iteration and what it did (hook calls from "
           "IterationFinished; prompt additions, vetoes, modifications and overrides from MechanismEffect).", ""]
    for g in level2:
        for s in g.sessions:
            out.append(f"### {g.group} / {s.name}")
            out.append("")
            if not s.mechanisms:
                out += ["No mechanism was active.", ""]
                continue
            out.append(md_table(mechanism_header(), [r[2:] for r in mechanism_rows_for(g.group, s)]))
            out.append("")
            timeline = [[str(it), t.get("decision", ""), ", ".join(t["active"]) or "—", "; ".join(t["effects"]) or "—"]
                        for it, t in sorted(s.timeline.items()) if t["active"] or t["effects"]]
            if timeline:
                out += [md_table(["iteration", "decision", "active", "effects"], timeline), ""]
    return out


def mechanism_header() -> list[str]:
    return ["mechanism", "origin", "active from", "iterations active", "hook calls", *EFFECTS, "kept while active",
            "deactivated"]


def mechanism_rows_for(group: str, s: SessionData) -> list[list[str]]:
    rows = []
    for m in s.mechanisms.values():
        start = "start" if m.activated_after is None else f"after #{m.activated_after}"
        off = "—" if m.deactivated_after is None and not m.deactivation_reason else (
            f"after #{m.deactivated_after}: {m.deactivation_reason[:60]}")
        rows.append([group, s.name, m.name, m.origin or "—", start, str(len(m.iterations)), str(sum(m.calls.values())),
                     *[str(m.effects.get(k, 0)) for k in EFFECTS], str(m.kept_while_active), off])
    return rows


# --- files -------------------------------------------------------------------------------------


def _raw(v: Any) -> Any:
    return "" if v is None else v


def write_csvs(report: Report, out: Path) -> list[Path]:
    files = {
        "repeats.csv": (["group", "repeat", "session", "seed", "baseline", "best", "delta", "iterations", "kept",
                         "crashed", "device_hours", "train_runs", "dollars", "status", "fingerprint"],
                        [[g.group, _raw(s.repeat), s.name, s.seed, _raw(s.baseline), _raw(s.best), _raw(s.delta),
                          len(s.proposals), s.count("keep"), s.count("crash"), s.device_hours, s.train_runs,
                          _raw(s.total_dollars), s.state.status, s.fingerprint]
                         for g in report.groups for s in g.sessions]),
        "groups.csv": (["group", "levels", "n", "mean_delta", "std_delta", "mad_delta", "ci_low", "ci_high", "noise_std",
                        "mean_delta_sigmas", "neutral_delta_mean", "neutral_delta_low", "neutral_delta_high",
                        "device_hours_per_repeat", "dollars_per_repeat", "delta_per_device_hour", "delta_per_dollar",
                        *[f"{lv}_{k}" for lv in LEVEL_NAMES for k in ("prompt_tokens", "completion_tokens", "dollars")]],
                       [[g.group, "+".join(g.levels), g.summary.n, _raw(g.summary.mean), _raw(g.summary.std),
                         _raw(g.summary.mad), _raw(g.ci and g.ci.low), _raw(g.ci and g.ci.high), _raw(g.noise_std),
                         _raw(g.mean_sigmas), _raw(g.null and g.null.mean), _raw(g.null and g.null.low),
                         _raw(g.null and g.null.high), g.device_hours, _raw(g.dollars), _raw(g.delta_per_device_hour),
                         _raw(g.delta_per_dollar),
                         *[x for lv in LEVEL_NAMES for x in (*g.tokens(lv)[:2], _raw(g.level_dollars(lv)))]]
                        for g in report.groups]),
        "pairwise.csv": (["first", "second", "difference", "ci_low", "ci_high", "pvalue"],
                         [[c.first, c.second, c.difference, _raw(c.ci and c.ci.low), _raw(c.ci and c.ci.high),
                           _raw(c.pvalue)] for c in report.comparisons]),
        "iterations.csv": (["group", "session", "iteration", "decision", "val_bpb", "best_before", "best_after",
                            "changes", "rule", "source"],
                           [[g.group, s.name, r.iteration, r.decision, _raw(r.val_bpb), _raw(r.best_before),
                             _raw(r.best_after), json.dumps(r.changes, ensure_ascii=False), r.rule, r.source]
                            for g in report.groups for s in g.sessions for r in s.state.records]),
        "parameters.csv": (["group", "parameter", "proposed", "kept", "crashed", "mean_effect", "best_effect"],
                           [[p.group, p.name, p.proposed, p.kept, p.crashed, _raw(p.mean_effect), _raw(p.best_effect)]
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
            figures += plots_mod.running_best_figure(
                {g.group: [s.curve() for s in g.sessions] for g in report.groups},
                {g.group: [s.baseline for s in g.sessions] for g in report.groups}, out / "running_best")
            figures += plots_mod.exploration_figure(parameter_rows(report), [g.group for g in report.groups],
                                                    out / "parameters")
            figures += plots_mod.running_best_band_figure(
                running_best_bands(report), out / "running_best_ci",
                title=("SURROGATE — " if report_is_surrogate(report) else "")
                + "Mean running best per group, 95 % bootstrap CI")
    else:
        note = "Figures not requested (--no-plots)."
    md = out / "report.md"
    md.write_text(render_markdown(report, figures, note), encoding="utf-8")
    return Written(report, md, csvs, figures, note)


def running_best_bands(report: Report) -> dict[str, list[tuple[int, float, float, float]]]:
    """Per group and iteration: mean running-best Δ over repeats and its bootstrap 95 % CI."""
    bands: dict[str, list[tuple[int, float, float, float]]] = {}
    for g in report.groups:
        curves = [[(i, v - s.baseline) for i, v in s.curve()] for s in g.sessions if s.baseline is not None]
        curves = [c for c in curves if c]
        last = max((c[-1][0] for c in curves), default=-1)
        rows = []
        for it in range(last + 1):
            values = [next((v for i, v in reversed(c) if i <= it), 0.0) for c in curves]
            if not values:
                continue
            mean = sum(values) / len(values)
            ci = bootstrap_mean_ci(values, random_state=report.seed)
            rows.append((it, mean, ci.low if ci else mean, ci.high if ci else mean))
        bands[g.group] = rows
    return bands


def report_is_surrogate(report: Report) -> bool:
    return any(is_surrogate(s.state.config) for s in report.sessions)


def default_out(paths: Sequence[Path]) -> Path:
    """The study's report/ folder, a single session's report/ folder, else ./bilevel-report."""
    if len(paths) == 1:
        return Path(paths[0]) / "report"
    return Path("bilevel-report")

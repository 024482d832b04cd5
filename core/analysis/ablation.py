"""The ablation's numbers: sessions loaded from their events, statistics per group and between groups.

Each session is read through the one fold (:func:`core.record.state.fold`); nothing is
re-measured. Per repeat the baseline, the best and Δ = best − baseline; per group mean ±
std, a bootstrap 95 % CI of the mean Δ and, where a noise floor is known, Δ in noise units
next to what a search of neutral changes would show by selection alone; pairwise group
differences with a bootstrap CI and a permutation p-value; which parameters each group
explored. Rendering is :mod:`core.analysis.report`'s.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.record.config import is_surrogate
from core.record import events as ev
from core.record.layout import EVENTS_FILE, NOISE_STORE_FILE, is_session, read_artifact
from core.record.pricing import Price, price_of
from core.record.session import SessionReader
from core.record.state import IterationRecord, IterationTrace, MechanismUse, RunState, fold
from core.services.noise_store import NoiseFloor, NoiseStore, dataset_id, script_digest
from core.analysis.keeps import K_DEFAULT, AuditOrNoise, KeepVerdict, Sigma, VerdictSource, held_counts, session_sigma
from core.analysis.stats import (Interval, NullDelta, Summary, bootstrap_diff_ci, bootstrap_mean_ci, null_search_delta,
                                 permutation_pvalue, summarize)
from core.record.study import Study, is_study

LEVEL_NAMES = ("inner", "strategy", "research")
TRAINED = ("keep", "discard")  # iterations with a score that the rule judged
RELIABLE_NOISE_RUNS = 5  # fewer seeds than this give a σ that may be far off


class ReportError(Exception):
    pass


@dataclass
class ParamRow:
    group: str
    name: str
    proposed: int = 0
    kept: int = 0
    crashed: int = 0
    effects: list[float] = field(default_factory=list)  # val_bpb − best before, over scored proposals
    kept_effects: list[float] = field(default_factory=list)  # the same, over the keeps only
    discarded_effects: list[float] = field(default_factory=list)  # and over the discards only

    @property
    def mean_effect(self) -> float | None:
        return _mean(self.effects)

    @property
    def best_effect(self) -> float | None:
        return min(self.effects) if self.effects else None

    @property
    def mean_kept_effect(self) -> float | None:
        return _mean(self.kept_effects)

    @property
    def mean_discarded_effect(self) -> float | None:
        return _mean(self.discarded_effects)


# --- one session, from its events ---------------------------------------------------------


@dataclass
class SessionData:
    """One session as the report reads it: its folded :class:`RunState` plus where it sits."""

    path: Path
    state: RunState
    fingerprint: str = ""
    hardware: str = ""
    repeat: int | None = None
    noise: NoiseFloor | None = None
    sigma: Sigma | None = None  # σ of val_bpb, from the floor or the script's declaration
    verdicts: dict[int, KeepVerdict] = field(default_factory=dict)  # keep iteration -> did it stand out of noise

    @property
    def held(self) -> tuple[int, int, int]:
        """Keeps (held, did not hold, unknown) under the report's verdict source."""
        return held_counts(self.verdicts)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return self.state.seed

    @property
    def acceptance(self) -> ev.AcceptanceConfigured | None:
        return self.state.acceptance

    @property
    def device_seconds(self) -> float:
        return self.state.device.seconds

    @property
    def device_kind(self) -> str:
        return self.state.device.kind

    @property
    def train_runs(self) -> int:
        return self.state.device.runs

    @property
    def tokens(self) -> dict[str, tuple[int, int, int]]:
        """level -> (prompt, completion, calls)."""
        return {k: (u.prompt_tokens, u.completion_tokens, u.calls) for k, u in self.state.usage.items()}

    @property
    def mechanisms(self) -> dict[str, MechanismUse]:
        return self.state.mechanism_history

    @property
    def timeline(self) -> dict[int, IterationTrace]:
        """iteration -> its trace, for iterations with an active mechanism or an effect."""
        return {n: t for n, t in self.state.iterations.items() if t.active or t.effects}

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
    def gain(self) -> float | None:
        """baseline − best: the improvement (positive is better)."""
        return None if self.delta is None else -self.delta

    @property
    def price(self) -> Price | None:
        """The model's price (core/record/pricing.py: the endpoint's, [prices], local $0, built-in), or None."""
        return price_of(self.state.config)

    def dollars(self, level: str) -> float | None:
        price = self.price
        prompt, completion, _ = self.tokens.get(level, (0, 0, 0))
        if price is None:
            return None if (prompt or completion) else 0.0
        return price.usd(prompt, completion)

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
    state = fold(SessionReader(path).events())
    if not state.session:
        raise ReportError(f"{path}: the session never started")
    data = SessionData(path=Path(path), state=state)
    if state.acceptance is not None:
        data.fingerprint, data.hardware = state.acceptance.fingerprint, state.acceptance.hardware
    else:  # older sessions: script and corpus only (the hardware was not recorded)
        try:
            text = read_artifact(data.path, state.baseline_script)
            data.fingerprint = f"{script_digest(text)[:12]}/{dataset_id(state.data)}"
        except (OSError, ValueError):
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
                if not is_session(folder):
                    notes.append(f"{study.dir.name}/{m.session}: not started yet (bilevel resume {study.dir})")
                    continue
                _add(folder, sessions, notes, seen, repeat=m.repeat)
        elif is_session(path):
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
    sigma_source: str = ""  # where noise_std comes from ("" without one)

    @property
    def held(self) -> tuple[int, int, int]:
        """Keeps (held, did not hold, unknown) over the group's repeats."""
        rows = [s.held for s in self.sessions]
        return tuple(sum(r[i] for r in rows) for i in range(3))  # type: ignore[return-value]

    @property
    def device_seconds(self) -> float:
        """Training device-seconds per repeat (summed run durations, never wall time)."""
        return _mean([s.device_seconds for s in self.sessions]) or 0.0

    @property
    def seconds_per_milli_gain(self) -> float | None:
        """Training device-seconds per 0.001 val_bpb gained; None when the group gained nothing."""
        m = self.summary.mean
        return self.device_seconds / (-m * 1000) if m is not None and m < 0 and self.device_seconds > 0 else None

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
    verdict_name: str = ""  # what "keeps that held" counted (the verdict source's name)
    noise_k: float = K_DEFAULT  # a keep within noise_k·σ of the best before it is "within noise"
    scorecard: bool = False  # a `bilevel scorecard` study is among the inputs: the report shows the scorecard

    def group(self, name: str) -> GroupStats:
        return next(g for g in self.groups if g.group == name)


def build_report(inputs: Inputs, *, random_state: int = 0, extra_stores: Sequence[Path] = (),
                 noise_k: float = K_DEFAULT, verdicts: VerdictSource | None = None) -> Report:
    """The report's numbers; ``verdicts`` judges each keep (default: the session's keep-chain audit where one
    finished, else beyond ``noise_k``·σ of the best before)."""
    if not noise_k >= 0 or noise_k == float("inf"):  # NaN fails the first test
        raise ReportError(f"the noise multiple k must be a finite number ≥ 0, not {noise_k}")
    verdicts = verdicts or AuditOrNoise(noise_k)
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
        s.sigma = session_sigma(s.state, s.noise and s.noise.std, s.noise.runs if s.noise else 0)
        s.verdicts = verdicts(s.state, s.sigma)
    groups = []
    split_notes: list[str] = []
    for name, members in _pooled(order, inputs.sessions, split_notes):
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
    return Report(groups, comparisons, inputs.sessions, list(inputs.notes),
                  split_notes + _warnings(groups, inputs.sessions), random_state, verdicts.name, noise_k,
                  scorecard=any(st.kind == "scorecard" for st in inputs.studies))


# The settings sessions must share to be pooled into one group (with one confidence interval).
POOL_KEYS = (("model", ("endpoint", "model")), ("temperature", ("endpoint", "temperature")),
             ("max_tokens", ("endpoint", "max_tokens")), ("structured", ("endpoint", "structured")),
             ("time_s", ("budget", "time_s")), ("iterations", ("budget", "iterations")))


def pool_settings(s: SessionData) -> dict[str, Any]:
    cfg = s.state.config or {}
    out: dict[str, Any] = {}
    for key, (section, name) in POOL_KEYS:
        value = (cfg.get(section) or {}).get(name) if isinstance(cfg.get(section), dict) else None
        out[key] = s.state.model if key == "model" and s.state.model else value
    return out


def _pooled(order: Sequence[str], sessions: Sequence[SessionData], notes: list[str]) -> list[tuple[str, list]]:
    """Each group's sessions, split where their model or settings differ (a note says what differs)."""
    out: list[tuple[str, list]] = []
    for name in dict.fromkeys(order):
        members = [s for s in sessions if s.group == name]
        if not members:
            continue
        parts: dict[str, list] = {}
        settings = {id(s): pool_settings(s) for s in members}
        differ = [k for k, _ in POOL_KEYS if len({repr(settings[id(s)][k]) for s in members}) > 1]
        if not differ:
            out.append((name, members))
            continue
        for s in members:
            label = ", ".join(f"{k}={settings[id(s)][k]}" for k in differ)
            parts.setdefault(f"{name} ({label})", []).append(s)
        notes.append(f"group {name}: its sessions differ in {', '.join(differ)}, so they are reported as "
                     f"{len(parts)} groups and never pooled: {'; '.join(parts)}")
        out.extend(parts.items())
    return out


def _noise_floor(s: SessionData, extra_stores: Sequence[Path]) -> NoiseFloor | None:
    a = s.acceptance
    if a is not None and a.noise_std and a.sigma_source != "declared":  # a declared σ is the script's, not a floor
        return NoiseFloor(fingerprint=a.fingerprint, std=a.noise_std, mad=a.noise_mad or 0.0, mean=0.0,
                          runs=a.noise_runs, hardware=a.hardware, session=a.noise_session)
    if not s.fingerprint or a is None:
        return None
    candidates = list(extra_stores) + [s.path.parent / NOISE_STORE_FILE, s.path.parent.parent / NOISE_STORE_FILE]
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
    """σ for the group (when all its sessions share one floor, else one declared σ) and the neutral-search Δ
    under its rule."""
    floors = {s.noise.fingerprint: s.noise for s in g.sessions if s.noise is not None}
    declared = {s.state.script_sigma for s in g.sessions}
    if len(floors) == 1 and all(s.noise is not None for s in g.sessions):
        floor = next(iter(floors.values()))
        g.noise_std, g.noise, g.sigma_source = floor.std, floor, "measured floor"
    elif len(declared) == 1 and None not in declared:
        g.noise_std, g.sigma_source = declared.pop(), "declared by the script"
    else:
        return
    first = g.sessions[0].acceptance
    threshold = first.threshold if first is not None and first.threshold is not None else (
        float(g.sessions[0].state.config.get("search", {}).get("min_delta", 0.0)))
    confirm = bool(first.confirm) if first is not None else False
    trained = round(_mean([sum(1 for r in s.proposals if r.decision in TRAINED) for s in g.sessions]) or 0)
    g.null = null_search_delta(g.noise_std, trained, threshold=threshold, confirm=confirm, random_state=random_state)


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
                for name in r.changes.params:
                    row = rows.setdefault((g.group, name), ParamRow(g.group, name))
                    row.proposed += 1
                    row.kept += r.decision == "keep"
                    row.crashed += r.decision == "crash"
                    if r.delta is not None:
                        row.effects.append(r.delta)
                        (row.kept_effects if r.decision == "keep" else row.discarded_effects).append(r.delta)
    return sorted(rows.values(), key=lambda r: (r.group, -r.proposed, r.name))

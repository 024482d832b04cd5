"""``bilevel export --optuna URL``: sessions and studies as Optuna studies, for optuna-dashboard.

Each session becomes one Optuna study in the storage (named ``<study>:<member>`` for a
study's members, the session folder's name otherwise) holding one trial per trained
iteration — the baseline, every kept, discarded and crashed run — in iteration order:
complete with val_bpb as its value, or failed for a crash. A trial's parameters are the
full configuration that iteration evaluated (the non-locked constants of the session's
schema; tuples as one parameter per element, ``ADAM_BETAS[0]``), with distributions from
the schema's bounds widened to every value seen; its user attributes say the iteration,
decision, proposer (llm, offline, tpe, ...), hypothesis and the acceptance rule. The
study's user attributes carry the group, seed, session folder and whether it ran the
surrogate. Nothing is read back: our event log stays the source of truth.

Optuna's parameters are the constants only: a code-scope session's code edits are no parameter. Its
trials say so (``code_edits``: the edit blocks of that iteration's change; ``code_in_force``: whether
the script it trained held kept code edits, so equal constants may not mean equal scripts), and the
study carries ``parameters = "constants only"`` and the session's ``scope``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from core.record.config import is_surrogate
from core.record.session import SessionReader
from core.record.state import IterationRecord, RunState, fold
from core.record.study import Study, is_study

TRAINED = ("baseline", "keep", "discard", "crash")


class ExportError(Exception):
    pass


@dataclass
class Exported:
    study_name: str
    session: Path
    trials: int


def _flatten(values: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if name not in values:
            continue
        v = values[name]
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                out[f"{name}[{i}]"] = x
        else:
            out[name] = v
    return out


def _distributions(schema: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    from optuna import distributions as d

    seen: dict[str, list[Any]] = {}
    for row in rows:
        for k, v in row.items():
            seen.setdefault(k, []).append(v)
    out: dict[str, Any] = {}
    for key, vals in seen.items():
        spec = schema.get(key.split("[", 1)[0], {})
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)
        if spec.get("choices") or not numeric or spec.get("kind") in ("bool", "str"):
            choices = list(spec.get("choices") or [])
            for v in vals:
                if v not in choices:
                    choices.append(v)
            if all(isinstance(c, (bool, int, float, str)) or c is None for c in choices):
                out[key] = d.CategoricalDistribution(choices)
            continue
        lo = min([*vals, *([spec["minimum"]] if spec.get("minimum") is not None else [])])
        hi = max([*vals, *([spec["maximum"]] if spec.get("maximum") is not None else [])])
        if lo == hi:
            continue  # a constant tells a dashboard nothing (and a distribution needs a range)
        log = bool(spec.get("log_scale") or spec.get("pow2")) and lo > 0
        if spec.get("kind") == "int" and all(isinstance(v, int) for v in vals):
            out[key] = d.IntDistribution(int(lo), int(hi), log=log)
        else:
            out[key] = d.FloatDistribution(float(lo), float(hi), log=log)
    return out


def trials_for(state: RunState) -> list[Any]:
    """The trained iterations of one folded session as Optuna frozen trials."""
    import optuna

    names = [n for n, s in state.schema.items() if not s.get("locked")]
    records: list[IterationRecord] = [r for r in state.records if r.decision in TRAINED]
    rows = [_flatten(r.values or state.best_values, names) for r in records]
    dists = _distributions(state.schema, rows)
    trials = []
    code_kept = False  # a code edit kept before this iteration: its script differs from the constants' alone
    for r, row in zip(records, rows):
        edits = len(getattr(r.changes, "edits", []))
        ok = r.decision != "crash" and r.val_bpb is not None and math.isfinite(r.val_bpb)
        params = {k: v for k, v in row.items() if k in dists}
        trials.append(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params},
            value=r.val_bpb if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs={"iteration": r.iteration, "decision": r.decision, "source": r.source,
                        "hypothesis": r.hypothesis[:500], "rule": r.rule[:300], "outcome": r.outcome,
                        "code_edits": edits, "code_in_force": code_kept or bool(edits)}))
        code_kept = code_kept or (edits > 0 and r.decision == "keep")
    return trials


def _sessions(path: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(study name, session folder, extra study attributes) for a session or each member of a study."""
    if is_study(path):
        study = Study.load(path)
        out = []
        for m in study.members:
            folder = study.session_dir(m)
            if (folder / "events.jsonl").is_file():
                out.append((f"{study.name}:{m.session}", folder, {"group": m.group, "repeat": m.repeat}))
        if not out:
            raise ExportError(f"{path}: no member of this study has started")
        return out
    return [(path.name, path, {})]


def export_optuna(path: Path, storage_url: str) -> list[Exported]:
    """Write each session under ``path`` (a session or a study) into the Optuna storage at ``storage_url``."""
    try:
        import optuna
    except ImportError as exc:
        raise ExportError("export needs Optuna: pip install 'bilevel-autoresearch[classical]'") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.get_storage(storage_url)
    except Exception as exc:  # noqa: BLE001 - any storage error is the user's URL
        raise ExportError(f"cannot open the Optuna storage {storage_url!r}: {exc}") from exc
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    plan = _sessions(Path(path))
    clash = [name for name, _, _ in plan if name in existing]
    if clash:
        raise ExportError(f"{storage_url} already holds {', '.join(clash[:3])}{' …' if len(clash) > 3 else ''}; "
                          "export into another file, or delete those studies first")
    done = []
    for name, folder, extra in plan:
        state = fold(SessionReader(folder).events())
        if not state.session:
            continue
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
        attrs = {"session": str(folder), "group": state.group, "seed": state.config.get("search", {}).get("seed"),
                 "proposer_levels": ",".join(state.levels), "surrogate": is_surrogate(state.config),
                 "scope": state.config.get("search", {}).get("scope", "constants"),
                 "parameters": "constants only (code edits are not Optuna parameters)", **extra}
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        trials = trials_for(state)
        study.add_trials(trials)
        done.append(Exported(name, folder, len(trials)))
    return done

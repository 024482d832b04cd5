"""When a change counts as an improvement: the keep/discard rules and the numbers they used.

Rules, from the config:

* ``search.min_delta``: keep when val_bpb < best − min_delta (absolute).
* ``acceptance.rule = "default"`` (the default): once σ, the noise floor of val_bpb, is known
  (measured at session start by ``acceptance.calibrate``, stored by ``bilevel noise`` for this
  script, corpus and hardware, or declared by the script's own ``noise_sigma:`` summary line,
  in that order of preference), keep when val_bpb < best − max(min_delta, k·σ), k =
  ``acceptance.k`` (2). Until σ is known, the min_delta rule decides and the event says so.
* ``acceptance.rule = "paper"``: the paper's rule, any improvement beyond min_delta, σ or not.
* ``acceptance.noise_sigma = k``: k·σ with a σ that must exist before the search (an error when
  none was measured and none will be calibrated: a rule that silently fell back would fool its
  user). The difference of two independent runs has std √2·σ, so k = 2 is about 1.4 of those.
* ``acceptance.confirm``: a candidate that passes is re-run with another seed and kept
  only if the mean of both runs still passes; the mean is then the new best.

A mechanism's ``decide`` hook may only make the rule stricter: it may turn a keep into a
discard, never keep what the rule (or a mechanism before it) discarded; such a keep is
refused and recorded (:func:`mechanism_verdict`). So the best never gets worse than the
baseline, whatever a mechanism asks.

Every verdict carries a ``details`` dict (the rule, best, threshold, σ, margin in σ,
the confirmation runs) that the engine writes into IterationFinished.acceptance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from core.record import events as ev
from core.record.config import Config
from core.levels.context import Verdict
from core.services.noise_store import Identity, NoiseFloor, NoiseStore, identity
from core.services.script import TrainScript
from core.services.seeds import seed_params
from core.services.script_folder import fixed_seed_note


class AcceptanceError(ValueError):
    """The configured rule cannot be applied (no noise floor measured for this fingerprint)."""


@dataclass(frozen=True)
class AcceptancePolicy:
    min_delta: float = 0.0
    noise_sigma: float = 0.0  # acceptance.noise_sigma: an explicit k that needs a floor
    confirm: bool = False
    floor: NoiseFloor | None = None
    fingerprint: str = ""
    k: float = 0.0  # the default rule's k, applied whenever a floor is known
    mode: str = "default"  # acceptance.rule: "default" or "paper"
    sigma_source: str = ""  # calibrated | store | declared

    def __post_init__(self) -> None:
        if self.noise_sigma > 0 and self.floor is None:
            raise AcceptanceError("noise_sigma needs a noise floor")

    @property
    def factor(self) -> float:
        """The margin in σ a keep must beat the best by (0: the min_delta rule)."""
        if self.noise_sigma > 0:
            return self.noise_sigma
        return self.k if self.mode == "default" and self.floor is not None else 0.0

    @property
    def name(self) -> str:
        if self.factor > 0:
            return "noise_sigma"
        return "paper" if self.mode == "paper" else "min_delta"

    @property
    def sigma(self) -> float | None:
        return self.floor.std if self.floor is not None else None

    @property
    def threshold(self) -> float:
        """The improvement over the best that a candidate must exceed."""
        if self.factor > 0 and self.floor is not None:
            return max(self.min_delta, self.factor * self.floor.std)
        return self.min_delta

    def describe(self) -> str:
        if self.factor > 0:
            assert self.floor is not None
            where = {"calibrated": f"calibrated over {self.floor.runs} seeds at session start",
                     "declared": "declared by the script"}.get(self.sigma_source, f"over {self.floor.runs} seeds")
            text = (f"keep if val_bpb < best − max(min_delta {self.min_delta:g}, {self.factor:g}σ) "
                    f"= best − {self.threshold:.6g} (σ = {self.floor.std:.6g}, {where})")
        elif self.mode == "paper":
            text = f"the paper's rule: keep any improvement, val_bpb < best − {self.min_delta:g}"
            if self.sigma is not None:
                text += f" (noise floor σ = {self.sigma:.6g} known, not used by the rule)"
        else:
            text = f"keep if val_bpb < best − {self.min_delta:g}"
            if self.mode == "default" and self.k > 0:
                text += f" (σ not known yet: {self.k:g}σ applies once it is)"
        return text + ("; a candidate is confirmed with a second seed" if self.confirm else "")

    # --- verdicts ----------------------------------------------------------------------

    def judge(self, best: float, value: float) -> Verdict:
        """The primary rule on one run."""
        thr = self.threshold
        target = best - thr
        details = self._details(best, value, thr)
        if self.factor > 0:
            rule = (f"noise_sigma: keep if val_bpb < best - max(min_delta {self.min_delta:g}, "
                    f"{self.factor:g}σ = {self.factor:g}×{self.sigma:.6g}) = {target:.6f}")
        else:
            rule = f"{self.name}: keep if val_bpb < best - {self.min_delta:g} = {target:.6f}"
        if value < target:
            return Verdict("keep", rule, f"improved by {best - value:.6f}{self._in_sigma(best - value)}", value, details)
        return Verdict("discard", rule, f"val_bpb {value:.6f} does not beat {best:.6f} by more than {thr:.6g}"
                       f"{self._in_sigma(best - value, signed=True)}", value, details)

    def judge_confirmed(self, best: float, first: Verdict, runs: Sequence[tuple[int, float | None]]) -> Verdict:
        """After the confirmation run(s): keep only if the mean of every run still passes."""
        seeds = [s for s, _ in runs]
        values = [v for _, v in runs]
        details = dict(first.details)
        details["confirm"] = {"seeds": seeds, "values": values}
        if any(v is None for v in values):
            return Verdict("discard", f"confirm: the confirmation run failed ({first.rule})",
                           "the confirmation run produced no val_bpb; not kept", first.val_bpb, details)
        mean = sum(v for v in values if v is not None) / len(values)
        target = best - self.threshold
        details["confirm"].update(mean=mean, margin=best - mean, margin_sigma=self._sigmas(best - mean))
        details["estimate"] = mean
        rule = f"confirm: mean of {len(values)} seeds must be < {target:.6f} ({first.rule})"
        runs_text = ", ".join(f"{v:.6f} (seed {s})" for s, v in runs)
        if mean < target:
            return Verdict("keep", rule, f"confirmed: mean {mean:.6f} of {runs_text} improves by "
                           f"{best - mean:.6f}{self._in_sigma(best - mean)}", mean, details)
        return Verdict("discard", rule, f"not confirmed: mean {mean:.6f} of {runs_text} does not beat "
                       f"{best:.6f} by more than {self.threshold:.6g}", mean, details)

    def _details(self, best: float, value: float, thr: float) -> dict[str, Any]:
        return {
            "rule": self.name, "best": best, "val_bpb": value, "estimate": value, "threshold": thr,
            "target": best - thr, "margin": best - value, "min_delta": self.min_delta,
            "noise_sigma": self.noise_sigma, "k": self.factor, "sigma_source": self.sigma_source,
            "noise_std": self.sigma, "margin_sigma": self._sigmas(best - value),
            "fingerprint": self.fingerprint, "confirm_enabled": self.confirm,
        }

    def _sigmas(self, margin: float) -> float | None:
        s = self.sigma
        return margin / s if s and s > 0 and math.isfinite(margin) else None

    def _in_sigma(self, margin: float, signed: bool = False) -> str:
        x = self._sigmas(margin)
        if x is None:
            return ""
        return f" = {x:+.1f}σ" if signed else f" = {x:.1f}σ"


# --- a mechanism's say ------------------------------------------------------------------


def mechanism_verdict(decision: str, verdict: str | None) -> tuple[str, str]:
    """What a ``decide`` hook's ``verdict`` makes of ``decision`` (keep or discard so far).

    Returns the decision and the effect: ``""`` (no change), ``"overrode"`` (a keep made a
    discard: stricter, honoured) or ``"refused"`` (a keep of a discard: the rule's numbers win).
    """
    if verdict is None or verdict == decision:
        return decision, ""
    if verdict == "discard":
        return "discard", "overrode"
    return decision, "refused"


# --- building the policy of a run ------------------------------------------------------


def calibrated_floor(state: Any) -> NoiseFloor | None:
    """The floor this session measured at its start, if it did and enough runs scored."""
    c = state.calibrated
    if c is None or c.std is None:
        return None
    return NoiseFloor(fingerprint="", std=c.std, mad=c.mad or 0.0, mean=c.mean or 0.0, runs=len(c.values),
                      seeds=list(c.seeds), values=list(c.values), session="calibrated at session start")




def build_policy(cfg: Config, baseline_text: str, data: dict[str, Any], devices: Sequence[str], *,
                 calibrated: NoiseFloor | None = None,
                 declared: float | None = None) -> tuple[AcceptancePolicy, ev.AcceptanceConfigured]:
    """The policy for a run and the event recording it; AcceptanceError if its floor is missing.

    ``calibrated``: the floor measured at this session's start; ``declared``: the σ the script's
    summary declared. Either wins over nothing; calibrated, then the store, then declared.
    """
    ident = identity(baseline_text, data, devices)
    store_path = cfg.noise_store_path()
    try:
        stored = NoiseStore(store_path).get(ident.fingerprint)
    except ValueError as exc:
        raise AcceptanceError(str(exc)) from exc
    a = cfg.acceptance
    floor, source = next(((f, name) for f, name in (
        (calibrated, "calibrated"), (stored, "store"),
        (NoiseFloor(fingerprint=ident.fingerprint, std=declared, mad=0.0, mean=0.0, runs=0) if declared else None,
         "declared")) if f is not None), (None, ""))
    explicit = a.noise_sigma
    if explicit > 0 and floor is None:
        if a.calibrate < 2:
            raise AcceptanceError(_no_floor_message(explicit, ident, store_path))
        explicit = 0.0  # the calibration before the search supplies it; the rule is recorded again then
    policy = AcceptancePolicy(cfg.search.min_delta, explicit, a.confirm, floor, ident.fingerprint,
                              k=a.k, mode=a.rule, sigma_source=source)
    try:
        seeds = seed_params(TrainScript.parse(baseline_text))
    except ValueError:
        seeds = []
    event = ev.AcceptanceConfigured(
        rule=policy.name, description=policy.describe(), min_delta=policy.min_delta, noise_sigma=policy.noise_sigma,
        confirm=policy.confirm, allow_seed_tuning=a.allow_seed_tuning,
        threshold=policy.threshold, fingerprint=ident.fingerprint, hardware=ident.hardware,
        noise_std=floor.std if floor else None, noise_mad=floor.mad if floor else None,
        noise_runs=floor.runs if floor else 0, noise_session=floor.session if floor else "", seed_params=seeds,
        seed_note=fixed_seed_note(baseline_text), k=policy.factor, sigma_source=source,  # type: ignore[arg-type]
        mode=a.rule,
    )
    return policy, event


def _no_floor_message(k: float, ident: Identity, store: Any) -> str:
    return (f"acceptance.noise_sigma = {k:g} needs the noise floor of this script, corpus and hardware "
            f"(fingerprint {ident.fingerprint}: {ident.hardware}, dataset {ident.dataset_id}), and none is "
            f"recorded in {store}; measure it first with `bilevel noise CONFIG --runs 5` (same config), "
            "or set acceptance.noise_sigma = 0")

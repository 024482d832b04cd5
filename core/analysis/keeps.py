"""Which keeps stand out of the noise: a session's σ and a verdict on each keep.

σ comes from the first source that knows it: the session's measured noise floor (the one its
acceptance rule used, or the noise store's for its fingerprint), else the σ the script declares
in its summary (the surrogate prints its ``NOISE_SIGMA`` as ``noise_sigma``). A keep whose
improvement over the best before it is at most k·σ is *within noise*: a neutral change clears
that often by luck. The verdict source is pluggable (:class:`VerdictSource`); the report's default
(:class:`AuditOrNoise`) takes a session's keep-chain audit where one finished (fresh seeds beat
a single draw) and this σ test for the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.analysis.evidence_text import latest_audit
from core.record.state import RunState

K_DEFAULT = 2.0  # a neutral change beats the best by 2σ about 2 % of the time (one draw, normal noise)
WITHIN, BEYOND, UNKNOWN = "within noise", "beyond noise", "σ unknown"
# the audit's words (core/record/events.py AuditVerdictKind); superseded and unmeasured keeps say nothing
HELD = {BEYOND: True, "holds": True, WITHIN: False, "harmful": False}


@dataclass(frozen=True)
class Sigma:
    value: float
    source: str  # where it comes from, said in the report: "noise floor, 5 seeds", "declared by the script"


def session_sigma(state: RunState, floor_std: float | None = None, floor_runs: int = 0) -> Sigma | None:
    """The σ of val_bpb for this session: the measured floor first, else the script's declared σ."""
    if floor_std:
        return Sigma(floor_std, f"noise floor, {floor_runs} seeds" if floor_runs else "noise floor")
    if state.script_sigma:
        return Sigma(state.script_sigma, "declared by the script")
    return None


@dataclass(frozen=True)
class KeepVerdict:
    iteration: int
    improvement: float  # best before − val_bpb (positive: the keep improved)
    sigmas: float | None  # improvement / σ, None without σ
    verdict: str  # WITHIN | BEYOND | UNKNOWN for the σ test; the audit's own words for the audit

    @property
    def held(self) -> bool | None:
        """True: the keep stands out of noise; False: it does not; None: nothing to say."""
        return HELD.get(self.verdict)


class VerdictSource(Protocol):
    name: str  # what the report's "keeps that held" column says it counted

    def __call__(self, state: RunState, sigma: Sigma | None) -> dict[int, KeepVerdict]: ...


@dataclass(frozen=True)
class NoiseVerdicts:
    """A keep held when it beat the best before it by more than k·σ."""

    k: float = K_DEFAULT

    @property
    def name(self) -> str:
        return f"beyond {self.k:g}σ"

    def __call__(self, state: RunState, sigma: Sigma | None) -> dict[int, KeepVerdict]:
        out = {}
        for r in state.proposals:
            if r.decision != "keep" or r.val_bpb is None or r.best_before is None:
                continue
            gain = r.best_before - r.val_bpb
            if sigma is None:
                out[r.iteration] = KeepVerdict(r.iteration, gain, None, UNKNOWN)
            else:
                out[r.iteration] = KeepVerdict(r.iteration, gain, gain / sigma.value,
                                               BEYOND if gain > self.k * sigma.value else WITHIN)
        return out


@dataclass(frozen=True)
class AuditOrNoise:
    """The latest finished keep-chain audit's verdicts where a session has one, else the σ test.

    An audit re-runs each keep's leave-one-out on r fresh seeds, so its verdict is the better
    evidence; a keep the audit's share did not cover keeps its σ verdict.
    """

    k: float = K_DEFAULT

    @property
    def name(self) -> str:
        return f"held in the keep-chain audit where one ran, else beyond {self.k:g}σ"

    def __call__(self, state: RunState, sigma: Sigma | None) -> dict[int, KeepVerdict]:
        out = NoiseVerdicts(self.k)(state, sigma)
        audit = latest_audit(state)
        if audit is None or audit.finished is None:
            return out
        for it, v in audit.verdicts.items():
            if it in out and v.verdict in HELD:
                out[it] = KeepVerdict(it, out[it].improvement, out[it].sigmas, v.verdict)
        return out


def held_counts(verdicts: dict[int, KeepVerdict]) -> tuple[int, int, int]:
    """(held, did not hold, unknown) over one session's keeps."""
    held = [v.held for v in verdicts.values()]
    return held.count(True), held.count(False), held.count(None)

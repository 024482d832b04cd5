"""`bilevel doctor`'s noise line: which σ the keep rule will use for this config, and where it comes from."""
from __future__ import annotations

from core.record.config import Config
from core.run.check import Check
from core.services.noise_store import NoiseStore, script_digest
from core.services.script_folder import fixed_seed_note


def noise_check(cfg: Config) -> Check:
    a = cfg.acceptance
    try:
        text = cfg.script_path().read_text(encoding="utf-8")
    except OSError as exc:
        return Check("noise", False, f"cannot read the script: {exc}", warning=True)
    rule = "the paper's rule (any improvement)" if a.rule == "paper" else f"keep only beyond {a.k:g}σ once σ is known"
    note = fixed_seed_note(text, cfg.script_path().name)
    if note:
        return Check("noise", False, f"{rule}; the seed cannot vary, so σ cannot be measured: {note}", warning=True)
    sources = []
    if a.calibrate >= 2:
        sources.append(f"calibrated at session start over {a.calibrate} seeds")
    try:
        digest = script_digest(text)
        floors = [f for f in NoiseStore(cfg.noise_store_path()).floors().values() if f.script_sha256 == digest]
    except ValueError as exc:
        return Check("noise", False, str(exc), warning=True)
    sources += [f"σ = {f.std:.6g} stored for {f.hardware} ({f.runs} seeds)" for f in floors]
    if "noise_sigma:" in text:
        sources.append("declared by the script's summary (noise_sigma:)")
    if not sources:
        return Check("noise", True, f"{rule}; σ unknown (any improvement is kept): set acceptance.calibrate = 5 "
                     "or run `bilevel noise`", warning=a.rule != "paper")
    return Check("noise", True, f"{rule}; σ: " + "; ".join(sources))

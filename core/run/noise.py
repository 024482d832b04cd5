"""The noise floor: how much val_bpb moves when nothing but the data-order seed changes.

``bilevel noise`` runs the unchanged baseline once per seed, records every run and the
spread (sample std and MAD) as events in a session of its own, and stores the floor
under a fingerprint of what it depends on: the baseline script as evaluated (seed
constants normalised), the corpus (``dataset_id``) and the hardware (GPU names, or the
CPU model and core count). The acceptance rules and the report look the floor up by the
same fingerprint, so a floor measured elsewhere is never applied by mistake. The runs share
the session's slots (``run.gpus``): on four GPUs (or ``cpu:4``) four train at once.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.record import events as ev
from core.services.noise_store import MIN_RUNS, NoiseFloor, NoiseStore, identity
from core.services.seeds import with_seed
from core.services.script_folder import fixed_seed_note
from core.analysis.stats import summarize

if TYPE_CHECKING:
    from core.engine.engine import Engine


# --- the measurement ---------------------------------------------------------------------


async def measure_noise(engine: "Engine", runs: int) -> NoiseFloor | None:
    """Run the unchanged baseline ``runs`` times, seeds search.seed + 0 … runs − 1; save the floor.

    Everything is an event in ``engine``'s session; returns None when stopped or failed.
    """
    from core.levels.context import FatalRunError

    if runs < MIN_RUNS:
        raise ValueError(f"a noise measurement needs at least {MIN_RUNS} runs, got {runs}")
    cfg = engine.cfg
    try:
        await engine.start_session()  # data preparation and SessionStarted, without the search loop
        text = engine.read_artifact(engine.state.baseline_script)
        ident = identity(text, engine.state.data, engine.context.devices())
        seeds = [cfg.search.seed + i for i in range(runs)]
        engine.emit(ev.NoiseStarted(runs=runs, seeds=seeds, fingerprint=ident.fingerprint, hardware=ident.hardware,
                                    script_sha256=ident.script_sha256, dataset_id=ident.dataset_id,
                                    seed_note=fixed_seed_note(text, Path(engine.state.script_source).name)))

        async def one(i: int, seed: int) -> float | None:
            if engine.stopping:
                return None
            result = (await engine.context.train(i, with_seed(text, seed), diff="", seed=seed)).result
            engine.emit(ev.NoiseRunFinished(run=i, seed=seed, outcome=result.outcome, val_bpb=result.val_bpb,
                                            duration_s=result.duration_s, reason=result.reason))
            return result.val_bpb if result.outcome == "ok" else None

        # Every run at once: each waits for a free slot (one at a time on one slot); a hard stop cancels the rest.
        values = await asyncio.gather(*(one(i, seed) for i, seed in enumerate(seeds)))
        ok = [(seed, v) for seed, v in zip(seeds, values) if v is not None]
        if engine.stopping:
            engine.emit(ev.RunFinished(status="stopped", reason=engine.stop_reason))
            return None
        if len(ok) < MIN_RUNS:
            engine.emit(ev.RunFinished(status="failed", reason=(
                f"only {len(ok)} of {runs} runs produced val_bpb; a noise floor needs at least {MIN_RUNS}")))
            return None
        summary = summarize([v for _, v in ok])
        assert summary.std is not None and summary.mean is not None and summary.mad is not None
        floor = NoiseFloor(
            fingerprint=ident.fingerprint, std=summary.std, mad=summary.mad, mean=summary.mean, runs=len(ok),
            seeds=[s for s, _ in ok], values=[v for _, v in ok], hardware=ident.hardware,
            script_sha256=ident.script_sha256, dataset_id=ident.dataset_id, session=str(engine.dir),
            measured_at=time.time())
        store = cfg.noise_store_path()
        NoiseStore(store).put(floor)
        engine.emit(ev.NoiseMeasured(fingerprint=floor.fingerprint, hardware=floor.hardware, seeds=floor.seeds,
                                     values=floor.values, mean=floor.mean, std=floor.std, mad=floor.mad,
                                     failed=runs - len(ok), store=str(store)))
        engine.emit(ev.RunFinished(status="completed", reason=f"noise floor measured over {len(ok)} runs"))
        return floor
    except FatalRunError as exc:
        engine.emit(ev.RunFinished(status="failed", reason=str(exc)))
        return None
    finally:
        engine.writer.close()

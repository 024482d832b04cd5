"""Noise keeps under the paper's rule and the default k·σ rule, and how many the keep-chain audit catches.

On the surrogate (offline proposer, group A), n sessions × ITERATIONS per rule. A keep is *noise*
when the noise-free surface (baseline.surrogate.expected_bpb) did not improve by more than
TRUTH_EPS from the best it changed; the audit *catches* a noise keep when its verdict is
"within noise" or "harmful". Every session ends with an audit covering every keep (a large
audit.share), r = 3 fresh seeds per configuration. Prints a table, CIs and permutation tests;
exits non-zero when the default rule does not cut the noise keeps per run (p < 0.05).

    python bench/bench_audit.py --repeats 10 --iterations 30
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baseline import surrogate  # noqa: E402
from core.analysis.stats import bootstrap_diff_ci, bootstrap_mean_ci, permutation_pvalue  # noqa: E402
from core.engine.audit import keep_chain  # noqa: E402
from core.engine.engine import Engine  # noqa: E402
from core.record import config  # noqa: E402

TRUTH_EPS = 0.0001


def session_config(root: Path, rule: str, seed: int, iterations: int) -> config.Config:
    return config.from_dict({
        "name": f"audit-{rule}-{seed}", "endpoint": {"provider": "offline"}, "script": {"preset": "surrogate"},
        "data": {"source": "none"}, "budget": {"iterations": iterations, "stuck_after": 0},  # a bench runs through
        "search": {"group": "A", "seed": seed}, "acceptance": {"rule": rule},
        "audit": {"share": 100.0, "repeats": 3}, "run": {"sessions_dir": str(root), "gpus": "cpu:2"}})


async def one(root: Path, rule: str, seed: int, iterations: int) -> dict:
    engine = Engine.create(session_config(root, rule, seed, iterations))
    state = await engine.run()
    keeps = keep_chain(state)
    audit = state.audits[-1] if state.audits else None
    noise = [k for k in keeps
             if surrogate.expected_bpb(k.before) - surrogate.expected_bpb(k.record.values) <= TRUTH_EPS]
    verdicts = {n: v.verdict for n, v in (audit.verdicts.items() if audit else [])}
    caught = [k for k in noise if verdicts.get(k.iteration) in ("within noise", "harmful")]
    real_flagged = [k for k in keeps if k not in noise and verdicts.get(k.iteration) in ("within noise", "harmful")]
    truth_gain = surrogate.expected_bpb(state.best_values) - surrogate.expected_bpb(keeps[0].before) if keeps else 0.0
    proposed = audit.proposed.values if audit and audit.proposed else state.best_values
    return {"keeps": len(keeps), "noise": len(noise), "caught": len(caught),
            "superseded": sum(verdicts.get(k.iteration) == "superseded" for k in noise),
            "real_flagged": len(real_flagged), "truth_gain": truth_gain,
            "proposed_truth": surrogate.expected_bpb(proposed) - surrogate.expected_bpb(keeps[0].before) if keeps else 0.0}


def ci(values: list[float]) -> str:
    i = bootstrap_mean_ci(values)
    return f"{statistics.fmean(values):.2f} [{i.low:.2f}, {i.high:.2f}]" if i else f"{statistics.fmean(values):.2f}"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in ("paper", "default"):
            results[rule] = [await one(Path(tmp), rule, seed, args.iterations) for seed in range(args.repeats)]
    print(f"surrogate (h100), offline group A, {args.repeats} × {args.iterations} iterations; noise keep: "
          f"noise-free gain ≤ {TRUTH_EPS}; audit r = 3, every keep")
    print("| rule | keeps/run | noise keeps/run | share noise | caught by audit | superseded | real keeps flagged "
          "| true Δ best | true Δ audit-proposed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rule, rows in results.items():
        keeps = sum(r["keeps"] for r in rows)
        noise = sum(r["noise"] for r in rows)
        print(f"| {rule} | {ci([r['keeps'] for r in rows])} | {ci([r['noise'] for r in rows])} | "
              f"{noise}/{keeps} = {noise / max(keeps, 1):.0%} | {sum(r['caught'] for r in rows)}/{noise} | "
              f"{sum(r['superseded'] for r in rows)} | {sum(r['real_flagged'] for r in rows)}/{keeps - noise} | "
              f"{statistics.fmean(r['truth_gain'] for r in rows):+.5f} | "
              f"{statistics.fmean(r['proposed_truth'] for r in rows):+.5f} |")
    p_noise, d_noise = ([r["noise"] for r in results["default"]], [r["noise"] for r in results["paper"]])
    diff = bootstrap_diff_ci(p_noise, d_noise)
    p = permutation_pvalue(p_noise, d_noise)
    print(f"noise keeps/run, default − paper: {statistics.fmean(p_noise) - statistics.fmean(d_noise):+.2f} "
          f"[{diff.low:+.2f}, {diff.high:+.2f}], permutation p = {p:.4f}")
    gains = ([r["truth_gain"] for r in results["default"]], [r["truth_gain"] for r in results["paper"]])
    gi = bootstrap_diff_ci(*gains)
    print(f"true Δ best, default − paper: {statistics.fmean(gains[0]) - statistics.fmean(gains[1]):+.5f} "
          f"[{gi.low:+.5f}, {gi.high:+.5f}], permutation p = {permutation_pvalue(*gains):.4f}")
    return 0 if diff.high < 0 and p < 0.05 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The freeze rules on the surrogate: the paper's (freeze a parameter) against "direction" (freeze a direction).

Runs, as a user does (real `bilevel` subprocesses, headless, offline), one study per rule:

    bilevel run --demo --group B,C --repeats 10 --set script.preset=surrogate \
        --set strategy.freeze=RULE --iterations 30 --headless

and reports, per group and rule: Δ val_bpb (best − baseline) with its bootstrap CI; the
difference between the rules with its bootstrap CI and permutation p; how many repeats
ended with TOTAL_BATCH_SIZE halved (the surrogate's largest gain, −0.0116) and how many
froze its increase or the whole parameter; and, for C, what the built-in mechanisms did
(vetoes and modifications). Exits 1 when a built-in mechanism was deactivated in any run (a
modification the engine refused) or a run under the direction rule froze the whole batch size
other than by closing its last open direction.

    .venv/bin/python bench/bench_freeze_direction.py [--repeats 10] [--iterations 30] [--keep DIR]
    .venv/bin/python bench/bench_freeze_direction.py --analyze PAPER_STUDY DIRECTION_STUDY
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.analysis.stats import bootstrap_diff_ci, bootstrap_mean_ci, permutation_pvalue  # noqa: E402
from core.record import events as ev  # noqa: E402
from core.record.session import SessionReader  # noqa: E402
from core.record.state import fold  # noqa: E402

RULES = ("paper", "direction")
GROUPS = ("B", "C")
BATCH = "TOTAL_BATCH_SIZE"


def study(rule: str, repeats: int, iterations: int, cwd: Path) -> Path:
    cwd.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "core.cli", "run", "--demo", "--group", ",".join(GROUPS), "--repeats",
            str(repeats), "--set", "script.preset=surrogate", "--set", f"strategy.freeze={rule}",
            "--iterations", str(iterations), "--headless"]
    with open(cwd / f"{rule}.log", "w") as log:
        proc = subprocess.run(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {rule} study exited {proc.returncode}; see {cwd}")
    return sorted((cwd / "sessions").glob("*-study-*"), key=lambda p: p.stat().st_mtime)[-1]


def session_facts(path: Path) -> dict:
    events = list(SessionReader(path).events())
    state = fold(events)
    base = state.baseline_val_bpb
    effects = Counter(e.effect for e in events if isinstance(e, ev.MechanismEffect) and e.hook == "review_proposal")
    frozen = [e for e in events if isinstance(e, ev.ParamFrozen) and e.name == BATCH]
    return {
        "group": state.group, "delta": (state.best_val_bpb - base) if base is not None else None,
        "halved": state.best_values.get(BATCH, 2**19) < 2**19,
        "batch_up_frozen": any(e.direction == "up" for e in frozen),
        "batch_frozen": any(e.direction == "" for e in frozen),
        "vetoed": effects["vetoed"], "modified": effects["modified"],
        "deactivated": sum(isinstance(e, ev.MechanismDeactivated) for e in events),
        # under the direction rule the whole batch size is frozen only when that closes its last open direction
        "decrease_blocked": state.config.get("strategy", {}).get("freeze") == "direction" and any(
            e.direction == "" and "no other direction is open" not in e.reason for e in frozen),
    }


def facts(study_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for path in sorted(p for p in study_dir.iterdir() if (p / "events.jsonl").is_file()):
        f = session_facts(path)
        if f["group"] in out and f["delta"] is not None:
            out[f["group"]].append(f)
    return out


def fmt_ci(ci) -> str:
    return "—" if ci is None else f"[{ci.low:+.4f}, {ci.high:+.4f}]"


def report(studies: dict[str, Path]) -> int:
    by_rule = {rule: facts(path) for rule, path in studies.items()}
    print("| group | rule | n | Δ val_bpb mean | 95% CI | batch halved | batch ↑ frozen | batch frozen | "
          "vetoes | modifications |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failures = []
    for g in GROUPS:
        for rule in RULES:
            rows = by_rule[rule][g]
            deltas = [r["delta"] for r in rows]
            mean = sum(deltas) / len(deltas) if deltas else float("nan")
            print(f"| {g} | {rule} | {len(rows)} | {mean:+.4f} | {fmt_ci(bootstrap_mean_ci(deltas))} | "
                  f"{sum(r['halved'] for r in rows)}/{len(rows)} | {sum(r['batch_up_frozen'] for r in rows)} | "
                  f"{sum(r['batch_frozen'] for r in rows)} | {sum(r['vetoed'] for r in rows)} | "
                  f"{sum(r['modified'] for r in rows)} |")
    print()
    print("| group | direction − paper (Δ) | 95% CI | permutation p |")
    print("|---|---|---|---|")
    for g in GROUPS:
        a = [r["delta"] for r in by_rule["direction"][g]]
        b = [r["delta"] for r in by_rule["paper"][g]]
        diff = sum(a) / len(a) - sum(b) / len(b)
        p = permutation_pvalue(a, b)
        print(f"| {g} | {diff:+.4f} | {fmt_ci(bootstrap_diff_ci(a, b))} | {p:.3g} |")
        for rule in RULES:
            if sum(r["deactivated"] for r in by_rule[rule][g]):
                failures.append(f"{g}/{rule}: a built-in mechanism was deactivated")
        if any(r["decrease_blocked"] for r in by_rule["direction"][g]):
            failures.append(f"{g}: the direction rule froze the batch's decrease without failed decreases")
    for f in failures:
        print(f"bench: target missed: {f}", file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--analyze", nargs=2, metavar=("PAPER_STUDY", "DIRECTION_STUDY"),
                        help="report on two finished studies instead of running them")
    args = parser.parse_args()
    if args.analyze:
        return report(dict(zip(RULES, map(Path, args.analyze))))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilevel-freeze-"))
    started = time.monotonic()
    studies = {rule: study(rule, args.repeats, args.iterations, work / rule) for rule in RULES}
    print(f"both studies: {time.monotonic() - started:.0f} s (load {os.getloadavg()[0]:.1f}); kept in {work}")
    return report(studies)


if __name__ == "__main__":
    raise SystemExit(main())

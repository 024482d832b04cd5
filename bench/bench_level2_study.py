"""The A–D study on the calibrated surrogate: the pre-screen off and on, the paper's freeze rule and "direction".

Runs, as a user does (real `bilevel` subprocesses, headless, offline), one study per configuration:

    bilevel run --demo --group GROUPS --repeats 10 --set script.preset=surrogate --iterations 30 \
        --set strategy.freeze=RULE --set level2.prescreen=MODE --headless

  paper-off        A, B, C, D   (the paper's setting: every group, nothing gated)
  paper-gate       C, D         (the pre-screen gates Level 2's mechanisms; A and B have no Level 2)
  direction-off    B, C         (the direction rule; A and D have no Level 1.5)
  direction-gate   C

Each study's repeat r runs seed r in every configuration, so every row sees the same baselines.
Reports, per group and configuration: Δ val_bpb (best − baseline) with its bootstrap CI, how many
repeats ended with TOTAL_BATCH_SIZE halved (the surrogate's largest single gain), the mechanisms
activated and refused by the gate; then the comparisons that matter (each group against A, the
gate against none, direction against paper) with the difference's bootstrap CI and permutation p.

    .venv/bin/python bench/bench_level2_study.py [--repeats 10] [--iterations 30] [--only paper-off,...] [--keep DIR]
    .venv/bin/python bench/bench_level2_study.py --analyze DIR     (a --keep folder whose studies finished)
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

CONFIGS = {  # name -> (groups, strategy.freeze, level2.prescreen)
    "paper-off": ("A,B,C,D", "paper", "off"),
    "paper-gate": ("C,D", "paper", "gate"),
    "direction-off": ("B,C", "direction", "off"),
    "direction-gate": ("C", "direction", "gate"),
    # the same settings, one group each: run beside the others when time is short (rows merge by setting)
    "paper-gate-C": ("C", "paper", "gate"),
    "paper-gate-D": ("D", "paper", "gate"),
}
BATCH = "TOTAL_BATCH_SIZE"


def run_study(name: str, repeats: int, iterations: int, cwd: Path) -> tuple[Path, float]:
    groups, freeze, prescreen = CONFIGS[name]
    cwd.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "core.cli", "run", "--demo", "--group", groups, "--repeats", str(repeats),
            "--set", "script.preset=surrogate", "--set", f"strategy.freeze={freeze}",
            "--set", f"level2.prescreen={prescreen}", "--iterations", str(iterations), "--headless"]
    started = time.monotonic()
    with open(cwd / f"{name}.log", "w") as log:
        proc = subprocess.run(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {name} study exited {proc.returncode}; see {cwd}")
    return study_dir(cwd), time.monotonic() - started


def study_dir(cwd: Path) -> Path:
    return sorted((cwd / "sessions").glob("*-study-*"), key=lambda p: p.stat().st_mtime)[-1]


def session_facts(path: Path) -> dict:
    events = list(SessionReader(path).events())
    state = fold(events)
    base = state.baseline_val_bpb
    screens = [e for e in events if isinstance(e, ev.MechanismPrescreened)]
    effects = Counter(e.effect for e in events if isinstance(e, ev.MechanismEffect) and e.hook == "review_proposal")
    return {
        # a run cut short (a study stopped to save time) is left out, never counted with fewer iterations
        "group": state.group, "delta": (state.best_val_bpb - base) if base is not None and state.status == "completed"
        else None,
        "halved": state.best_values.get(BATCH, 2**19) < 2**19,
        "activated": sum(isinstance(e, ev.MechanismActivated) for e in events),
        "screened": len(screens), "refused": sum(s.verdict in ("harmful", "failed") and s.mode == "gate" for s in screens),
        "refused_names": [s.name for s in screens if s.verdict == "harmful" and s.mode == "gate"],
        "screen_s": sum(s.wall_s for s in screens),
        "vetoed": effects["vetoed"], "modified": effects["modified"],
    }


def facts(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for session in sorted(p for p in path.iterdir() if (p / "events.jsonl").is_file()):
        f = session_facts(session)
        if f["delta"] is not None:
            out.setdefault(f["group"], []).append(f)
    return out


def fmt_ci(ci) -> str:
    return "—" if ci is None else f"[{ci.low:+.4f}, {ci.high:+.4f}]"


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


Key = tuple[str, str, str]  # (group, freeze, pre-screen), the freeze "—" outside B and C, the pre-screen outside C and D


def key(group: str, freeze: str, prescreen: str) -> Key:
    return group, freeze if group in "BC" else "—", prescreen if group in "CD" else "—"


COMPARISONS = [  # (label, key, key)
    ("B − A (paper, off)", key("B", "paper", "off"), key("A", "", "")),
    ("C − A (paper, off)", key("C", "paper", "off"), key("A", "", "")),
    ("D − A (off)", key("D", "", "off"), key("A", "", "")),
    ("C gate − C off (paper)", key("C", "paper", "gate"), key("C", "paper", "off")),
    ("D gate − D off", key("D", "", "gate"), key("D", "", "off")),
    ("C gate − C off (direction)", key("C", "direction", "gate"), key("C", "direction", "off")),
    ("B direction − B paper", key("B", "direction", ""), key("B", "paper", "")),
    ("C direction − C paper (off)", key("C", "direction", "off"), key("C", "paper", "off")),
    ("C direction − C paper (gate)", key("C", "direction", "gate"), key("C", "paper", "gate")),
    ("C gate − A (paper)", key("C", "paper", "gate"), key("A", "", "")),
    ("D gate − A", key("D", "", "gate"), key("A", "", "")),
]


def report(studies: dict[str, Path]) -> int:
    rows_by: dict[Key, list[dict]] = {}
    for name, path in studies.items():
        _, freeze, prescreen = CONFIGS[name]
        for g, rows in facts(path).items():
            rows_by.setdefault(key(g, freeze, prescreen), []).extend(rows)
    print("| group | freeze | pre-screen | n | Δ val_bpb mean | 95% CI | batch halved | activated | "
          "pre-screened (refused) | refused | vetoes | modifications |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(rows_by):
        rows = rows_by[k]
        deltas = [r["delta"] for r in rows]
        refused = Counter(n for r in rows for n in r["refused_names"])
        print(f"| {' | '.join(k)} | {len(rows)} | "
              f"{mean(deltas):+.4f} | {fmt_ci(bootstrap_mean_ci(deltas))} | {sum(r['halved'] for r in rows)}/{len(rows)} | "
              f"{sum(r['activated'] for r in rows)} | {sum(r['screened'] for r in rows)} "
              f"({sum(r['refused'] for r in rows)}) | {', '.join(f'{n} ×{c}' for n, c in refused.most_common()) or '—'} | "
              f"{sum(r['vetoed'] for r in rows)} | {sum(r['modified'] for r in rows)} |")
    print()
    print("| comparison | difference of mean Δ | 95% CI | permutation p |")
    print("|---|---|---|---|")
    for label, k1, k2 in COMPARISONS:
        a = [r["delta"] for r in rows_by.get(k1, [])]
        b = [r["delta"] for r in rows_by.get(k2, [])]
        if len(a) < 2 or len(b) < 2:
            continue
        p = permutation_pvalue(a, b)
        print(f"| {label} | {mean(a) - mean(b):+.4f} | {fmt_ci(bootstrap_diff_ci(a, b))} | "
              f"{'—' if p is None else f'{p:.3g}'} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations to run, comma-separated")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--analyze", metavar="DIR", help="report on the finished studies under DIR")
    args = parser.parse_args()
    if args.analyze:
        root = Path(args.analyze)
        return report({name: study_dir(root / name) for name in CONFIGS if (root / name / "sessions").is_dir()})
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilevel-level2-"))
    studies = {}
    for name in args.only.split(","):
        studies[name], took = run_study(name, args.repeats, args.iterations, work / name)
        print(f"{name}: {took:.0f} s (load {os.getloadavg()[0]:.1f}); kept in {work / name}", flush=True)
    return report(studies)


if __name__ == "__main__":
    raise SystemExit(main())

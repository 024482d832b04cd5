"""Every group a study can run offline, on the calibrated surface with the audit on: Δ, keeps, noise keeps caught.

Runs, as a user does (one real ``bilevel`` process, headless, offline):

    bilevel run --demo --group <every offline group> --repeats 10 --iterations 30 \\
        --set script.preset=surrogate --set audit.share=100 --set acceptance.rule=default --headless

The groups are the registry's, less those a study refuses offline (a hybrid whose hint is prompt
text: nothing offline reads a prompt). The surface is the default "h100" profile, the rule the
default k·σ one (σ the surrogate declares), and every session ends with the keep-chain audit
over every keep (``audit.share = 100``; r = 3 fresh seeds per configuration).

Then, per group: Δ (best − baseline, measured) with its bootstrap CI from the study's report,
keeps per run, and the noise keeps: a keep is *noise* when the noise-free surface
(``baseline.surrogate.expected_bpb``) did not improve by more than TRUTH_EPS over the best it
changed. That truth is computed here, from the configurations the session recorded: a debug
value of this bench that no event carries and no level or proposer ever sees. The audit
*caught* a noise keep when its verdict is "within noise" or "harmful"; "real keeps flagged" are
the keeps that did improve the surface and that the audit did not confirm. Prints the tables
(for bench/RESULTS.md), the wall time, the CPU seconds and the load average; exits 1 when the
study fails or the report lacks a group's CI.

    nice -n 5 .venv/bin/python bench/bench_group_study.py [--repeats 10] [--iterations 30] [--rule paper] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baseline import surrogate  # noqa: E402
from core.analysis.report import GROUP_HEADER, build_report, collect, group_rows, md_table  # noqa: E402
from core.analysis.stats import bootstrap_mean_ci  # noqa: E402
from core.engine.audit import keep_chain  # noqa: E402
from core.record import config, registry  # noqa: E402
from core.record.session import SessionReader  # noqa: E402
from core.record.state import fold  # noqa: E402

TRUTH_EPS = 0.0001  # as bench/bench_audit.py: a keep whose noise-free gain is at most this is noise
CAUGHT = ("within noise", "harmful")


def offline_groups() -> list[str]:
    """The registry's groups a study accepts offline, in registry order."""
    out = []
    for name in registry.group_names():
        try:
            config.demo_config(**{"search.group": name, "script.preset": "surrogate"})
        except config.ConfigError:
            continue
        out.append(name)
    return out


def truth(values: dict) -> float:
    """The noise-free surface at a recorded configuration (never logged, never shown to a level)."""
    return surrogate.expected_bpb({**surrogate.hyperparameters(), **values})


def session_figures(path: Path) -> dict:
    state = fold(list(SessionReader(path).events()))
    keeps = keep_chain(state)
    noise = [k for k in keeps if truth(k.before) - truth(k.record.values) <= TRUTH_EPS]
    audit = state.audits[-1] if state.audits else None
    verdicts = {n: v.verdict for n, v in (audit.verdicts.items() if audit else [])}
    base = next(r for r in state.records if r.decision == "baseline")
    return {"keeps": len(keeps), "noise": len(noise),
            "caught": sum(verdicts.get(k.iteration) in CAUGHT for k in noise),
            "measured": sum(k.iteration in verdicts and verdicts[k.iteration] != "unmeasured" for k in keeps),
            "real_flagged": sum(verdicts.get(k.iteration) in CAUGHT for k in keeps if k not in noise),
            "true_delta": truth(state.best_values) - truth(base.values),
            "audited": audit is not None or not keeps}  # a run without keeps has nothing to audit


def ci(values: list[float], fmt: str = ".2f") -> str:
    i = bootstrap_mean_ci(values)
    mean = statistics.fmean(values)
    return f"{mean:{fmt}} [{i.low:{fmt}}, {i.high:{fmt}}]" if i else f"{mean:{fmt}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--study", help="read this finished study again instead of running one (no timings)")
    parser.add_argument("--rule", choices=("default", "paper"), default="default",
                        help="acceptance.rule: the default k·σ rule, or the paper's (any improvement)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilevel-groups-")) if not args.study \
        else Path(args.study)
    work.mkdir(parents=True, exist_ok=True)
    groups = offline_groups()
    refused = [g for g in registry.group_names() if g not in groups]
    cmd = [sys.executable, "-m", "core.cli", "run", "--demo", "--group", ",".join(groups), "--repeats",
           str(args.repeats), "--iterations", str(args.iterations), "--set", "script.preset=surrogate",
           "--set", "audit.share=100", "--set", f"acceptance.rule={args.rule}", "--headless"]
    load0 = os.getloadavg()
    started = time.monotonic()
    if args.study:
        study = Path(args.study)
    else:
        with open(work / "study.log", "w") as log:
            proc = subprocess.run(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            print(f"MISSED: the study exited {proc.returncode}; see {work / 'study.log'}", file=sys.stderr)
            return 1
        (study,) = sorted((work / "sessions").glob("*-study-*"), key=lambda p: p.stat().st_mtime)[-1:]
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load1 = os.getloadavg()
    report = build_report(collect([study]))
    per_group: dict[str, list[dict]] = defaultdict(list)
    for session in sorted(p for p in study.iterdir() if (p / "events.jsonl").is_file()):
        per_group[session.name.rsplit("-r", 1)[0]].append(session_figures(session))

    print(f"## {len(groups)} groups × {args.repeats} repeats × {args.iterations} iterations, surrogate (h100), "
          f"{'the default k·σ' if args.rule == 'default' else 'the paper'} rule, audit of every keep (r = 3)\n")
    timing = "read again from " + str(study) if args.study else (
        f"wall {wall:.0f} s, CPU {usage.ru_utime + usage.ru_stime:.0f} s (user {usage.ru_utime:.0f}, "
          f"sys {usage.ru_stime:.0f}) on 2 cores shared with other work; load average "
          f"{load0[0]:.1f} / {load0[1]:.1f} at the start, {load1[0]:.1f} / {load1[1]:.1f} at the end (1 / 5 min)")
    print(f"groups: {', '.join(groups)} (refused offline: {', '.join(refused) or 'none'}); {timing}\n")
    print(md_table(GROUP_HEADER, group_rows(report)), "\n")
    header = ["group", "n", "Δ measured [95% CI]", "true Δ (surface)", "keeps/run", "noise keeps/run",
              "noise keeps caught by the audit", "real keeps flagged"]
    rows = []
    summary = {g.group: g for g in report.groups}
    for group in groups:
        runs = per_group[group]
        g = summary[group]
        delta = (f"{g.summary.mean:+.4f} [{g.ci.low:+.4f}, {g.ci.high:+.4f}]" if g.ci
                 else f"{g.summary.mean:+.4f}")
        noise, caught = sum(r["noise"] for r in runs), sum(r["caught"] for r in runs)
        real = sum(r["keeps"] - r["noise"] for r in runs)
        rows.append([group, str(len(runs)), delta, ci([r["true_delta"] for r in runs], "+.4f"),
                     ci([r["keeps"] for r in runs]), ci([r["noise"] for r in runs]),
                     f"{caught}/{noise} ({100 * caught / noise:.0f} %)" if noise else "0/0",
                     f"{sum(r['real_flagged'] for r in runs)}/{real}"])
    print(md_table(header, rows), "\n")
    failures = []
    if [g.group for g in report.groups] != groups or any(g.ci is None for g in report.groups):
        failures.append("the report does not show every group with a CI")
    if not all(r["audited"] for runs in per_group.values() for r in runs):
        failures.append("a session with keeps ended without its audit")
    for f in failures:
        print(f"MISSED: {f}", file=sys.stderr)
    if not args.study:
        print(f"sessions kept in {work}" if args.keep else f"sessions in {work} (temporary)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

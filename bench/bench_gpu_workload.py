"""The reference workload on a GPU, end to end, in one call.

Runs ``baseline/train.py`` at the reference config for 60 s of training on a synthetic
dataset of the reference shape (vocab 8192, BOS-aligned rows of 2049 tokens, a val set of
the public eval size: the machine needs no network), then the public autoresearch script
shape through bilevel's per-run folder copy, with a PyTorch SDPA stand-in for its hub
flash-attention kernel. For each it prints tok/s, MFU, peak memory, compile seconds,
start-up and eval seconds, and the recompiles torch logged.

    python bench/bench_gpu_workload.py                    # on the GPU machine
    python bench/bench_gpu_workload.py --public ~/autoresearch   # also the unmodified public script
    python bench/bench_gpu_workload.py --smoke            # CPU: tiny preset, 3 s, checks the harness

``--public DIR``: a checkout of the public script whose own data is prepared (its
``prepare.py`` already run); without it the public part runs the bench's own miniature
of that shape (imports from prepare.py, the hub kernel, a literal seed), which is all the
smoke mode can do. Exits 1 when a run fails or its start-up + eval overhead exceeds the
grace the engine gives a 300 s run (150 s), since such a run would be killed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baseline.presets import PRESETS  # noqa: E402
from core.services import script_folder  # noqa: E402
from core.services.script import TrainScript  # noqa: E402

GRACE_300_S = 150.0  # config: budget.grace_s defaults to max(60, time_s / 2)

KERNEL_STAND_IN = '''"""Stand-in for the `kernels` hub package: flash_attn_func on PyTorch SDPA (bench only)."""
import torch
import torch.nn.functional as F


class _FlashAttention:
    @staticmethod
    def flash_attn_func(q, k, v, causal=True, window_size=(-1, -1)):
        """q, k, v as flash-attn takes them, (B, T, H, D); window_size = (left, right)."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        t, left = q.size(-2), window_size[0]
        if left < 0 or left >= t - 1:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            pos = torch.arange(t, device=q.device)
            d = pos[:, None] - pos[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=(d >= 0) & (d <= left))
        return y.transpose(1, 2)


class _Kernel:
    flash_attn_interface = _FlashAttention


def get_kernel(repo):
    return _Kernel()
'''

# The bench's own miniature of the public shape (not the public code): constants from
# prepare.py, attention through the hub kernel, a literal seed, 10 untimed steps.
MINI_PREPARE = '''MAX_SEQ_LEN = 256
TIME_BUDGET = 300
EVAL_TOKENS = 4 * 256 * 8
'''
MINI_TRAIN = '''import time
import torch
import torch.nn.functional as F
from kernels import get_kernel
from prepare import MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS

fa = get_kernel("stand-in").flash_attn_interface
WIDTH = 256
DEVICE_BATCH_SIZE = 8
t_start = time.time()
torch.manual_seed(42)
device = "cuda" if torch.cuda.is_available() else "cpu"
w = torch.nn.Linear(WIDTH, 3 * WIDTH, bias=False).to(device)
opt = torch.optim.AdamW(w.parameters(), lr=1e-3)
step, total = 0, 0.0
while True:
    t0 = time.time()
    x = torch.randn(DEVICE_BATCH_SIZE, MAX_SEQ_LEN, WIDTH, device=device)
    q, k, v = w(x).view(DEVICE_BATCH_SIZE, MAX_SEQ_LEN, 3, 4, WIDTH // 4).unbind(2)
    y = fa.flash_attn_func(q, k, v, causal=True, window_size=(MAX_SEQ_LEN // 2, 0))
    loss = y.square().mean()
    loss.backward(); opt.step(); opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    if step > 10:
        total += dt
    tok = int(DEVICE_BATCH_SIZE * MAX_SEQ_LEN / dt)
    print(f"\\rstep {step:05d} ({100 * min(total / TIME_BUDGET, 1):.1f}%) | loss: {loss.item():.6f} | dt: {dt * 1000:.0f}ms | tok/sec: {tok:,} | mfu: 0.0% | remaining: {max(0, TIME_BUDGET - total):.0f}s    ", end="", flush=True)
    step += 1
    if step > 10 and total >= TIME_BUDGET:
        break
print()
peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
print("---")
print(f"val_bpb:          {1.0 + loss.item():.6f}")
print(f"training_seconds: {total:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"peak_vram_mb:     {peak:.1f}")
print(f"mfu_percent:      0.00")
print(f"num_steps:        {step}")
'''

PROGRESS = re.compile(r"step (\d+) .*?dt: (\d+)ms \| tok/sec: ([\d,]+) \| mfu: ([\d.]+)%")


@dataclass
class Measured:
    name: str
    rc: int = -1
    summary: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[float, int, float, float, float]] = field(default_factory=list)  # (t, step, dt_s, tok/s, mfu)
    launched: float = 0.0
    summary_at: float | None = None
    recompiles: int = 0
    tail: str = ""

    def row(self) -> dict[str, str]:
        timed = [s for s in self.steps if s[1] > 10] or self.steps
        tok = statistics.median(s[3] for s in timed) if timed else 0.0
        compile_s = sum(s[2] for s in self.steps[:2])  # the first two steps compile forward and backward
        first = self.steps[0][0] - self.steps[0][2] if self.steps else None
        eval_s = (self.summary_at - self.steps[-1][0]) if self.summary_at and self.steps else None
        return {
            "workload": self.name, "rc": str(self.rc), "tok/s": f"{tok:,.0f}",
            "MFU %": self.summary.get("mfu_percent", "?"), "peak MiB": self.summary.get("peak_vram_mb", "?"),
            "compile s": f"{compile_s:.1f}", "start-up s": f"{first - self.launched:.1f}" if first else "?",
            "eval s": f"{eval_s:.1f}" if eval_s is not None else "?", "recompiles": str(self.recompiles),
            "train s": self.summary.get("training_seconds", "?"), "total s": self.summary.get("total_seconds", "?"),
        }

    def overhead(self) -> float | None:
        try:
            return float(self.summary["total_seconds"]) - float(self.summary["training_seconds"])
        except (KeyError, ValueError):
            return None


def synthetic_data(folder: Path, vocab: int, row_tokens: int, train_rows: int, val_rows: int) -> Path:
    """A dataset in the bilevel format, random ids in BOS-aligned rows: the reference shape."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bos = vocab - 4
    for split, rows in (("train", train_rows), ("val", val_rows)):
        ids = rng.integers(0, bos, size=(rows, row_tokens), dtype=np.uint16)
        ids[:, 0] = bos
        ids.tofile(folder / f"{split}.bin")
    lengths = [int(n) for n in rng.integers(1, 6, size=vocab)]
    lengths[bos:] = [0] * 4
    (folder / "tokenizer.json").write_text(json.dumps({"vocab_size": vocab, "eot_id": bos,
                                                       "token_byte_lengths": lengths}))
    (folder / "meta.json").write_text(json.dumps({
        "format": "bilevel-dataset", "format_version": 1, "dataset_id": f"synthetic-{vocab}", "row_tokens": row_tokens,
        "tokens": {"train": train_rows * row_tokens, "val": val_rows * row_tokens}}))
    return folder


def run_measured(name: str, script: Path, env: dict[str, str], timeout: float) -> Measured:
    m = Measured(name)
    env = {**os.environ, **env, "TORCH_LOGS": "recompiles", "PYTHONUNBUFFERED": "1"}
    m.launched = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-u", str(script.name)], cwd=script.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = b""
    deadline = m.launched + timeout
    assert proc.stdout is not None
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        now = time.monotonic()
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if (p := PROGRESS.search(line)):
                m.steps.append((now, int(p.group(1)), int(p.group(2)) / 1000, float(p.group(3).replace(",", "")),
                                float(p.group(4))))
            elif line.startswith("val_bpb:"):
                m.summary_at = now
            if ":" in line and m.summary_at is not None:
                key, _, value = line.partition(":")
                m.summary[key.strip()] = value.strip()
        if now > deadline:
            proc.kill()
            break
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    m.rc = proc.wait()
    m.recompiles = len(re.findall(r"Recompiling function", stderr))
    m.tail = stderr[-2000:]
    return m


def reference_run(work: Path, data: Path, budget: float, overrides: dict[str, object], timeout: float) -> Measured:
    script = TrainScript.parse((ROOT / "baseline" / "train.py").read_text(encoding="utf-8"))
    folder = work / "reference"
    folder.mkdir()
    path = folder / "train.py"
    path.write_text(script.apply({**overrides, "TIME_BUDGET": budget}).text, encoding="utf-8")
    return run_measured("baseline/train.py (reference)", path, {"BILEVEL_DATA_DIR": str(data), "BILEVEL_SEED": "42"},
                        timeout)


def public_run(work: Path, public: Path | None, budget: float, timeout: float) -> Measured:
    if public is None:
        source = work / "mini-public"
        source.mkdir()
        (source / "prepare.py").write_text(MINI_PREPARE)
        (source / "train.py").write_text(MINI_TRAIN)
        name = "public shape (bench miniature, SDPA kernel)"
    else:
        source, name = public.expanduser().resolve(), "public train.py (SDPA stand-in kernel)"
    found = script_folder.inspect(source / "train.py", (source / "train.py").read_text(encoding="utf-8"))
    if found.problems:
        raise SystemExit("; ".join(found.problems))
    copy = script_folder.materialise(found, (source / "train.py").read_text(encoding="utf-8"), work / "public",
                                     found.changes(budget))
    (copy.parent / "kernels.py").write_text(KERNEL_STAND_IN)  # shadows the hub package in the copy
    if found.seed_note():
        print(f"note: {found.seed_note()}", file=sys.stderr)
    return run_measured(name, copy, {}, timeout)


def print_table(rows: list[dict[str, str]]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU: the cpu-tiny preset for 3 s (checks the harness)")
    ap.add_argument("--budget", type=float, help="training seconds per workload (default 60; smoke 3)")
    ap.add_argument("--public", type=Path, help="a checkout of the public script with its data prepared")
    args = ap.parse_args()
    budget = args.budget or (3.0 if args.smoke else 60.0)
    if args.smoke:
        overrides: dict[str, object] = dict(PRESETS["cpu-tiny"])
        vocab, row, train_rows, val_rows = 512, 129, 2000, 40
    else:
        overrides = {}
        vocab, row = 8192, 2049
        train_rows = int(budget * 2.5e6 / row) + 1024  # a little more than a run reads at ~1.7M tok/s
        val_rows = 40 * 2**19 // 2048  # the public eval size
    timeout = budget + 600
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        data = synthetic_data(work / "data", vocab, row, train_rows, val_rows)
        print(f"synthetic data: {train_rows:,} + {val_rows:,} rows of {row} in {time.monotonic() - t0:.1f}s",
              file=sys.stderr)
        runs = [reference_run(work, data, budget, overrides, timeout), public_run(work, args.public, budget, timeout)]
    print_table([m.row() for m in runs])
    failed = False
    for m in runs:
        over = m.overhead()
        if m.rc != 0 or over is None:
            print(f"FAIL {m.name}: exit {m.rc}\n{m.tail}", file=sys.stderr)
            failed = True
        elif over > GRACE_300_S:
            print(f"FAIL {m.name}: start-up + eval {over:.0f}s exceeds the {GRACE_300_S:.0f}s grace", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

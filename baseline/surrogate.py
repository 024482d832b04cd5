"""SURROGATE workload: train.py-shaped, trains nothing, answers in milliseconds.

It has the reference script's hyperparameter block, prints progress lines and the same
``---`` / ``key: value`` summary, and exits like it (0 done, 1 out of memory, 2 bad
configuration, 3 loss diverged), but its ``val_bpb`` is a response surface of the
constants plus seeded noise. It exists so that groups and mechanisms can be compared with
n >= 10 repeats in minutes before any GPU time is spent (``script.preset = "surrogate"``).
It is labelled a surrogate everywhere it appears (``surrogate: 1`` in its summary, the
``surrogate`` flag of the session, the app header, the report) and a study never mixes it
with real runs. Nothing it prints is a measurement.

The surface, term by term, and where each shape comes from:

- **Baseline near 0.998** at the reference constants: the H100 baseline of Karpathy's
  autoresearch ``train.py`` (its README and issue 15 of this project, "H100 baseline near
  0.998"). ``BASELINE_BPB`` below is the value the surface is calibrated to.
- **Seed noise**, Gaussian with σ = ``NOISE_SIGMA`` (0.0007 by default: the seed-to-seed
  spread issue 15 quotes for this workload). The noise is seeded by ``BILEVEL_SEED`` *and*
  the configuration, so one configuration at one seed always gives the same number (like a
  deterministic training run) while two configurations at one seed do not share their noise.
- **A fixed time budget**: steps = ``TIME_BUDGET`` / step time, step time =
  ``TOTAL_BATCH_SIZE`` × seconds per token + a fixed optimizer cost per step; seconds per
  token from 6·N FLOPs per token at an MFU that falls for small ``DEVICE_BATCH_SIZE``,
  calibrated to the public script's 953 steps of 2^19 tokens in 300 s on an H100 (issue 11).
  The tokens seen are therefore about constant and a smaller batch buys more optimizer
  steps. Their worth follows McCandlish et al. 2018, "An Empirical Model of Large-Batch
  Training": effective tokens = tokens / (1 + B / B_noise), and the loss falls with
  effective tokens as a Chinchilla-style power law (Hoffmann et al. 2022, exponent 0.28).
  With B_noise = 2^17 this gives the bilevel-autoresearch paper's observation (Qu & Lu
  2026, arXiv:2603.23420: the large Group C gains came from cutting TOTAL_BATCH_SIZE from
  2^19 to 2^17–2^18, Group C −0.045 ± 0.030): about −0.027 at 2^18 and −0.029 at 2^17 with
  the reference learning rates, −0.046 at 2^17 once they are retuned, less at 2^16 (the
  fixed per-step cost and a small device batch eat the throughput), and a loss of about
  +0.044 from raising it to 2^20.
- **Model size** (``DEPTH``, ``ASPECT_RATIO``): a Chinchilla parameter term N^-0.34 whose
  weight makes the reference size compute-optimal for its budget (bigger models see fewer
  tokens in the same time).
- **Learning-rate optima that move with the batch**: the optimum of ``MATRIX_LR``,
  ``EMBEDDING_LR`` and ``UNEMBEDDING_LR`` scales with sqrt(B / 2^19), the square-root rule
  for adaptive optimizers (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
  Gradient Algorithms"); the penalty is quadratic in ln(lr / optimum), 1.5× steeper above
  the optimum than below. These are interactions, not a separable bowl: the best
  ``MATRIX_LR`` at 2^17 is half the best at 2^19.
- **Weight decay** is lr-scaled, so the product lr × wd has the optimum (the AdamW
  timescale τ = 1 / (lr · wd) of Wang & Aitchison 2024, "How to set AdamW's weight decay as
  you scale model and dataset size"): its optimum moves with MATRIX_LR, and through it with
  the batch (at 2^17 with the learning rate retuned, the reference 0.2 is the best decay). At the reference it sits
  at 0.1, and tuning it gains ≈ 0.008: the size of the paper's Group A weight-decay change.
  Which side of 0.2 the optimum lies on is a modelling choice.
- **Window pattern**: the best share of full-attention ("L") layers is one third; the
  reference "SSSL" (a quarter) is 0.002 worse (the paper's Group A window-pattern change,
  ≈ −0.002); much more full attention costs throughput.
- **Adam betas, warm-up, warm-down, final LR fraction, head size, scalar LR**: small
  quadratic penalties around the reference values (which the reference already tunes).
- **Crashes in unphysical regions**: a learning rate far above its optimum (8× for the
  Muon matrices, 10× for the AdamW groups) diverges (exit 3, "loss is nan" and no
  summary, as the real script does); a batch that is not a multiple of DEVICE_BATCH_SIZE ×
  MAX_SEQ_LEN is a configuration error (exit 2); an estimated activation footprint beyond
  an 80 GB H100 is an out-of-memory crash (exit 1); betas outside [0, 1) and unknown window
  letters are configuration errors.

The global optimum of the surface is about 0.95 (batch 2^17, the learning rates retuned). Tests check the documented properties (tests/test_surrogate.py).
Environment: BILEVEL_SEED (the run's seed). Imports only the standard library.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import sys

# ---------------------------------------------------------------------------------------
# Hyperparameters: the reference train.py's block (the surrogate reads them as data).
# ---------------------------------------------------------------------------------------
# Model
DEPTH = 8  # transformer blocks
ASPECT_RATIO = 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
WINDOW_PATTERN = "SSSL"  # per layer, repeating: S = window of half the context, L = full
MAX_SEQ_LEN = 2048  # context length in tokens
# Batch
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128  # sequences per forward/backward pass
# Optimization
EMBEDDING_LR = 0.6  # AdamW, token embedding
UNEMBEDDING_LR = 0.004  # AdamW, lm_head
MATRIX_LR = 0.04  # Muon, attention and MLP weight matrices
SCALAR_LR = 0.5  # AdamW, per-layer residual mixing scalars
WEIGHT_DECAY = 0.2  # weight decay on the Muon matrices
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)
# Schedule, as fractions of the time budget
WARMUP_RATIO = 0.0  # linear warmup
WARMDOWN_RATIO = 0.5  # linear decay to FINAL_LR_FRAC over this last part
FINAL_LR_FRAC = 0.0  # learning-rate multiplier at the end
TIME_BUDGET = 300  # simulated seconds of training on one H100
EVAL_TOKENS = 10 * 2**19  # held-out tokens (simulated)
# Runtime
DEVICE = "auto"  # accepted for compatibility; the surrogate computes nothing
COMPILE = True  # accepted for compatibility
# Surrogate only: the seed-to-seed spread of val_bpb (a protocol constant, locked)
NOISE_SIGMA = 0.0007
# ---------------------------------------------------------------------------------------

SEED = int(os.environ.get("BILEVEL_SEED", "42"))

class C:
    """The calibration (see the module docstring for the sources); not hyperparameters."""

    NAMES = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "MAX_SEQ_LEN", "TOTAL_BATCH_SIZE",
             "DEVICE_BATCH_SIZE", "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY",
             "ADAM_BETAS", "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "TIME_BUDGET", "EVAL_TOKENS",
             "DEVICE", "COMPILE", "NOISE_SIGMA")
    BASELINE_BPB = 0.998
    REF_BATCH = 2**19
    REF_STEPS = 953  # public script, H100, 300 s
    REF_SECONDS = 300.0
    REF_HP = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "DEVICE_BATCH_SIZE": 128}
    OPT_STEP_S = 0.02  # fixed optimizer and bookkeeping cost per step (modelling choice)
    B_NOISE = 2**17  # McCandlish's noise scale, calibrated to the paper's batch-size gains
    DATA_WEIGHT, DATA_EXP = 0.25, 0.28
    PARAM_EXP = 0.34
    PARAM_WEIGHT = DATA_WEIGHT * DATA_EXP / PARAM_EXP  # makes the reference size compute-optimal
    MFU_HALF_BATCH = 32  # sequences per micro-batch at which the MFU is half its best
    LR_CURVATURE = {"MATRIX_LR": 0.0075, "EMBEDDING_LR": 0.002, "UNEMBEDDING_LR": 0.003, "SCALAR_LR": 0.001}
    LR_REFERENCE = {"MATRIX_LR": 0.04, "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "SCALAR_LR": 0.5}
    LR_SCALES_WITH_BATCH = ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR")
    LR_DIVERGES_AT = {"MATRIX_LR": 8.0, "EMBEDDING_LR": 10.0, "UNEMBEDDING_LR": 10.0, "SCALAR_LR": 10.0}
    WD_CURVATURE = 0.008 / math.log(2) ** 2  # ≈ -0.008 from the reference 0.2 to the optimum 0.1
    WD_OPT_AT_REFERENCE = 0.1
    WINDOW_BEST_SHARE, WINDOW_GAIN = 1 / 3, 0.002
    MEMORY_GB = 80.0


class SurrogateConfigError(Exception):
    """An invalid combination of constants (exit 2, like the real script)."""


class SurrogateCrash(Exception):
    """A simulated crash: ``kind`` is "diverged" (exit 3) or "oom" (exit 1)."""

    def __init__(self, kind: str, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.kind, self.step = kind, step


def hyperparameters() -> dict:
    """This module's constant block as a dict (what a run evaluates)."""
    return {name: globals()[name] for name in C.NAMES}


def model_dim(hp: dict) -> int:
    head = hp["HEAD_DIM"]
    return -(-hp["DEPTH"] * hp["ASPECT_RATIO"] // head) * head


def params(hp: dict) -> float:
    """Non-embedding parameters, 12 · depth · width² (the matrices Muon trains)."""
    return 12.0 * hp["DEPTH"] * model_dim(hp) ** 2


def full_attention_share(pattern: str) -> float:
    return pattern.count("L") / len(pattern)


def _mfu_factor(device_batch: int) -> float:
    return device_batch / (device_batch + C.MFU_HALF_BATCH)




def seconds_per_token(hp: dict) -> float:
    share = full_attention_share(hp["WINDOW_PATTERN"])
    # Full-attention layers cost a little more than half-window ones (5 % more per unit of L share).
    attn = 1.0 + 0.05 * (share - full_attention_share(C.REF_HP["WINDOW_PATTERN"]))
    size = params(hp) / params(C.REF_HP)
    mfu = _mfu_factor(hp["DEVICE_BATCH_SIZE"]) / _mfu_factor(C.REF_HP["DEVICE_BATCH_SIZE"])
    # The reference's seconds per token: what is left of a reference step after the optimizer.
    ref = (C.REF_SECONDS / C.REF_STEPS - C.OPT_STEP_S) / C.REF_BATCH
    return ref * size * attn / mfu


def steps(hp: dict) -> int:
    """Optimizer steps the time budget buys."""
    step_s = hp["TOTAL_BATCH_SIZE"] * seconds_per_token(hp) + C.OPT_STEP_S
    return max(1, int(hp["TIME_BUDGET"] / step_s))


def effective_tokens(hp: dict) -> float:
    """Tokens seen, discounted by McCandlish's 1 + B / B_noise."""
    b = hp["TOTAL_BATCH_SIZE"]
    return steps(hp) * b / (1.0 + b / C.B_NOISE)


@functools.lru_cache(maxsize=None)
def _reference_effective() -> float:
    return effective_tokens({**C.REF_HP, "TOTAL_BATCH_SIZE": C.REF_BATCH, "TIME_BUDGET": C.REF_SECONDS})


def lr_optimum(name: str, hp: dict) -> float:
    ref = C.LR_REFERENCE[name]
    if name in C.LR_SCALES_WITH_BATCH:
        return ref * math.sqrt(hp["TOTAL_BATCH_SIZE"] / C.REF_BATCH)
    return ref


def wd_optimum(hp: dict) -> float:
    """The decay is lr-scaled, so the product lr · wd is what has an optimum (the AdamW timescale)."""
    return C.WD_OPT_AT_REFERENCE * C.LR_REFERENCE["MATRIX_LR"] / hp["MATRIX_LR"]


def _log_bowl(value: float, best: float, curvature: float, steeper_above: float = 1.5) -> float:
    u = math.log(value / best)
    return curvature * u * u * (steeper_above if u > 0 else 1.0)


def check(hp: dict) -> None:
    """Raise SurrogateConfigError or SurrogateCrash for the regions where the real script fails."""
    for name in ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MAX_SEQ_LEN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"):
        if not isinstance(hp[name], int) or isinstance(hp[name], bool) or hp[name] < 1:
            raise SurrogateConfigError(f"{name} must be a positive integer, got {hp[name]!r}")
    pattern = hp["WINDOW_PATTERN"]
    if not isinstance(pattern, str) or not pattern or set(pattern.upper()) - {"S", "L"}:
        raise SurrogateConfigError(f"WINDOW_PATTERN must be letters S and L, got {pattern!r}")
    micro = hp["DEVICE_BATCH_SIZE"] * hp["MAX_SEQ_LEN"]
    if hp["TOTAL_BATCH_SIZE"] % micro:
        raise SurrogateConfigError(f"TOTAL_BATCH_SIZE ({hp['TOTAL_BATCH_SIZE']}) must be a multiple of "
                                   f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({micro})")
    betas = hp["ADAM_BETAS"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise SurrogateConfigError(f"ADAM_BETAS must be two numbers in [0, 1), got {betas!r}")
    for name in C.LR_REFERENCE:
        if not hp[name] > 0:
            raise SurrogateConfigError(f"{name} must be positive, got {hp[name]!r}")
    if hp["WEIGHT_DECAY"] < 0 or not 0 <= hp["WARMUP_RATIO"] <= 1 or not 0 <= hp["WARMDOWN_RATIO"] <= 1:
        raise SurrogateConfigError("WEIGHT_DECAY must be >= 0 and the warm-up/warm-down ratios in [0, 1]")
    gb = 40.0 * (hp["DEVICE_BATCH_SIZE"] / 128) * (hp["MAX_SEQ_LEN"] / 2048) * (
        model_dim(hp) * hp["DEPTH"] / 4096) + params(hp) * 16 / 1e9
    if gb > C.MEMORY_GB:
        raise SurrogateCrash("oom", f"CUDA out of memory: the simulated footprint is {gb:.0f} GB "
                             f"(DEVICE_BATCH_SIZE {hp['DEVICE_BATCH_SIZE']})")
    for name, factor in C.LR_DIVERGES_AT.items():
        best = lr_optimum(name, hp)
        if hp[name] > factor * best:
            at = max(1, int(steps(hp) * 0.05 * factor * best / hp[name]))
            raise SurrogateCrash("diverged", f"{name} {hp[name]:g} is over {factor:g}x its optimum {best:.3g}", at)


def expected_bpb(hp: dict, offset: float | None = None) -> float:
    """The noise-free surface; ``check(hp)`` must pass first."""
    n_ratio = params(hp) / params(C.REF_HP)
    d_ratio = effective_tokens(hp) / _reference_effective()
    loss = C.PARAM_WEIGHT * n_ratio ** -C.PARAM_EXP + C.DATA_WEIGHT * d_ratio ** -C.DATA_EXP
    for name, curvature in C.LR_CURVATURE.items():
        loss += _log_bowl(hp[name], lr_optimum(name, hp), curvature)
    wd_best = wd_optimum(hp)
    u = math.log(max(hp["WEIGHT_DECAY"], wd_best / 20) / wd_best)
    loss += C.WD_CURVATURE * min(u * u, 2.5)
    share = full_attention_share(hp["WINDOW_PATTERN"].upper())
    gap = share - C.WINDOW_BEST_SHARE
    ref_gap = full_attention_share(C.REF_HP["WINDOW_PATTERN"]) - C.WINDOW_BEST_SHARE
    loss += C.WINDOW_GAIN * (gap / ref_gap) ** 2 if abs(gap) <= abs(ref_gap) * 2 else (
        4 * C.WINDOW_GAIN + 0.02 * (abs(gap) - 2 * abs(ref_gap)))
    b1, b2 = hp["ADAM_BETAS"]
    loss += 0.002 * math.log((1 - b1) / 0.2) ** 2 + 0.002 * math.log((1 - b2) / 0.05) ** 2
    loss += 0.01 * hp["WARMUP_RATIO"] + 0.02 * (hp["WARMDOWN_RATIO"] - 0.5) ** 2 + 0.01 * hp["FINAL_LR_FRAC"] ** 2
    loss += 0.002 * math.log2(hp["HEAD_DIM"] / 128) ** 2
    return loss + (_offset() if offset is None else offset)


@functools.lru_cache(maxsize=None)
def _offset() -> float:
    """The constant that puts the reference at C.BASELINE_BPB."""
    ref = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "MAX_SEQ_LEN": 2048,
           "TOTAL_BATCH_SIZE": C.REF_BATCH, "DEVICE_BATCH_SIZE": 128, "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004,
           "MATRIX_LR": 0.04, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2, "ADAM_BETAS": (0.8, 0.95),
           "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0, "TIME_BUDGET": C.REF_SECONDS}
    return C.BASELINE_BPB - expected_bpb(ref, offset=0.0)


def noise(hp: dict, seed: int) -> float:
    """Gaussian, σ = NOISE_SIGMA, seeded by the seed and the configuration."""
    key = repr(sorted((k, v) for k, v in hp.items() if k != "NOISE_SIGMA"))
    rng = random.Random(hashlib.sha256(f"{seed}|{key}".encode()).digest())
    return rng.gauss(0.0, float(hp["NOISE_SIGMA"]))


def val_bpb(hp: dict, seed: int) -> float:
    """What one run reports: check, the surface, the noise (raises like the real script fails)."""
    check(hp)
    return expected_bpb(hp) + noise(hp, seed)


def main() -> int:
    hp = hyperparameters()
    print("SURROGATE workload: val_bpb is a response surface plus seeded noise; nothing is trained", flush=True)
    try:
        check(hp)
    except SurrogateConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except SurrogateCrash as exc:
        if exc.kind == "diverged":
            print(f"step {exc.step:05d} (1.0%) | loss: nan | surrogate", flush=True)
            print(f"loss is nan at step {exc.step}, stopping ({exc})", flush=True)
            return 3
        print(f"torch.OutOfMemoryError: {exc}", file=sys.stderr, flush=True)
        return 1
    n_steps = steps(hp)
    score = expected_bpb(hp) + noise(hp, SEED)
    tok_s = hp["TOTAL_BATCH_SIZE"] * n_steps / hp["TIME_BUDGET"]
    for k in range(5):  # a few progress lines of the reference format; the loss is illustrative
        frac = (k + 1) / 5
        step = max(0, int(n_steps * frac) - 1)
        loss = score * math.log(2) * 3.6 * (1 + 0.5 * (1 - frac))
        print(f"step {step:05d} ({100 * frac:.1f}%) | loss: {loss:.6f} | lrm: 1.00 | dt: 0ms | "
              f"tok/sec: {tok_s:,.0f} | mfu: 0.0% | epoch: 0 | remaining: "
              f"{hp['TIME_BUDGET'] * (1 - frac):.0f}s", flush=True)
    print("---")
    print(f"val_bpb: {score:.6f}")
    print(f"training_seconds: {float(hp['TIME_BUDGET']):.1f}")
    print("total_seconds: 0.0")
    print("peak_vram_mb: 0.0")
    print("mfu_percent: 0.00")
    print(f"total_tokens_M: {n_steps * hp['TOTAL_BATCH_SIZE'] / 1e6:.1f}")
    print(f"num_steps: {n_steps}")
    print(f"num_params_M: {params(hp) / 1e6:.2f}")
    print(f"depth: {hp['DEPTH']}")
    print(f"noise_sigma: {float(hp['NOISE_SIGMA']):g}")
    print("surrogate: 1", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPT pretraining workload for bilevel autoresearch.

One file, one device: trains a small modern GPT on a prepared dataset for a fixed
wall-clock budget, then scores bits per byte on held-out text. Every hyperparameter is a
top-level constant in the block below; an experiment edits only that block.

Output: one progress line per step (at most ~2 a second), then a line ``---`` followed by
``key: value`` lines, ``val_bpb`` first.
Exit codes: 0 done; 1 crash; 2 data missing or invalid configuration; 3 loss diverged
(no summary block then). Only the hyperparameters are top-level literal constants.
Environment: BILEVEL_DATA_DIR (a folder made by ``bilevel prepare``), BILEVEL_SEED;
BILEVEL_EXPORT_MODEL (code scope): export the trained model there for the trusted evaluation
(baseline/trusted_eval.py) instead of scoring it here. The regions between ``# >>> protocol``
and ``# <<< protocol`` lines are the measurement, which no code edit may touch.
``python train.py --warm``: a warm worker that runs one iteration per JSON line on stdin
(see ``serve_warm``); ``WARM_SAFE`` names the constants it may change without a new process.

This file is copied into each session and run from there, so it imports nothing from
the project that wrote it. That is also why it is one file of ~800 lines, not modules:
the LLM reads and edits it whole, like the public autoresearch train.py it reproduces
(value embeddings, Muon with Polar Express and NorMuon, cautious weight decay, the same
schedules, warm-up and eval protocol).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# Hyperparameters: experiments change this block and nothing else.
# ---------------------------------------------------------------------------------------
# Model
DEPTH = 8  # transformer blocks
ASPECT_RATIO = 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head; heads = model_dim // HEAD_DIM
WINDOW_PATTERN = "SSSL"  # per layer, repeating: S = half the context (+ itself), L = full; choices: "SSSL", "SSSSL", "SSSSSL", "SSL", "SL", "L"
MAX_SEQ_LEN = 2048  # context length in tokens; protocol: it defines the eval (locked)
# Batch
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step; gradient accumulation makes it up
DEVICE_BATCH_SIZE = 128  # sequences per forward/backward pass
# Optimization: Muon for the attention/MLP matrices, AdamW for everything else
EMBEDDING_LR = 0.6  # AdamW, token embedding (scaled by (model_dim/768)**-0.5)
UNEMBEDDING_LR = 0.004  # AdamW, lm_head (scaled by (model_dim/768)**-0.5)
MATRIX_LR = 0.04  # Muon, attention and MLP weight matrices
SCALAR_LR = 0.5  # AdamW, per-layer residual mixing scalars
WEIGHT_DECAY = 0.2  # cautious weight decay on the Muon matrices, decaying linearly to 0
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)
# Schedule, as fractions of the time budget
WARMUP_RATIO = 0.0  # linear warmup
WARMDOWN_RATIO = 0.5  # linear decay to FINAL_LR_FRAC over this last part
FINAL_LR_FRAC = 0.0  # learning-rate multiplier at the end
TIME_BUDGET = 300  # seconds of training, not counting the first (compile/warm-up) steps
EVAL_TOKENS = 40 * 2**19  # protocol: held-out tokens scored for val_bpb (capped at what exists)
# Runtime
DEVICE = "auto"  # choices: "auto", "cuda", "cpu"
COMPILE = True  # torch.compile on CUDA; a backend name ("inductor", "aot_eager"): on any device
# ---------------------------------------------------------------------------------------

# Constants a warm worker (``python train.py --warm``) may change between iterations
# without a new process: none of them changes a tensor shape or the compiled graphs.
# Any other constant changed needs a worker of its own (a new one, or one kept for that shape).
# Not a hyperparameter (a call, not a literal).
WARM_SAFE = frozenset({
    "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS",
    "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "TIME_BUDGET",
})

# >>> protocol: the seed, the data and its loader (code edits may not touch this region)
# Not a hyperparameter: the engine chooses the seed per run; experiments must not tune it.
SEED = int(os.environ.get("BILEVEL_SEED", "42"))


class ConfigError(Exception):
    """Missing data or an invalid combination of hyperparameters."""


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    path: Path
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    eot_id: int
    token_bytes: list[int]  # bytes per token, for val_bpb (0 for special tokens)
    dataset_id: str
    row_tokens: int = 0  # packed rows of this many tokens (climbmix), or 0: one token stream


def data_dir() -> Path:
    env = os.environ.get("BILEVEL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    # `bilevel prepare`'s default folder on Linux (platformdirs' user cache), in the standard library
    # only: this file runs wherever it is copied. tests/test_user_paths.py keeps the two agreeing.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "bilevel" / "data" / "stdlib"


def load_dataset(path: Path) -> Dataset:
    # A code-scope run trains behind a wall that leaves val.bin out: the trusted evaluation reads it.
    scored_elsewhere = bool(os.environ.get("BILEVEL_EXPORT_MODEL"))
    needed = ("meta.json", "tokenizer.json", "train.bin") + (() if scored_elsewhere else ("val.bin",))
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise ConfigError(
            f"no prepared data at {path} (missing {', '.join(missing)}).\n"
            "Run `bilevel prepare` first, or set BILEVEL_DATA_DIR to a prepared dataset."
        )
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    return Dataset(
        path=path,
        train=np.memmap(path / "train.bin", dtype=np.uint16, mode="r"),
        val=(np.zeros(0, dtype=np.uint16) if scored_elsewhere
             else np.memmap(path / "val.bin", dtype=np.uint16, mode="r")),
        vocab_size=int(tokenizer["vocab_size"]),
        eot_id=int(tokenizer["eot_id"]),
        token_bytes=[int(n) for n in tokenizer["token_byte_lengths"]],
        dataset_id=str(meta.get("dataset_id", "unknown")),
        row_tokens=int(meta.get("row_tokens", 0)),
    )


class TrainBatches:
    """Windows of seq_len + 1 tokens in a seeded random order, reshuffled every epoch.

    A stream is cut every seq_len tokens (windows share their edge token); packed rows
    (``row_tokens``, each starting with BOS) are used one window per row.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int,
                 seed: int, device: torch.device, row_tokens: int = 0) -> None:
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.device = device
        if row_tokens and row_tokens < seq_len + 1:
            raise ConfigError(f"the data is packed in rows of {row_tokens} tokens; "
                              f"MAX_SEQ_LEN + 1 = {seq_len + 1} does not fit")
        self.stride = row_tokens or seq_len
        self.windows = (len(tokens) - (seq_len + 1)) // self.stride + 1
        if len(tokens) < seq_len + 1:
            raise ConfigError(f"train split has {len(tokens)} tokens, fewer than MAX_SEQ_LEN + 1")
        self.rng = np.random.default_rng(seed)
        self.order = np.zeros(0, dtype=np.int64)
        self.cursor = 0
        self.epoch = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.empty(self.batch_size, dtype=np.int64)
        for i in range(self.batch_size):
            if self.cursor == len(self.order):
                self.order = self.rng.permutation(self.windows)
                self.cursor = 0
                self.epoch += 1
            rows[i] = self.order[self.cursor]
            self.cursor += 1
        index = rows[:, None] * self.stride + np.arange(self.seq_len + 1)[None, :]
        chunk = torch.from_numpy(self.tokens[index].astype(np.int64))
        if self.device.type == "cuda":
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]
# <<< protocol


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary position embedding over the last dimension of (B, H, T, D) tensors."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.size(-2)
        cos, sin = self.cos[..., :t, :].to(x.dtype), self.sin[..., :t, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


def value_gate(x: torch.Tensor, gate: nn.Linear) -> torch.Tensor:
    """Per-head weight in (0, 2) for the value embedding from the leading
    ``gate.in_features`` channels of x; 1 at init (zero gate weights)."""
    return 2 * torch.sigmoid(gate(x[..., :gate.in_features]))


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int, value_embed: bool) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.q = nn.Linear(dim, n_head * head_dim, bias=False)
        self.k = nn.Linear(dim, n_head * head_dim, bias=False)
        self.v = nn.Linear(dim, n_head * head_dim, bias=False)
        self.proj = nn.Linear(n_head * head_dim, dim, bias=False)
        # The gate reads the first 32 channels: enough to choose, cheap to compute.
        self.ve_gate = nn.Linear(32, n_head, bias=False) if value_embed else None

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None, rotary: Rotary,
                attend: AttentionFn, mask: object) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.n_head, self.head_dim)
        v = self.v(x).view(shape)
        if ve is not None and self.ve_gate is not None:
            # Value residual: a per-token embedding mixed into v, gated per head by x.
            v = v + value_gate(x, self.ve_gate).unsqueeze(-1) * ve.view(shape)
        q = self.q(x).view(shape).transpose(1, 2)
        k = self.k(x).view(shape).transpose(1, 2)
        v = v.transpose(1, 2)
        # QK-norm keeps attention logits bounded; cast back because norms may upcast.
        q = rotary(rms_norm(q)).to(v.dtype)
        k = rotary(rms_norm(k)).to(v.dtype)
        y = attend(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int, value_embed: bool) -> None:
        super().__init__()
        self.attn = Attention(dim, n_head, head_dim, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None, rotary: Rotary,
                attend: AttentionFn, mask: object) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), ve, rotary, attend, mask)
        return x + self.mlp(rms_norm(x))


def has_value_embed(layer: int, depth: int) -> bool:
    """Value embeddings on alternating layers, the last one always included."""
    return layer % 2 == (depth - 1) % 2


class GPT(nn.Module):
    """Token embedding, pre-norm blocks with per-layer residual scalars and value
    embeddings on alternating layers, untied head.

    ``embed_dtype``: bf16 on CUDA (embeddings and so the residual stream), fp32 on the CPU.
    """

    def __init__(self, vocab_size: int, depth: int, dim: int, n_head: int, head_dim: int,
                 max_seq_len: int, attend: AttentionFn, softcap: float = 15.0,
                 embed_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.attend, self.softcap, self.embed_dtype = attend, softcap, embed_dtype
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head, head_dim, has_value_embed(i, depth))
                                    for i in range(depth))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab_size, n_head * head_dim)
                                           for i in range(depth) if has_value_embed(i, depth)})
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        # x <- resid_lambda * x + x0_lambda * x0 before each block (x0: the embedding).
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.full((depth,), 0.1))
        self.rotary = Rotary(head_dim, max_seq_len)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        dim = self.wte.embedding_dim
        bound = 3**0.5 * dim**-0.5  # uniform with std dim**-0.5
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            # Output projections start at zero: every block begins as the identity.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2 * sigmoid(0) = 1: neutral
        for embed in self.value_embeds.values():
            nn.init.uniform_(embed.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        self.wte.to(self.embed_dtype)
        self.value_embeds.to(self.embed_dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor,
                masks: list[object]) -> torch.Tensor:
        """Per-token cross-entropy in nats, shape (B, T), float32."""
        logits = self.logits(idx, masks)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               reduction="none")
        return loss.view(targets.shape)

    def logits(self, idx: torch.Tensor, masks: list[object]) -> torch.Tensor:
        """Soft-capped next-token logits, shape (B, T, vocab), float32: what the trusted
        evaluation scores in code scope."""
        x = rms_norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, self.rotary, self.attend, masks[i])
        logits = self.lm_head(rms_norm(x)).float()
        return self.softcap * torch.tanh(logits / self.softcap)


def layer_windows(depth: int, seq_len: int, pattern: str) -> list[int]:
    """Keys each query attends per layer from the S/L pattern (S: the seq_len // 2 before
    it and itself, as the public script's window (seq_len // 2, 0)); the last is full."""
    sizes = {"S": min(seq_len // 2 + 1, seq_len), "L": seq_len}
    windows = [sizes[pattern[i % len(pattern)]] for i in range(depth)]
    windows[-1] = seq_len
    return windows


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: object) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def window_bool_mask(window: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """(T, T) boolean mask, True where query i may attend key j: 0 <= i - j < window."""
    pos = torch.arange(seq_len, device=device)
    distance = pos[:, None] - pos[None, :]
    return (distance >= 0) & (distance < window)


def window_block_mask(window: int, seq_len: int, device: torch.device) -> object:
    """The same mask as ``window_bool_mask`` as a flex_attention BlockMask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return create_block_mask(sliding_causal, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len,
                             device=device)


def flex_attention_fn(compiled_model: bool) -> AttentionFn:
    from torch.nn.attention.flex_attention import flex_attention

    # flex_attention is only fused (and memory-efficient) when compiled: inside a compiled
    # model it already is; otherwise compile it on its own.
    kernel = flex_attention if compiled_model else torch.compile(flex_attention, dynamic=False)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object) -> torch.Tensor:
        return kernel(q, k, v, block_mask=mask)

    return attend


def build_masks(windows: list[int], seq_len: int, device: torch.device,
                backend: str) -> list[object]:
    """One mask object per layer; each distinct window size is built once."""
    make = window_block_mask if backend == "flex" else window_bool_mask
    built = {w: make(w, seq_len, device) for w in sorted(set(windows))}
    return [built[w] for w in windows]


# ---------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------


class PolarExpress:
    """Per-iteration (a, b, c) of x <- a x + (b A + c A^2) x, A = x x^T, chosen so that
    five steps take every singular value in (0, 1] close to 1 (Amsel et al., 2025)."""

    coefficients = (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    )


def polar_express(g: torch.Tensor, steps: int = 5,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate U V^T of each matrix in a (N, rows, cols) stack (the orthogonal polar
    factor), iterating on the smaller Gram matrix."""
    x = g.to(dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # singular values below 1
    tall = x.size(-2) > x.size(-1)
    for a, b, c in PolarExpress.coefficients[:steps]:
        gram = x.mT @ x if tall else x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x


def normuon_scale(update: torch.Tensor, variance: torch.Tensor, beta2: torch.Tensor,
                  red_dim: int) -> torch.Tensor:
    """NorMuon: divide each row (or column) of the orthogonalised update by the running
    RMS of that row, then rescale so the whole update keeps its Frobenius norm.

    ``variance`` (N, rows, 1) or (N, 1, cols) is updated in place.
    """
    mean_sq = update.float().square().mean(dim=red_dim, keepdim=True)
    size = update.size(red_dim)
    norm_before = (mean_sq.sum(dim=(-2, -1), keepdim=True) * size).sqrt()
    variance.lerp_(mean_sq.to(variance.dtype), 1 - beta2.to(variance.dtype))
    step = variance.clamp_min(1e-10).rsqrt()
    norm_after = (mean_sq * size * step.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return update * (step * (norm_before / norm_after.clamp_min(1e-10))).to(update.dtype)


def cautious_decay_step(params: torch.Tensor, update: torch.Tensor, lr: torch.Tensor,
                        decay: torch.Tensor) -> None:
    """p <- p - lr * update - lr * decay * p, the decay only where update and p agree in
    sign (where the update already shrinks p, so decay never fights it)."""
    lr, decay = lr.to(update.dtype), decay.to(update.dtype)
    agree = (update * params) >= 0
    params.sub_(lr * update + lr * decay * params * agree)


def muon_step(grads: torch.Tensor, params: torch.Tensor, momentum_buf: torch.Tensor,
              variance: torch.Tensor, momentum: torch.Tensor, lr: torch.Tensor,
              decay: torch.Tensor, beta2: torch.Tensor, red_dim: int,
              ns_dtype: torch.dtype) -> None:
    """One Muon step on a stack of same-shape matrices: Nesterov momentum, Polar Express,
    NorMuon, cautious weight decay. Scalars are 0-d tensors so a compiled step never
    recompiles when the schedules move them."""
    m = momentum.to(grads.dtype)
    momentum_buf.lerp_(grads, 1 - m)
    nesterov = grads.lerp(momentum_buf, m)
    update = polar_express(nesterov, dtype=ns_dtype)
    update = normuon_scale(update, variance, beta2, red_dim)
    cautious_decay_step(params, update.to(params.dtype), lr, decay)


class Muon(torch.optim.Optimizer):
    """Muon for the block matrices: one param group per matrix shape, stepped as a stack.

    Group keys: lr, momentum, weight_decay (both moved by the training loop), beta2
    (NorMuon). ``backend``: run the fused step through torch.compile with it ("": eager).
    """

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float = 0.95,
                 weight_decay: float = 0.0, beta2: float = 0.95,
                 ns_dtype: torch.dtype = torch.float32, backend: str = "") -> None:
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == shape]) for shape in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      beta2=beta2))
        self.ns_dtype = ns_dtype
        self._step = (torch.compile(muon_step, dynamic=False, fullgraph=True, backend=backend) if backend
                      else muon_step)
        self._scalars = {k: torch.zeros((), dtype=torch.float32)
                         for k in ("momentum", "lr", "decay", "beta2")}

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            rows, cols = params[0].shape
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros((len(params), rows, cols), dtype=params[0].dtype,
                                                device=params[0].device)
                var_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
                state["variance"] = torch.zeros(var_shape, dtype=params[0].dtype,
                                                device=params[0].device)
            s = self._scalars
            s["momentum"].fill_(group["momentum"])
            s["lr"].fill_(group["lr"] * max(1.0, rows / cols) ** 0.5)
            s["decay"].fill_(group["weight_decay"])
            s["beta2"].fill_(group["beta2"])
            stacked = torch.stack(params)
            self._step(torch.stack([p.grad for p in params]), stacked, state["momentum"],
                       state["variance"], s["momentum"], s["lr"], s["decay"], s["beta2"],
                       -1 if rows >= cols else -2, self.ns_dtype)
            torch._foreach_copy_(params, list(stacked.unbind(0)))


def build_optimizers(model: GPT, dim: int, device: torch.device,
                     backend: str = "") -> list[torch.optim.Optimizer]:
    adam_scale = (dim / 768) ** -0.5  # AdamW rates were tuned at width 768
    adam = torch.optim.AdamW(
        [
            dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * adam_scale),
            dict(params=[model.wte.weight], lr=EMBEDDING_LR * adam_scale),
            dict(params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * adam_scale),
            # The residual scalars scale the whole stream: they move 100x slower.
            dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
            dict(params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
        ],
        betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=device.type == "cuda",
    )
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    muon = Muon(matrices, lr=MATRIX_LR, momentum=muon_momentum(0), weight_decay=WEIGHT_DECAY,
                ns_dtype=ns_dtype, backend=backend)
    optimizers: list[torch.optim.Optimizer] = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    """Warmup, constant, then linear warmdown to FINAL_LR_FRAC; progress in [0, 1]."""
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO or WARMDOWN_RATIO <= 0:
        return 1.0
    remaining = (1.0 - progress) / WARMDOWN_RATIO
    return remaining + (1.0 - remaining) * FINAL_LR_FRAC


def muon_momentum(step: int) -> float:
    """Muon momentum ramps linearly from 0.85 to 0.95 over the first 300 steps."""
    frac = min(step / 300, 1.0)
    return 0.85 + 0.10 * frac


def weight_decay_at(progress: float) -> float:
    """Muon weight decay falls linearly from WEIGHT_DECAY to 0 over the budget."""
    return WEIGHT_DECAY * (1.0 - progress)


def apply_schedules(optimizers: list[torch.optim.Optimizer], step: int, progress: float) -> float:
    """Set every group's lr (and Muon's momentum and decay) for this step; returns lrm."""
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = weight_decay_at(progress)
    return lrm


# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    device: torch.device
    model_dim: int
    n_head: int
    windows: list[int]
    grad_accum: int
    compile_model: bool
    compile_backend: str  # "" when not compiling


def resolve_setup() -> Setup:
    if DEVICE not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"DEVICE must be 'auto', 'cuda' or 'cpu', not {DEVICE!r}")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE = 'cuda' but no CUDA device is available")
    use_cuda = DEVICE == "cuda" or (DEVICE == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if isinstance(COMPILE, str):
        from torch._dynamo import list_backends  # only to name the backends

        if COMPILE not in list_backends(exclude_tags=()):
            raise ConfigError(f"COMPILE names no torch.compile backend: {COMPILE!r} (try 'inductor')")
        compile_backend = COMPILE
    elif isinstance(COMPILE, bool):
        compile_backend = "inductor" if COMPILE and use_cuda else ""
    else:
        raise ConfigError(f"COMPILE must be True, False or a backend name, not {COMPILE!r}")
    for name, value in (("DEPTH", DEPTH), ("ASPECT_RATIO", ASPECT_RATIO), ("HEAD_DIM", HEAD_DIM),
                        ("MAX_SEQ_LEN", MAX_SEQ_LEN), ("DEVICE_BATCH_SIZE", DEVICE_BATCH_SIZE),
                        ("TOTAL_BATCH_SIZE", TOTAL_BATCH_SIZE)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    if HEAD_DIM % 2:
        raise ConfigError("HEAD_DIM must be even (rotary embeddings rotate pairs)")
    if not WINDOW_PATTERN or set(WINDOW_PATTERN) - set("SL"):
        raise ConfigError(f"WINDOW_PATTERN must be made of 'S' and 'L', not {WINDOW_PATTERN!r}")
    if not 0.0 <= WARMUP_RATIO + WARMDOWN_RATIO <= 1.0 or min(WARMUP_RATIO, WARMDOWN_RATIO) < 0:
        raise ConfigError("WARMUP_RATIO and WARMDOWN_RATIO must be >= 0 with a sum <= 1")
    micro = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    if TOTAL_BATCH_SIZE % micro:
        raise ConfigError(
            f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of "
            f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({micro})"
        )
    model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return Setup(
        device=device,
        model_dim=model_dim,
        n_head=model_dim // HEAD_DIM,
        windows=layer_windows(DEPTH, MAX_SEQ_LEN, WINDOW_PATTERN),
        grad_accum=TOTAL_BATCH_SIZE // micro,
        compile_model=bool(compile_backend),
        compile_backend=compile_backend,
    )


def peak_flops(device: torch.device) -> float:
    """Dense bf16 peak of the GPU, or 0 when unknown (MFU is then reported as 0)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    if "H100" in name:
        return 756e12 if "PCIe" in name else 989.5e12
    if "H200" in name:
        return 989.5e12
    if "A100" in name:
        return 312e12
    return 0.0


def flops_per_token(model: GPT, windows: list[int], n_head: int) -> float:
    """6 * matmul params + attention (12 * layers * heads * head_dim * window); embedding
    lookups and the residual scalars do no matmuls."""
    lookups = model.wte.weight.numel() + sum(p.numel() for p in model.value_embeds.parameters())
    scalars = model.resid_lambdas.numel() + model.x0_lambdas.numel()
    matmul_params = sum(p.numel() for p in model.parameters()) - lookups - scalars
    attention = sum(12 * n_head * HEAD_DIM * min(w, MAX_SEQ_LEN) for w in windows)
    return 6.0 * matmul_params + attention


# >>> protocol: the evaluation and the export for the trusted evaluation (code edits may not touch this region)
@torch.no_grad()
def evaluate_bpb(model: nn.Module, data: Dataset, masks: list[object],
                 device: torch.device, autocast: contextlib.AbstractContextManager) -> float:
    """Bits per byte over the first EVAL_TOKENS targets of val.bin.

    A token stream is scored target by target exactly once, in windows of MAX_SEQ_LEN
    (the last window overlaps the one before and scores only new targets); packed rows
    (climbmix) are scored one window per row. Special tokens (byte length 0: BOS/end of
    text) are excluded from both sums, as in the public metric.
    """
    seq_len, batch = MAX_SEQ_LEN, DEVICE_BATCH_SIZE
    if data.row_tokens:
        if data.row_tokens < seq_len + 1:
            raise ConfigError(f"val rows hold {data.row_tokens} tokens; need MAX_SEQ_LEN + 1")
        rows = min(int(EVAL_TOKENS) // seq_len, len(data.val) // data.row_tokens)
        windows = [(r * data.row_tokens, 0) for r in range(rows)]
        if not windows:
            raise ConfigError("the val split holds no complete row")
    else:
        n_targets = min(int(EVAL_TOKENS), len(data.val) - 1)
        if n_targets < seq_len:
            raise ConfigError(f"val split has {len(data.val)} tokens; need MAX_SEQ_LEN + 1")
        windows = [(s, 0) for s in range(0, n_targets - seq_len + 1, seq_len)]
        covered = windows[-1][0] + seq_len
        if covered < n_targets:
            start = n_targets - seq_len
            windows.append((start, covered - start))
    byte_table = list(data.token_bytes)
    byte_table[data.eot_id] = 0
    token_bytes = torch.tensor(byte_table, dtype=torch.float64, device=device)
    positions = torch.arange(seq_len, device=device)

    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, len(windows), batch):
        group = windows[first:first + batch]
        # Pad the last batch with zero-weight copies so shapes never change (no recompile).
        padded = group + [(0, seq_len)] * (batch - len(group))
        index = np.array([s for s, _ in padded])[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = torch.from_numpy(data.val[index].astype(np.int64)).to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        score_from = torch.tensor([f for _, f in padded], device=device)
        target_bytes = token_bytes[y]
        weight = ((positions[None, :] >= score_from[:, None]) & (target_bytes > 0)).double()
        with autocast:
            loss = model(x, y, masks)
        nats += (loss.double() * weight).sum()
        nbytes += (target_bytes * weight).sum()
    return (nats / (math.log(2) * nbytes)).item()


class _Logits(nn.Module):
    """The trained model as one function of the tokens: what ``export_for_evaluation`` writes."""

    def __init__(self, model: nn.Module, masks: list[object]) -> None:
        super().__init__()
        self.model, self.masks = model, masks

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.logits(idx, self.masks)


@torch.no_grad()
def export_for_evaluation(model: nn.Module, masks: list[object], device: torch.device,
                          autocast: contextlib.AbstractContextManager, path: str) -> None:
    """Code scope: the trained model as a torch.export graph (operators and weights, no Python of
    this file), for the trusted evaluation to score in a process of its own."""
    idx = torch.zeros((DEVICE_BATCH_SIZE, MAX_SEQ_LEN), dtype=torch.long, device=device)
    with autocast:
        program = torch.export.export(_Logits(model, masks).eval(), (idx,))
    torch.export.save(program, path)
# <<< protocol


def progress_line(step: int, pct: float, loss: float, lrm: float, dt: float, tok_per_sec: float,
                  mfu: float, epoch: int, remaining: float) -> str:
    return (
        f"step {step:05d} ({pct:.1f}%) | loss: {loss:.6f} | lrm: {lrm:.2f} | "
        f"dt: {dt * 1000:.0f}ms | tok/sec: {tok_per_sec:,.0f} | mfu: {mfu:.1f}% | "
        f"epoch: {epoch} | remaining: {remaining:.0f}s"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diverged(step: int) -> None:
    # One fixed line for any non-finite loss, for the engine to match.
    print(f"loss is nan at step {step}, stopping", flush=True)
    sys.exit(3)


def warm_up(raw: GPT, model: nn.Module, masks: list[object], setup: Setup,
            autocast: contextlib.AbstractContextManager) -> None:
    """Two optimizer steps on a throwaway batch with throwaway optimizers, so a process's
    first-call costs are paid before the budget: the first step's (allocations, kernel
    choice, lazy imports, optimizer state), then what is left (in CPU time on 2 cores at load
    5-6, the first real step cost ~1.5x a later one after one throwaway step and the same after
    two; bench/bench_first_step.py, quiet: 1.14x and 1.10x). Nothing of it reaches the result: it draws no random numbers,
    and the weights are redrawn from the seed and the optimizers rebuilt afterwards."""
    n = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    x = (torch.arange(n, device=setup.device) % raw.wte.num_embeddings).view(DEVICE_BATCH_SIZE, MAX_SEQ_LEN)
    model.train()
    optimizers = build_optimizers(raw, setup.model_dim, setup.device, backend=setup.compile_backend)
    for _ in range(2):
        for _ in range(setup.grad_accum):
            with autocast:
                model(x, x, masks).mean().backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)


def train(untimed_steps: int | None = None) -> None:
    """Train for TIME_BUDGET seconds (the first ``untimed_steps`` steps, which include
    compilation, are not counted), evaluate, and print the summary block.

    By default 11 untimed steps when compiling, as the public script. Without compilation
    (the CPU presets) none: throwaway steps (``warm_up``), once per process and shape, pay
    the first calls' costs without training, so a warm worker, which has paid them already,
    spends no time outside the budget before its first step, and a fresh process's first
    timed step runs at the speed of the later ones.
    """
    started = time.perf_counter()
    setup = resolve_setup()
    if untimed_steps is None:
        untimed_steps = 11 if setup.compile_model else 0
    device = setup.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # this run's peak, also in a warm worker
    data = warm_cached(("data", str(data_dir())), lambda: load_dataset(data_dir()))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        autocast: contextlib.AbstractContextManager = torch.autocast("cuda", dtype=torch.bfloat16)
        backend = "flex"
    else:
        autocast = contextlib.nullcontext()
        backend = "sdpa"

    def build() -> tuple[GPT, nn.Module, list[object]]:
        attend = flex_attention_fn(setup.compile_model) if backend == "flex" else sdpa_attention
        embed_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        raw = GPT(data.vocab_size, DEPTH, setup.model_dim, setup.n_head, HEAD_DIM,
                  MAX_SEQ_LEN, attend, embed_dtype=embed_dtype).to(device)
        compiled = (torch.compile(raw, dynamic=False, backend=setup.compile_backend) if setup.compile_model
                    else raw)
        masks = build_masks(setup.windows, MAX_SEQ_LEN, device, backend)
        if not setup.compile_model:
            warm_up(raw, compiled, masks, setup, autocast)
        return raw, compiled, masks

    # A warm worker keeps the model (and its compiled graphs) per shape; every run, fresh
    # or warm, then draws its weights from SEED alone, so both give the same result.
    raw_model, model, masks = warm_cached(
        ("model", data.vocab_size, DEPTH, setup.model_dim, setup.n_head, HEAD_DIM, MAX_SEQ_LEN,
         tuple(setup.windows), str(device), setup.compile_backend), build)
    # What exists now lives as long as the process (torch, the data, the models): one full
    # collection, then those objects are left out of every later one, so a warm worker's
    # iterations each collect only their own garbage (a full pass costs ~0.25 s on 2 cores).
    warm_cached(("gc frozen",), lambda: (gc.collect(), gc.freeze()))
    torch.manual_seed(SEED)
    if device.type == "cuda":
        torch.cuda.manual_seed(SEED)
    raw_model.reset_parameters()
    model.train()
    optimizers = build_optimizers(raw_model, setup.model_dim, device, backend=setup.compile_backend)
    batches = TrainBatches(data.train, MAX_SEQ_LEN, DEVICE_BATCH_SIZE, SEED, device,
                           row_tokens=data.row_tokens)

    num_params = sum(p.numel() for p in raw_model.parameters())
    step_flops = flops_per_token(raw_model, setup.windows, setup.n_head) * TOTAL_BATCH_SIZE
    peak = peak_flops(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"data {data.path} (dataset {data.dataset_id}): {len(data.train):,} train and "
          f"{len(data.val):,} val tokens, vocab {data.vocab_size}", flush=True)
    print(f"model {num_params / 1e6:.2f}M parameters: depth {DEPTH}, width {setup.model_dim}, "
          f"{setup.n_head} heads of {HEAD_DIM}, windows {setup.windows}", flush=True)
    print(f"device {device.type} ({where}), {'bf16' if device.type == 'cuda' else 'fp32'}, "
          f"{backend} attention, compile {setup.compile_backend or 'off'}, "
          f"{setup.grad_accum} micro-steps per step, seed {SEED}", flush=True)

    training_seconds = 0.0
    step = 0
    last_print = 0.0
    # Python's collector pauses for up to ~0.5 s: none of that inside the budget.
    gc.collect()
    gc.disable()
    while True:
        sync(device)
        t0 = time.perf_counter()
        progress = min(training_seconds / TIME_BUDGET, 1.0) if TIME_BUDGET > 0 else 1.0
        lrm = apply_schedules(optimizers, step, progress)
        step_loss = torch.zeros((), device=device)
        for _ in range(setup.grad_accum):
            x, y = batches.next()
            with autocast:
                loss = model(x, y, masks).mean()
            (loss / setup.grad_accum).backward()
            step_loss += loss.detach()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = step_loss.item() / setup.grad_accum  # also waits for the device
        sync(device)
        dt = time.perf_counter() - t0
        if not math.isfinite(loss_value):
            diverged(step)
        if step >= untimed_steps:
            training_seconds += dt
        step += 1
        done = step >= untimed_steps and training_seconds >= TIME_BUDGET
        now = time.perf_counter()
        pct = 100.0 * training_seconds / TIME_BUDGET if TIME_BUDGET > 0 else 100.0
        if done or step <= untimed_steps + 1 or now - last_print >= 0.5:
            last_print = now
            print(progress_line(
                step=step - 1,
                pct=min(100.0, pct),
                loss=loss_value, lrm=lrm, dt=dt,
                tok_per_sec=TOTAL_BATCH_SIZE / dt,
                mfu=100.0 * step_flops / dt / peak if peak else 0.0,
                epoch=batches.epoch,
                remaining=max(0.0, TIME_BUDGET - training_seconds),
            ), flush=True)
        if done:
            break

    # >>> protocol: the evaluation and the summary (code edits may not touch this region)
    gc.enable()
    model.eval()
    export_to = os.environ.get("BILEVEL_EXPORT_MODEL", "")
    if export_to:  # code scope: scored by the trusted evaluation, not here
        export_for_evaluation(raw_model, masks, device, autocast, export_to)
        val_bpb = None
    else:
        val_bpb = evaluate_bpb(model, data, masks, device, autocast)
        if not math.isfinite(val_bpb):
            diverged(step)
    timed_steps = max(0, step - untimed_steps)
    mfu = (100.0 * step_flops * timed_steps / training_seconds / peak
           if peak and training_seconds > 0 else 0.0)
    peak_vram = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    print("---")
    if val_bpb is not None:
        print(f"val_bpb: {val_bpb:.6f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds: {time.perf_counter() - started:.1f}")
    print(f"peak_vram_mb: {peak_vram:.1f}")
    print(f"mfu_percent: {mfu:.2f}")
    print(f"total_tokens_M: {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
    print(f"num_steps: {step}")
    print(f"num_params_M: {num_params / 1e6:.2f}")
    print(f"depth: {DEPTH}", flush=True)
    # <<< protocol


_WARM_CACHE: dict[tuple, object] = {}


def warm_cached(key: tuple, make: Callable[[], object]):
    """What a warm worker keeps between iterations (data, models by shape); a fresh run
    makes each once."""
    if key not in _WARM_CACHE:
        _WARM_CACHE[key] = make()
    return _WARM_CACHE[key]


def main() -> int:
    try:
        train()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def serve_warm() -> int:
    """Warm worker: run iterations on request, one JSON line each on stdin.

    A request is ``{"constants": {NAME: value}, "seed": N}``: the constants block of the
    iteration's script and its seed. Each iteration prints what a fresh run prints, then
    ``{"warm_worker": "done", "exit_code": N}`` on stdout and stderr (0 done, 2 invalid
    configuration, as ``main``). A crash or a diverged loss ends the process as it ends a
    fresh run; the engine then starts a new worker.
    """
    global SEED
    print(json.dumps({"warm_worker": "ready"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        module = globals()
        for name, value in request["constants"].items():
            if name.isupper() and name in module and name not in ("SEED", "WARM_SAFE"):
                module[name] = tuple(value) if isinstance(module[name], tuple) else value
        SEED = int(request["seed"])
        code = main()
        done = json.dumps({"warm_worker": "done", "exit_code": code})
        print(done, flush=True)
        print(done, file=sys.stderr, flush=True)
        if torch.cuda.is_initialized():
            # Idle, it keeps its model and graphs but not the freed blocks: the slot's
            # other worker (another shape) may need that memory.
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(serve_warm() if sys.argv[1:] == ["--warm"] else main())

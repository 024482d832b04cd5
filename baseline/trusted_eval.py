"""The trusted evaluation of a code-scope run: val_bpb of the trained model, computed here, not by the script.

A run of edited code (``search.scope = "code"``) trains behind the training wall without the validation
split and ends by writing its trained model as a ``torch.export`` program: operators and weights, no
Python of the edited script. This process — the project's own file, never the session's copy, run
behind the same wall with the validation split readable — loads that program and:

1. checks causality: for random token windows, changing the tokens from position t on must leave every
   earlier position's logits as they were (an attention that looks at the next token fails here);
2. scores it with the reference ``evaluate_bpb`` of this folder's ``train.py`` (the protocol's: the
   same windows, bytes and special tokens as every constants-scope run), on logits it turns into
   per-token losses itself.

It prints one JSON line: ``{"val_bpb": x, "causal": true, ...}`` or ``{"error": "...", "causal": false}``
(exit 0, 4 for a failed check, 2 for a program that cannot be loaded or run).

``python trusted_eval.py PROGRAM DATA_DIR CONSTANTS_JSON``; CONSTANTS_JSON holds the run's protocol
constants (MAX_SEQ_LEN, EVAL_TOKENS, DEVICE_BATCH_SIZE, DEVICE), which no code edit may change.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

CAUSAL_ATOL = 1e-4  # fp32 logits of earlier positions may differ by rounding only
CAUSAL_ATOL_BF16 = 2e-2
CUTS = (0.25, 0.5, 0.75)  # where the later tokens are changed, as fractions of the window


def reference() -> ModuleType:
    """This folder's train.py (the protocol's evaluate_bpb and loader), under a name of its own."""
    spec = importlib.util.spec_from_file_location("bilevel_reference_train", Path(__file__).with_name("train.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


class Scored(nn.Module):
    """The exported program as the reference evaluation calls a model: per-token losses in nats."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor, y: torch.Tensor, masks: object) -> torch.Tensor:
        logits = self.program(x).float()
        if logits.shape[:2] != y.shape:
            raise ValueError(f"the model's logits have shape {tuple(logits.shape)}, not (batch, tokens, vocab)")
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)


@torch.no_grad()
def causality_problem(program: nn.Module, vocab: int, batch: int, seq_len: int, device: torch.device,
                      atol: float) -> str:
    """Why the model is not causal ("" when it is): an earlier position that moved when later tokens changed."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)
    before = program(x).float()
    for frac in CUTS:
        t = max(1, int(seq_len * frac))
        changed = x.clone()
        changed[:, t:] = torch.randint(0, vocab, (batch, seq_len - t), generator=gen).to(device)
        after = program(changed).float()
        moved = (after[:, :t] - before[:, :t]).abs().max().item()
        if not moved <= atol:  # NaN too
            return (f"not causal: changing the tokens from position {t} on moved the logits of earlier "
                    f"positions by up to {moved:.3g} (tolerance {atol:g})")
    return ""


def main(argv: list[str]) -> int:
    started = time.monotonic()
    program_path, data_dir, constants = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    ref = reference()
    for name in ("MAX_SEQ_LEN", "EVAL_TOKENS", "DEVICE_BATCH_SIZE"):
        setattr(ref, name, int(constants[name]))
    want = str(constants.get("DEVICE", "auto"))
    device = torch.device("cuda" if want != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        data = ref.load_dataset(data_dir)
        program = torch.export.load(str(program_path)).module()
    except Exception as exc:  # noqa: BLE001 - whatever it is, the run has no score
        print(json.dumps({"error": f"the exported model could not be loaded: {type(exc).__name__}: {exc}"[:500],
                          "causal": False}), flush=True)
        return 2
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    atol = CAUSAL_ATOL_BF16 if device.type == "cuda" else CAUSAL_ATOL
    try:
        with autocast:
            problem = causality_problem(program, data.vocab_size, ref.DEVICE_BATCH_SIZE, ref.MAX_SEQ_LEN, device, atol)
        if problem:
            print(json.dumps({"error": problem, "causal": False}), flush=True)
            return 4
        val_bpb = ref.evaluate_bpb(Scored(program), data, [], device, autocast)
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"error": f"the exported model failed in the evaluation: {type(exc).__name__}: {exc}"[:500],
                          "causal": False}), flush=True)
        return 2
    print(json.dumps({"val_bpb": val_bpb, "causal": True, "seconds": round(time.monotonic() - started, 3),
                      "device": device.type}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

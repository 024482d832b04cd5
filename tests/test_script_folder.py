"""The unmodified public autoresearch shape: constants imported from prepare.py get our
budget in a per-run copy of the folder, a literal seed is reported, measuring constants
stay locked."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.session import SessionReader
from core.services import script_folder
from core.services.script import TrainScript
from tests.support.cli import run_bilevel, write_fast_config

# The public script's shape, small enough for a CPU: it reads its protocol constants from
# prepare.py, seeds torch with a literal, and counts training time after 10 warm-up steps.
PUBLIC_PREPARE = '''"""One-time data preparation (the public shape)."""
import os

MAX_SEQ_LEN = 64       # context length
TIME_BUDGET = 300      # training time budget in seconds (5 minutes)
EVAL_TOKENS = 40 * 524288

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


def evaluate_bpb(loss):
    return loss / 0.6931471805599453
'''

PUBLIC_TRAIN = '''"""Autoresearch pretraining script (the public shape, CPU-sized)."""
import time

import torch

from prepare import MAX_SEQ_LEN, TIME_BUDGET, evaluate_bpb

# Hyperparameters (edit these directly, no CLI flags needed)
MATRIX_LR = 0.04
DEPTH = 2
DEVICE_BATCH_SIZE = 8

t_start = time.time()
torch.manual_seed(42)
H100_BF16_PEAK_FLOPS = 989.5e12

w = torch.randn(MAX_SEQ_LEN, MAX_SEQ_LEN, requires_grad=True)
target = torch.randn(DEVICE_BATCH_SIZE, MAX_SEQ_LEN)
opt = torch.optim.SGD([w], lr=MATRIX_LR)
total_training_time = 0.0
step = 0
while True:
    t0 = time.time()
    x = torch.randn(DEVICE_BATCH_SIZE, MAX_SEQ_LEN)
    loss = ((x @ w - target) ** 2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    time.sleep(0.02)
    dt = time.time() - t0
    if step > 10:
        total_training_time += dt
    pct = 100 * min(total_training_time / TIME_BUDGET, 1.0)
    print(f"step {step:05d} ({pct:.1f}%) | loss: {loss.item():.6f} | lrm: 1.00 | dt: {dt*1000:.0f}ms | "
          f"tok/sec: 1,000 | mfu: 0.0% | epoch: 1 | remaining: {max(0, TIME_BUDGET - total_training_time):.0f}s")
    step += 1
    if step > 10 and total_training_time >= TIME_BUDGET:
        break

print("---")
print(f"val_bpb:          {evaluate_bpb(1.0 + float(w.detach().abs().mean()) * 1e-3):.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"num_steps:        {step}")
print(f"depth:            {DEPTH}")
'''


def public_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "autoresearch"
    folder.mkdir()
    (folder / "prepare.py").write_text(PUBLIC_PREPARE)
    (folder / "train.py").write_text(PUBLIC_TRAIN)
    (folder / "README.md").write_text("the user's own notes\n")
    return folder / "train.py"


def events_of(tmp_path: Path) -> list[ev.Event]:
    (session,) = [p for p in (tmp_path / "sessions").iterdir() if p.is_dir()]
    return list(SessionReader(session).events())


# --------------------------------------------------------------------------- inspection


def test_constants_imported_from_prepare_are_found_with_their_lines(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    found = script_folder.inspect(script, script.read_text())
    assert found.modules == ("prepare",) and found.needs_copy and not found.problems
    assert [(c.name, c.value, c.where()) for c in found.constants] == [
        ("MAX_SEQ_LEN", 64, "prepare.py:4"), ("TIME_BUDGET", 300, "prepare.py:5")]
    assert found.changes(5) == {"prepare": {"TIME_BUDGET": 5}}
    assert found.changes(300) == {}  # already the budget: nothing to edit
    assert found.changes(2.5) == {"prepare": {"TIME_BUDGET": 2.5}}


def test_a_literal_seed_is_detected_and_explained(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    found = script_folder.inspect(script, script.read_text())
    assert [(s.call, s.value, s.lineno) for s in found.fixed_seeds] == [("torch.manual_seed(42)", 42, 14)]
    note = found.seed_note()
    assert "train.py fixes its seed with torch.manual_seed(42) (line 14)" in note
    assert "cannot vary the initialisation" in note and "BILEVEL_SEED" in note
    from_env = script.read_text().replace("torch.manual_seed(42)",
                                          "torch.manual_seed(int(os.environ.get('BILEVEL_SEED', 42)))")
    assert script_folder.inspect(script, from_env).seed_note() == ""
    assert script_folder.fixed_seed_note("import random\nrandom.seed(7)\n").startswith(
        "the script fixes its seed with random.seed(7) (line 2)")
    assert script_folder.fixed_seed_note("SEED = 3\ntorch.manual_seed(SEED)\n") == ""  # a constant we set


def test_a_budget_that_is_not_a_literal_refuses_with_the_reason(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    (script.parent / "prepare.py").write_text("import os\nTIME_BUDGET = int(os.environ.get('T', 300))\n"
                                              "MAX_SEQ_LEN = 64\n\ndef evaluate_bpb(x):\n    return x\n")
    found = script_folder.inspect(script, script.read_text())
    assert found.problems == (
        "train.py takes TIME_BUDGET from prepare.py, where it is not a literal constant: bilevel cannot give "
        "the run its budget (write `TIME_BUDGET = 300` in prepare.py)",)


def test_measuring_constants_are_named_with_their_reason() -> None:
    text = "H100_BF16_PEAK_FLOPS = 989.5e12\nGPU_NAME = 'H100'\nMATRIX_LR = 0.04\nFLOPS_SCALE_LR = 0.1\n"
    locked = script_folder.measurement_params(TrainScript.parse(text))
    assert list(locked) == ["H100_BF16_PEAK_FLOPS", "GPU_NAME"]
    assert "only the numbers the run reports" in locked["GPU_NAME"]


def test_the_per_run_copy_sets_the_budget_and_never_touches_the_users_files(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    big = script.parent / "data.bin"
    big.write_bytes(b"\0" * (script_folder.COPY_LIMIT_BYTES + 1))
    (script.parent / "__pycache__").mkdir()
    (script.parent / "__pycache__" / "prepare.cpython-311.pyc").write_bytes(b"stale")
    before = {p.name: p.read_bytes() for p in script.parent.iterdir() if p.is_file() and p != big}
    found = script_folder.inspect(script, script.read_text())
    dest = tmp_path / "session" / "run"
    copied = script_folder.materialise(found, "EDITED = 1\n" + script.read_text(), dest, found.changes(5))
    assert copied == dest / "train.py" and copied.read_text().startswith("EDITED = 1\n")
    assert re.search(r"^TIME_BUDGET = 5 ", (dest / "prepare.py").read_text(), flags=re.M)
    assert (dest / "README.md").read_text() == "the user's own notes\n"
    assert (dest / "data.bin").is_symlink() and not (dest / "__pycache__").exists()
    assert {p.name: p.read_bytes() for p in script.parent.iterdir() if p.is_file() and p != big} == before
    again = script_folder.materialise(found, script.read_text(), dest, found.changes(7))  # a re-run replaces it
    assert re.search(r"^TIME_BUDGET = 7 ", (dest / "prepare.py").read_text(), flags=re.M)
    assert again.read_text() == script.read_text()


# --------------------------------------------------------------------------- as a user runs it


@pytest.mark.slow
def test_public_script_trains_for_our_budget_and_noise_says_the_seed_is_fixed(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    cfg = write_fast_config(tmp_path, name="pub", script=script)
    done = run_bilevel("noise", str(cfg), "--runs", "2", "--budget", "5", cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    events = events_of(tmp_path)
    finished = [e for e in events if isinstance(e, ev.TrainingFinished)]
    assert len(finished) == 2 and all(e.outcome == "ok" for e in finished)
    for e in finished:  # its own prepare.py says 300 s: the copy said 5
        assert 5.0 <= e.metrics["training_seconds"] < 300.0  # our 5 s budget, however slow the steps under load
    (started,) = [e for e in events if isinstance(e, ev.NoiseStarted)]
    assert "torch.manual_seed(42)" in started.seed_note
    assert "noise: the seed is fixed: train.py fixes its seed with torch.manual_seed(42)" in done.stdout
    (inspected,) = [e for e in events if isinstance(e, ev.ScriptInspected)]
    assert inspected.modules == ["prepare"] and inspected.set_per_run == {"TIME_BUDGET": 5}
    assert inspected.constants["TIME_BUDGET"] == "prepare.py:5 = 300"
    assert "H100_BF16_PEAK_FLOPS" in inspected.locked
    (session_started,) = [e for e in events if isinstance(e, ev.SessionStarted)]
    assert session_started.schema["H100_BF16_PEAK_FLOPS"]["locked"] is True
    assert session_started.schema["MATRIX_LR"]["locked"] is False
    assert (script.parent / "prepare.py").read_text() == PUBLIC_PREPARE  # the user's file, untouched
    assert not (script.parent / "__pycache__").exists()  # it ran in the copy


def test_a_run_whose_budget_cannot_be_set_is_refused_before_training(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    (script.parent / "prepare.py").write_text("TIME_BUDGET = 60 * int('5')\nMAX_SEQ_LEN = 64\n"
                                              "def evaluate_bpb(x):\n    return x\n")
    done = run_bilevel("run", str(write_fast_config(tmp_path, name="pub", script=script)), "--headless",
                       "--budget", "5", cwd=tmp_path)
    assert done.returncode != 0
    assert "takes TIME_BUDGET from prepare.py, where it is not a literal constant" in done.stderr + done.stdout
    assert not [e for e in events_of(tmp_path) if isinstance(e, ev.TrainingStarted)]


def test_confirmation_says_it_cannot_change_a_literal_seed(tmp_path: Path) -> None:
    from core.engine.acceptance import build_policy
    from core.record import config as config_mod

    script = public_folder(tmp_path)
    cfg = config_mod.load(write_fast_config(tmp_path, name="pub", script=script, search_extra=""))
    _, event = build_policy(cfg, script.read_text(), {"source": "none"}, [])
    assert "torch.manual_seed(42) (line 14)" in event.seed_note
    from core.analysis import printer

    confirming = ev.AcceptanceConfigured(description="min_delta", confirm=True, seed_note=event.seed_note)
    assert "confirmation runs cannot change the seed: the script fixes its seed" in printer._FORMATS[
        ev.AcceptanceConfigured](confirming)
    _, plain = build_policy(cfg, "LR = 0.1\nSEED = 1\n", {"source": "none"}, [])
    assert plain.seed_note == ""

"""`bilevel noise`: the unchanged baseline over distinct seeds, its spread as events and as a stored floor."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.record import events as ev
from core.services.noise_store import NoiseFloor, NoiseStore, fingerprint, hardware_description, identity, script_digest
from core.analysis.printer import HeadlessPrinter
from core.record.session import SessionReader
from tests.support.cli import QUADRATIC, ROOT, run_bilevel, write_fast_config



def only_session(tmp_path: Path) -> Path:
    (session,) = [p for p in (tmp_path / "sessions").iterdir() if p.is_dir()]
    return session


def test_noise_runs_the_baseline_once_per_seed_and_stores_its_spread(tmp_path):
    done = run_bilevel("noise", str(write_fast_config(tmp_path, name="n")), "--runs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = list(SessionReader(only_session(tmp_path)).events())
    started = [e for e in events if isinstance(e, ev.NoiseStarted)]
    assert len(started) == 1 and started[0].seeds == [0, 1, 2]
    assert [e.seed for e in events if isinstance(e, ev.TrainingStarted)] == [0, 1, 2]
    runs = [e for e in events if isinstance(e, ev.NoiseRunFinished)]
    # the stand-in adds 0.0001 × seed: values v, v + 1e-4, v + 2e-4 -> sample std 1e-4, MAD 1e-4
    assert [r.val_bpb for r in runs] == pytest.approx([1.032023, 1.032123, 1.032223])
    (measured,) = [e for e in events if isinstance(e, ev.NoiseMeasured)]
    assert measured.std == pytest.approx(1e-4) and measured.mad == pytest.approx(1e-4)
    assert measured.mean == pytest.approx(1.032123) and measured.failed == 0
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "completed"
    stored = NoiseStore(tmp_path / "sessions" / "noise.json").get(started[0].fingerprint)
    assert stored is not None and stored.std == measured.std and stored.values == measured.values
    assert stored.hardware.startswith("cpu: ") and stored.dataset_id == "none"
    assert "noise floor σ = 0.000100" in done.stdout


def test_noise_runs_share_the_free_slots_and_measure_the_same_floor(tmp_path):
    done = run_bilevel("noise", str(write_fast_config(tmp_path, name="n", gpus="cpu:3")), "--runs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = list(SessionReader(only_session(tmp_path)).events())
    started = [e for e in events if isinstance(e, ev.TrainingStarted)]
    first_end = next(i for i, e in enumerate(events) if isinstance(e, ev.TrainingFinished))
    assert len([e for e in events[:first_end] if isinstance(e, ev.TrainingStarted)]) == 3  # all three at once
    assert sorted(e.slot for e in started) == ["cpu0", "cpu1", "cpu2"]
    runs = sorted((e for e in events if isinstance(e, ev.NoiseRunFinished)), key=lambda r: r.run)
    assert [(r.run, r.seed) for r in runs] == [(0, 0), (1, 1), (2, 2)]
    assert [r.val_bpb for r in runs] == pytest.approx([1.032023, 1.032123, 1.032223])
    (measured,) = [e for e in events if isinstance(e, ev.NoiseMeasured)]
    assert measured.seeds == [0, 1, 2] and measured.std == pytest.approx(1e-4) and measured.failed == 0


SEED_CONSTANT_SCRIPT = '''
LR = 0.04
DEPTH = 4
TIME_BUDGET = 1
SEED = 42
print("---")
print(f"val_bpb: {1.0 + 0.01 * (SEED % 7):.6f}")
'''


def test_a_script_with_a_seed_constant_gets_each_runs_seed_written_into_it(tmp_path):
    script = tmp_path / "train_const.py"
    script.write_text(SEED_CONSTANT_SCRIPT)
    done = run_bilevel("noise", str(write_fast_config(tmp_path, name="n", script=script)), "--runs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = [e for e in SessionReader(only_session(tmp_path)).events() if isinstance(e, ev.NoiseRunFinished)]
    assert [r.val_bpb for r in runs] == pytest.approx([1.0, 1.01])  # SEED = 0, then SEED = 1


def test_too_few_successful_runs_measure_nothing_and_store_nothing(tmp_path):
    crash = ROOT / "tests" / "fixtures" / "scripts" / "crash.py"
    done = run_bilevel("noise", str(write_fast_config(tmp_path, name="n", script=crash)), "--runs", "2", cwd=tmp_path)
    assert done.returncode == 1
    events = list(SessionReader(only_session(tmp_path)).events())
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "failed"
    assert "only 0 of 2 runs" in events[-1].reason
    assert not (tmp_path / "sessions" / "noise.json").exists()


def test_one_run_is_a_usage_error(tmp_path):
    done = run_bilevel("noise", str(write_fast_config(tmp_path, name="n")), "--runs", "1", cwd=tmp_path)
    assert done.returncode == 2 and "at least 2" in done.stderr


def test_a_noise_session_cannot_be_resumed_as_a_search(tmp_path):
    assert run_bilevel("noise", str(write_fast_config(tmp_path, name="n")), "--runs", "2", cwd=tmp_path).returncode == 0
    again = run_bilevel("resume", str(only_session(tmp_path)), "--headless", cwd=tmp_path)
    assert again.returncode == 2 and "noise measurement" in again.stderr


def test_fingerprint_follows_script_corpus_and_hardware_but_not_the_seed():
    text = QUADRATIC.read_text()
    base = identity(text, {"source": "none"}, []).fingerprint
    assert identity(text, {"source": "none"}, []).fingerprint == base
    assert identity(text.replace("LR = 0.04", "LR = 0.05"), {"source": "none"}, []).fingerprint != base
    assert identity(text, {"source": "stdlib", "dataset_id": "abc"}, []).fingerprint != base
    assert fingerprint(script_digest(text), "none", "gpu: NVIDIA H100") != base
    seeded = "SEED = 42\n" + text
    assert script_digest(seeded) == script_digest("SEED = 7\n" + text) != script_digest(text)


def test_hardware_is_the_cpu_model_or_the_gpu_names():
    assert hardware_description([]).startswith("cpu: ")
    assert hardware_description(["0"]).startswith("gpu: ")


def test_store_keeps_the_floors_of_other_fingerprints(tmp_path):
    store = NoiseStore(tmp_path / "noise.json")
    store.put(NoiseFloor(fingerprint="a", std=0.1, mad=0.1, mean=1.0, runs=3))
    store.put(NoiseFloor(fingerprint="b", std=0.2, mad=0.2, mean=1.0, runs=3))
    store.put(NoiseFloor(fingerprint="a", std=0.3, mad=0.3, mean=1.0, runs=5))
    assert {fp: f.std for fp, f in store.floors().items()} == {"a": 0.3, "b": 0.2}
    assert json.loads((tmp_path / "noise.json").read_text())["version"] == 1


def test_noise_lines_in_the_headless_log():
    p = HeadlessPrinter()
    assert "seeds 0, 1, 2" in p.format(ev.NoiseStarted(runs=3, seeds=[0, 1, 2], fingerprint="f", hardware="cpu: x"))
    line = p.format(ev.NoiseMeasured(fingerprint="f", values=[1.0, 1.1], mean=1.05, std=0.0707, mad=0.05, store="s"))
    assert "σ = 0.070700" in line and "MAD 0.050000" in line

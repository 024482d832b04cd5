"""The surrogate workload: its documented properties hold, and it is labelled and kept apart from real runs."""
from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest

import baseline.surrogate as surrogate
from core.record import config
from core.record.study import Study, StudyError
from core.services.script import TrainScript
from core.services.trainer import parse_metrics
from tests.support.patience import patience

REFERENCE = surrogate.hyperparameters()


def at(**changes):
    return {**REFERENCE, **changes}


def best_matrix_lr(hp):
    grid = [0.04 * 2 ** (k / 8) for k in range(-40, 17)]
    return min(grid, key=lambda lr: surrogate.expected_bpb({**hp, "MATRIX_LR": lr}))


def test_the_reference_sits_at_the_published_baseline():
    assert surrogate.expected_bpb(REFERENCE) == pytest.approx(0.998, abs=1e-9)
    assert surrogate.steps(REFERENCE) == 953  # the public script's steps in 300 s on an H100


def test_a_smaller_batch_wins_at_a_fixed_time_budget():
    ref = surrogate.expected_bpb(REFERENCE)
    half = surrogate.expected_bpb(at(TOTAL_BATCH_SIZE=2**18))
    quarter = surrogate.expected_bpb(at(TOTAL_BATCH_SIZE=2**17, DEVICE_BATCH_SIZE=64))
    double = surrogate.expected_bpb(at(TOTAL_BATCH_SIZE=2**20))
    assert half < ref - 0.02 and quarter < ref - 0.02  # the paper's large gain from 2^19 to 2^17–2^18
    assert double > ref + 0.02  # and a loss from raising it
    assert surrogate.steps(at(TOTAL_BATCH_SIZE=2**17, DEVICE_BATCH_SIZE=64)) > 2.5 * surrogate.steps(REFERENCE)  # more steps


def test_the_learning_rate_optimum_moves_with_the_batch_size():
    no_decay = at(WEIGHT_DECAY=0.0)  # the decay term is then constant, so the rate's own optimum shows
    small_batch = {**no_decay, "TOTAL_BATCH_SIZE": 2**17, "DEVICE_BATCH_SIZE": 64}
    big, small = best_matrix_lr(no_decay), best_matrix_lr(small_batch)
    assert big == pytest.approx(0.04, rel=0.1)
    assert small == pytest.approx(big / 2, rel=0.1)  # the square-root rule: a quarter of the batch, half the rate
    # an interaction, not a separable bowl: the best rate at one batch is a poor one at the other
    assert surrogate.expected_bpb({**small_batch, "MATRIX_LR": small}) < surrogate.expected_bpb(
        {**small_batch, "MATRIX_LR": big}) - 0.002


def test_the_best_weight_decay_moves_with_the_learning_rate():
    def best_wd(hp):
        return min([0.02 * 1.1 ** k for k in range(40)], key=lambda wd: surrogate.expected_bpb({**hp, "WEIGHT_DECAY": wd}))
    assert best_wd(REFERENCE) == pytest.approx(0.1, rel=0.1)
    assert best_wd(at(MATRIX_LR=0.02)) == pytest.approx(0.2, rel=0.1)  # lr-scaled decay: the product matters


def test_weight_decay_and_the_window_pattern_give_the_papers_small_gains():
    ref = surrogate.expected_bpb(REFERENCE)
    assert surrogate.expected_bpb(at(WEIGHT_DECAY=0.1)) - ref == pytest.approx(-0.008, abs=5e-4)
    assert surrogate.expected_bpb(at(WINDOW_PATTERN="SSL")) - ref == pytest.approx(-0.002, abs=5e-4)
    assert min(surrogate.expected_bpb(at(WINDOW_PATTERN=p)) for p in ("SSSSL", "SSL", "SL", "L")) < ref


@pytest.mark.parametrize("sigma", [0.0007, 0.002])
def test_the_noise_has_the_configured_sigma_over_50_seeds(sigma):
    hp = at(NOISE_SIGMA=sigma)
    scores = [surrogate.val_bpb(hp, seed) for seed in range(50)]
    assert statistics.fmean(scores) == pytest.approx(0.998, abs=3 * sigma / math.sqrt(50))
    assert 0.8 * sigma < statistics.stdev(scores) < 1.2 * sigma  # the 95 % range of s/σ at n = 50 is about ±20 %
    assert surrogate.val_bpb(hp, 7) == surrogate.val_bpb(hp, 7)  # one config at one seed: one number
    assert surrogate.noise(hp, 7) != surrogate.noise(at(NOISE_SIGMA=sigma, MATRIX_LR=0.05), 7)


@pytest.mark.parametrize("changes, kind", [
    ({"MATRIX_LR": 0.5}, "diverged"),
    ({"EMBEDDING_LR": 10.0}, "diverged"),
    ({"DEVICE_BATCH_SIZE": 512, "TOTAL_BATCH_SIZE": 2**20}, "oom"),
])
def test_unphysical_regions_crash(changes, kind):
    with pytest.raises(surrogate.SurrogateCrash) as info:
        surrogate.check(at(**changes))
    assert info.value.kind == kind


def test_a_batch_that_does_not_divide_is_a_configuration_error():
    with pytest.raises(surrogate.SurrogateConfigError, match="multiple of"):
        surrogate.check(at(TOTAL_BATCH_SIZE=2**17))  # 128 × 2048 tokens per micro-step do not fit


def run_script(tmp_path, text, seed="3"):
    path = tmp_path / "surrogate.py"
    path.write_text(text)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=patience(60),
                          env={"BILEVEL_SEED": seed, "PATH": "/usr/bin:/bin"})


def test_the_script_prints_progress_and_a_labelled_metrics_block(tmp_path):
    proc = run_script(tmp_path, config.SURROGATE_SCRIPT.read_text())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SURROGATE workload")
    assert "step 00952 (100.0%) | loss:" in proc.stdout
    metrics = parse_metrics(proc.stdout)
    assert metrics["surrogate"] == 1 and metrics["noise_sigma"] == 0.0007 and metrics["num_steps"] == 953
    assert metrics["val_bpb"] == pytest.approx(surrogate.val_bpb(REFERENCE, 3), abs=1e-6)


def test_the_script_diverges_like_the_real_one(tmp_path):
    script = TrainScript.parse(config.SURROGATE_SCRIPT.read_text()).apply({"MATRIX_LR": 1.0})
    proc = run_script(tmp_path, script.text)
    assert proc.returncode == 3 and "loss is nan" in proc.stdout and "---" not in proc.stdout


def test_its_constants_are_the_reference_block_and_nothing_else():
    params = TrainScript.parse(config.SURROGATE_SCRIPT.read_text()).params
    assert list(params) == list(surrogate.C.NAMES)


def test_the_preset_picks_the_surrogate_script_and_a_demo_without_data():
    cfg = config.demo_config(**{"script.preset": "surrogate"})
    assert cfg.surrogate and cfg.script_path() == config.SURROGATE_SCRIPT
    assert cfg.data.source == "none" and cfg.budget.time_s == 300.0
    assert config.is_surrogate(cfg.to_dict()) and not config.is_surrogate(config.demo_config().to_dict())


def test_a_study_never_mixes_surrogate_and_real_runs(tmp_path):
    real = config.demo_config(**{"run.sessions_dir": str(tmp_path)})
    fake = config.demo_config(**{"script.preset": "surrogate", "run.sessions_dir": str(tmp_path)})
    with pytest.raises(StudyError, match="never mixes surrogate"):
        Study.create([real, fake], "mixed", tmp_path)

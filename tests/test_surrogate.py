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
PAPER = {**REFERENCE, "SURFACE": "paper"}  # the paper's RTX 5090 profile


def at(**changes):
    return {**REFERENCE, **changes}


def paper(**changes):
    return {**PAPER, **changes}


MEASURED = surrogate.measured_rows()
CLEAR = [r for r in MEASURED if r["delta"] is not None and r["status"] != "noise" and abs(r["delta"]) >= 0.0005]


def test_the_measurements_table_says_where_it_comes_from():
    head = surrogate.MEASUREMENTS.read_text().splitlines()[0]
    assert "karpathy/autoresearch" in head and "exp/H100/mar8" in head
    assert len(CLEAR) >= 25  # every change of at least 0.0005 the log measured on these constants


@pytest.mark.parametrize("row", CLEAR, ids=[f"{r['commit']}-{r['description'][:30]}" for r in CLEAR])
def test_the_h100_surface_agrees_in_sign_with_every_clear_measured_change(row):
    effect = surrogate.surface_delta(row["change"], row["state"])
    assert (effect > 0) == (row["delta"] > 0), (row["description"], row["delta"], effect)


def test_halving_the_batch_gains_what_the_h100_measured_within_a_factor_of_two():
    row = next(r for r in MEASURED if r["change"] == {"TOTAL_BATCH_SIZE": 2**18} and not r["state"])
    effect = surrogate.surface_delta(row["change"], row["state"])
    assert 0.5 < effect / row["delta"] < 2.0  # -0.0119 measured


def test_the_logged_crash_is_a_configuration_error_here_too():
    row = next(r for r in MEASURED if r["status"] == "crash")
    with pytest.raises(surrogate.SurrogateConfigError, match="multiple of"):
        surrogate.surface_delta(row["change"], row["state"])


def test_the_h100_noise_rests_on_the_logged_seed_change():
    row = next(r for r in MEASURED if r["status"] == "noise")
    # two runs differ by sigma * sqrt(2) on average: the one seed change measured is about that
    assert surrogate.NOISE_SIGMA == pytest.approx(abs(row["delta"]) / math.sqrt(2), rel=0.1)


def test_the_best_reachable_h100_gain_is_the_size_of_the_logs_keeps():
    # Karpathy's keeps on these constants summed to about -0.018 (batch, learning rates, schedule, window)
    best = at(TOTAL_BATCH_SIZE=2**18, EMBEDDING_LR=0.82, UNEMBEDDING_LR=0.0053, FINAL_LR_FRAC=0.045,
              WARMDOWN_RATIO=0.74, WINDOW_PATTERN="SSSSL")
    gain = surrogate.expected_bpb(best) - surrogate.expected_bpb(REFERENCE)
    assert -0.03 < gain < -0.012


def test_every_string_constant_declares_its_choices():
    params = TrainScript.parse(config.SURROGATE_SCRIPT.read_text()).params
    assert params["WINDOW_PATTERN"].choices == ("SSSL", "SSSSL", "SSSSSL", "SSL", "SL", "L")
    assert all(p.choices for p in params.values() if p.kind == "str")


def best_matrix_lr(hp):
    grid = [0.04 * 2 ** (k / 8) for k in range(-40, 17)]
    return min(grid, key=lambda lr: surrogate.expected_bpb({**hp, "MATRIX_LR": lr}))


def test_the_reference_sits_at_the_published_baseline():
    assert surrogate.expected_bpb(REFERENCE) == pytest.approx(0.9979, abs=1e-9)  # the H100 log's baseline row
    assert surrogate.expected_bpb(PAPER) == pytest.approx(0.998, abs=1e-9)
    assert surrogate.steps(REFERENCE) == 953  # the public script's steps in 300 s on an H100


def test_the_paper_profile_keeps_its_large_batch_gains():
    ref = surrogate.expected_bpb(PAPER)
    half = surrogate.expected_bpb(paper(TOTAL_BATCH_SIZE=2**18))
    quarter = surrogate.expected_bpb(paper(TOTAL_BATCH_SIZE=2**17, DEVICE_BATCH_SIZE=64))
    double = surrogate.expected_bpb(paper(TOTAL_BATCH_SIZE=2**20))
    assert half < ref - 0.02 and quarter < ref - 0.02  # the paper's large gain from 2^19 to 2^17–2^18
    assert double > ref + 0.02  # and a loss from raising it
    assert surrogate.steps(at(TOTAL_BATCH_SIZE=2**17, DEVICE_BATCH_SIZE=64)) > 2.5 * surrogate.steps(REFERENCE)  # more steps


def test_the_learning_rate_optimum_moves_with_the_batch_size():
    no_decay = paper(WEIGHT_DECAY=0.0)  # the decay term is then constant, so the rate's own optimum shows
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
    assert best_wd(PAPER) == pytest.approx(0.1, rel=0.1)
    assert best_wd(paper(MATRIX_LR=0.02)) == pytest.approx(0.2, rel=0.1)  # lr-scaled decay: the product matters
    assert best_wd(REFERENCE) == pytest.approx(0.18, rel=0.1)  # H100: 0.15 flat, 0.22 and 0.25 worse
    assert best_wd(at(MATRIX_LR=0.02)) == pytest.approx(0.36, rel=0.1)


def test_weight_decay_and_the_window_pattern_give_the_papers_small_gains():
    ref = surrogate.expected_bpb(PAPER)
    assert surrogate.expected_bpb(paper(WEIGHT_DECAY=0.1)) - ref == pytest.approx(-0.008, abs=5e-4)
    assert surrogate.expected_bpb(paper(WINDOW_PATTERN="SSL")) - ref == pytest.approx(-0.002, abs=5e-4)
    assert min(surrogate.expected_bpb(paper(WINDOW_PATTERN=p)) for p in ("SSSSL", "SSL", "SL", "L")) < ref


@pytest.mark.parametrize("sigma", [0.0005, 0.002])
def test_the_noise_has_the_configured_sigma_over_50_seeds(sigma):
    hp = at(NOISE_SIGMA=sigma)
    scores = [surrogate.val_bpb(hp, seed) for seed in range(50)]
    assert statistics.fmean(scores) == pytest.approx(0.9979, abs=3 * sigma / math.sqrt(50))
    assert 0.8 * sigma < statistics.stdev(scores) < 1.2 * sigma  # the 95 % range of s/σ at n = 50 is about ±20 %
    assert surrogate.val_bpb(hp, 7) == surrogate.val_bpb(hp, 7)  # one config at one seed: one number
    assert surrogate.noise(hp, 7) != surrogate.noise(at(NOISE_SIGMA=sigma, MATRIX_LR=0.05), 7)


@pytest.mark.parametrize("changes, kind", [
    ({"MATRIX_LR": 0.5}, "diverged"),
    ({"EMBEDDING_LR": 10.0}, "diverged"),
    ({"DEVICE_BATCH_SIZE": 512, "TOTAL_BATCH_SIZE": 2**20}, "oom"),
])
@pytest.mark.parametrize("surface", ["h100", "paper"])
def test_unphysical_regions_crash(changes, kind, surface):
    with pytest.raises(surrogate.SurrogateCrash) as info:
        surrogate.check(at(SURFACE=surface, **changes))
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
    assert metrics["surrogate"] == 1 and metrics["noise_sigma"] == 0.0005 and metrics["num_steps"] == 953
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

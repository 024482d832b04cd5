"""`bilevel doctor` on the script: its own interpreter and imports, its editable and locked
constants with reasons, and the data-repeat estimate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from core.run.script_doctor import data_epochs_check, imported_modules, script_checks
from core.services.data_budget import REFERENCE_TOKENS_PER_S, epochs_per_run, repeat_warning
from tests.support.cli import run_bilevel
from tests.test_script_folder import public_folder


def doctor_config(tmp_path: Path, script: Path, python: str = "") -> Path:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f'name = "d"\n[endpoint]\nprovider = "offline"\n[script]\npath = "{script}"\n'
                   f'python = "{python}"\n[data]\nsource = "none"\n[search]\nlocked = []\n')
    return cfg


def test_doctor_runs_the_scripts_own_python_and_names_what_it_cannot_import(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    script.write_text("import kernels_that_do_not_exist\n" + script.read_text())
    assert imported_modules(script.read_text(), script.parent) == ["kernels_that_do_not_exist", "time", "torch"]
    done = run_bilevel("doctor", str(doctor_config(tmp_path, script, python=sys.executable)), cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 1  # a missing import fails the check
    assert f"[ok  ] script python: {sys.executable}" in done.stdout
    assert f"[FAIL] script imports: {sys.executable} cannot import kernels_that_do_not_exist" in lines
    assert any(line.startswith("[ok  ] script torch: 2.") or line.startswith("[warn] script torch: 2.")
               for line in lines)


def test_doctor_lists_editable_and_locked_constants_with_their_reasons(tmp_path: Path) -> None:
    script = public_folder(tmp_path)
    from core.record import config as config_mod

    checks = script_checks(config_mod.load(doctor_config(tmp_path, script)))
    text = {c.name + ": " + c.detail for c in checks}
    assert f"script: {script}: 3 editable constants: MATRIX_LR, DEPTH, DEVICE_BATCH_SIZE" in text
    assert any(t.startswith("locked: H100_BF16_PEAK_FLOPS: measures the hardware") for t in text)
    assert "imported: TIME_BUDGET = 300 from prepare.py:5: each run's copy of the folder sets it" in text
    assert any(t.startswith("imported: MAX_SEQ_LEN = 64 from prepare.py:4: protocol") for t in text)
    (seed,) = [c for c in checks if c.name == "seed"]
    assert seed.warning and "torch.manual_seed(42)" in seed.detail


def test_a_budget_that_repeats_the_data_is_warned_with_the_estimate(tmp_path: Path) -> None:
    assert REFERENCE_TOKENS_PER_S == pytest.approx(953 * 2**19 / 300)
    assert epochs_per_run(3_500_000, 300) == pytest.approx(953 * 2**19 / 3_500_000)  # ~142.8
    stdlib = {"tokens": {"train": 3_500_000, "val": 86_000}}
    warning = repeat_warning(stdlib, 300)
    assert warning is not None and "~142.8 epochs" in warning and "--source climbmix" in warning
    assert "3,500,000 training tokens" in warning and "~500M" in warning
    assert repeat_warning({"tokens": {"train": 600_000_000}}, 300) is None  # 0.8 epochs: fine
    (tmp_path / "meta.json").write_text(json.dumps(stdlib))
    check = data_epochs_check(None, tmp_path)
    assert check is not None and check.warning and not check.ok and "142.8" in check.detail


AUTORESEARCH_CUDA = Path(__file__).parent / "fixtures" / "scripts" / "autoresearch_cuda_lines.py"


def test_a_script_that_needs_cuda_at_import_is_named_with_its_lines() -> None:
    from core.run.script_doctor import cuda_check, cuda_requirements

    found = cuda_requirements(AUTORESEARCH_CUDA.read_text())
    assert found == ["line 8: from kernels import ...", "line 10: torch.cuda.get_device_capability()",
                     "line 24: torch.cuda.manual_seed()", "line 25: torch.device('cuda')"]  # not the function's
    check = cuda_check(AUTORESEARCH_CUDA.read_text(), cuda_available=False)
    assert not check.ok and not check.warning and "cannot run here" in check.detail
    assert cuda_check(AUTORESEARCH_CUDA.read_text(), cuda_available=True).ok
    assert cuda_check((Path(__file__).parent / "fixtures" / "scripts" / "quadratic_train.py").read_text(), False) is None


def test_doctor_says_a_cuda_script_cannot_run_on_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script could run here")
    script = tmp_path / "train.py"
    script.write_text(AUTORESEARCH_CUDA.read_text())
    (tmp_path / "kernels.py").write_text("def get_kernel(name): ...\n")  # importable: only CUDA is missing
    done = run_bilevel("doctor", str(doctor_config(tmp_path, script, python=sys.executable)), cwd=tmp_path)
    line = next(x for x in done.stdout.splitlines() if "script CUDA" in x)
    assert line.startswith("[FAIL]") and "torch.cuda.get_device_capability()" in line and "cannot run here" in line
    assert done.returncode == 1

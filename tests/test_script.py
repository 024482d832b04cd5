"""Tests for core.services.script, .literals and .schema: train.py as data (parse, typed edits, schema, validation, diffs)."""

from __future__ import annotations

import ast
import keyword
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.services.schema import infer_schema, validate_changes
from core.services.script import (
    Param,
    ParamSpec,
    ProposalError,
    TrainScript,
    format_value,
    unified_diff,
)
from tests.support.lanes import examples

REFERENCE_BLOCK = '''\
DEPTH = 8                 # transformer layers
ASPECT_RATIO = 64         # model_dim = DEPTH * ASPECT_RATIO
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"   # S = short sliding window, L = full context
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
TIME_BUDGET = 300
'''

TRAIN_PY = (
    '''\
"""Pretrain a small GPT for a fixed time budget."""

import math
import os
import time

import torch

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

'''
    + REFERENCE_BLOCK
    + '''
MODEL_DIM = DEPTH * ASPECT_RATIO          # derived, not a parameter
DEVICE = os.environ.get("DEVICE", "cuda")  # environment, not a parameter
SEED: int = 1337
torch_compile = True                      # lowercase: not a parameter


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_RATIO:
        return progress / max(WARMUP_RATIO, 1e-8)
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def main() -> None:
    start = time.time()
    steps = TOTAL_BATCH_SIZE // (DEVICE_BATCH_SIZE * 2048)
    while time.time() - start < TIME_BUDGET:
        BATCH = steps * 2  # local, not a parameter
        break
    print("---")
    print(f"val_bpb: {math.log(2):.6f}")


if __name__ == "__main__":
    RUN_NAME = "local"  # inside a block: not a parameter
    main()
'''
)

REFERENCE_VALUES = {
    "DEPTH": 8,
    "ASPECT_RATIO": 64,
    "HEAD_DIM": 128,
    "WINDOW_PATTERN": "SSSL",
    "TOTAL_BATCH_SIZE": 2**19,
    "DEVICE_BATCH_SIZE": 128,
    "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004,
    "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.5,
    "WEIGHT_DECAY": 0.2,
    "ADAM_BETAS": (0.8, 0.95),
    "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5,
    "FINAL_LR_FRAC": 0.0,
    "TIME_BUDGET": 300,
}

# 150 examples of each property in the full suite; the fast lane draws 30 (~25 s of a loaded machine saved)
HYPOTHESIS = settings(max_examples=examples(full=150, fast=30), deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


def same(a: object, b: object) -> bool:
    """Strict equality: 1 != 1.0 != True, 0.0 != -0.0, tuples element by element."""
    return type(a) is type(b) and repr(a) == repr(b)


def assert_same_values(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert same(got[name], expected[name]), f"{name}: {got[name]!r} != {expected[name]!r}"


def lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+", text)


@pytest.fixture
def script() -> TrainScript:
    return TrainScript.parse(TRAIN_PY)


@pytest.fixture
def schema(script: TrainScript) -> dict[str, ParamSpec]:
    return infer_schema(
        script,
        locked=["TIME_BUDGET"],
        bounds={"WINDOW_PATTERN": {"choices": ["SSSL", "L", "SL"]}},
    )


def reasons(changes: dict, schema: dict, frozen=()) -> list[str]:
    with pytest.raises(ProposalError) as info:
        validate_changes(changes, schema, frozen)
    return info.value.errors


# ---------------------------------------------------------------------------
# Parsing


def test_reference_constants_parse_to_their_values(script: TrainScript) -> None:
    expected = dict(REFERENCE_VALUES, SEED=1337)
    assert_same_values(script.values(), expected)
    batch = script.params["TOTAL_BATCH_SIZE"]
    assert batch == Param("TOTAL_BATCH_SIZE", "int", 524288, batch.lineno, "2**19", True)
    assert TRAIN_PY.splitlines()[batch.lineno - 1].startswith("TOTAL_BATCH_SIZE = 2**19")
    assert script.params["ADAM_BETAS"].kind == "tuple"
    assert script.params["ADAM_BETAS"].source == "(0.8, 0.95)"
    assert script.params["WINDOW_PATTERN"].source == '"SSSL"'
    assert script.params["WARMUP_RATIO"].kind == "float"
    assert not script.params["DEVICE_BATCH_SIZE"].pow2


def test_derived_environment_lowercase_and_nested_assignments_are_not_parameters(
    script: TrainScript,
) -> None:
    for name in ("MODEL_DIM", "DEVICE", "torch_compile", "BATCH", "RUN_NAME"):
        assert name not in script.params
    assert script.shadowed == {}


def test_applying_current_values_leaves_text_byte_identical(script: TrainScript) -> None:
    again = script.apply(script.values())
    assert again.text == TRAIN_PY
    assert TrainScript.parse(script.text).values() == script.values()


def test_constant_arithmetic_is_evaluated(capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "A = 3 * 2**10\nB = 1e-3 * 4\nC = -0.5\nD = +7\nE = 10 // 3\nF = 7 / 2\nG = (1, -2, 2**3)\n"
        "H = 2 ** 4\nI = 1_000_000\nJ = ((0.9))\nK = 'a' 'b'\nL = -(2**3)\n"
    )
    values = TrainScript.parse(text).values()
    assert_same_values(
        values,
        {"A": 3072, "B": 0.004, "C": -0.5, "D": 7, "E": 3, "F": 3.5, "G": (1, -2, 8),
         "H": 16, "I": 1000000, "J": 0.9, "K": "ab", "L": -8},
    )
    assert TrainScript.parse(text).params["H"].pow2
    assert not TrainScript.parse(text).params["A"].pow2


def test_evaluator_never_runs_code(capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        'A = print("EVALUATED")\nB = __import__("os").getpid()\nC = [1, 2]\nD = None\n'
        'E = {"a": 1}\nF = 1j\nG = "a" * 3\nH = X\nI = f"{3}"\nJ = b"raw"\nK = 10**10**10\n'
        "L = 1 / 0\nM = 1e999\nN = (1, [2])\nO = 2.0**5000\nP = -True\n"
    )
    script = TrainScript.parse(text)
    assert script.params == {}
    assert capsys.readouterr().out == ""


def test_annotated_assignments_are_parameters() -> None:
    script = TrainScript.parse("LR: float = 1  # note\nN: int = 2**4\nDECL: int\nMODE: str = 'x'\n")
    assert_same_values(script.values(), {"LR": 1.0, "N": 16, "MODE": "x"})
    assert script.params["LR"].kind == "float"
    edited = script.apply({"LR": 3, "N": 32})
    assert edited.text == "LR: float = 3.0  # note\nN: int = 2**5\nDECL: int\nMODE: str = 'x'\n"


def test_duplicate_constant_last_definition_wins_and_is_the_one_edited() -> None:
    text = "LR = 0.1  # first\nDEPTH = 2\nLR = 0.2  # second\n"
    script = TrainScript.parse(text)
    assert script.values() == {"DEPTH": 2, "LR": 0.2}
    assert script.params["LR"].lineno == 3
    assert script.apply({"LR": 0.3}).text == "LR = 0.1  # first\nDEPTH = 2\nLR = 0.3  # second\n"


def test_later_non_literal_rebinding_hides_the_parameter() -> None:
    text = (
        "import os\nDEPTH = 8\nDEPTH = int(os.environ.get('DEPTH', DEPTH))\n"
        "WIDTH = 4\nif os.environ.get('BIG'):\n    WIDTH = 8\n"
        "HEADS = 2\nfor HEADS in range(3):\n    pass\n"
        "KEPT = 1\nx = [KEPT for KEPT in range(2)]\nDECLARED = 3\nDECLARED: int\n"
    )
    script = TrainScript.parse(text)
    assert script.values() == {"KEPT": 1, "DECLARED": 3}
    assert script.shadowed == {"DEPTH": 3, "WIDTH": 5, "HEADS": 8}


def test_syntax_error_is_a_value_error_naming_the_line() -> None:
    with pytest.raises(ValueError, match=r"line 3") as info:
        TrainScript.parse("A = 1\nB = 2\nC = (3,\n")
    assert not isinstance(info.value, SyntaxError)
    with pytest.raises(ValueError, match="line 2.*def broken"):
        TrainScript.parse("A = 1\ndef broken(:\n")


# ---------------------------------------------------------------------------
# Editing


@pytest.mark.parametrize(
    "value",
    [
        "it's",
        'say "hi"',
        "both ' and \"",
        "back\\slash\\",
        "trailing backslash \\",
        "new\nline\ttab\r",
        "nul \x00 bell \x07",
        "unicode é ü 漢字 🚀",
        "line\u2028separator",
        "\\x41 not an escape",
        "'''",
        '"""',
        "",
    ],
)
def test_string_values_stay_valid_python_and_read_back_equal(script: TrainScript, value: str) -> None:
    edited = script.apply({"WINDOW_PATTERN": value})
    ast.parse(edited.text)
    assert same(edited.params["WINDOW_PATTERN"].value, value)
    line = lines(edited.text)[script.params["WINDOW_PATTERN"].lineno - 1]
    assert line.startswith("WINDOW_PATTERN = ")
    assert line.endswith("   # S = short sliding window, L = full context\n")
    assert edited.values() | {"WINDOW_PATTERN": "SSSL"} == script.values()


def test_string_edit_keeps_the_original_quote_character() -> None:
    script = TrainScript.parse("A = 'x'\nB = \"y\"\n")
    assert script.apply({"A": "p", "B": "q"}).text == "A = 'p'\nB = \"q\"\n"


def test_tuples_stay_tuples(script: TrainScript) -> None:
    edited = script.apply({"ADAM_BETAS": [0.9, 0.99]})
    assert "ADAM_BETAS = (0.9, 0.99)\n" in edited.text
    assert edited.values()["ADAM_BETAS"] == (0.9, 0.99)
    single = TrainScript.parse("T = (1,)\n").apply({"T": [2]})
    assert single.text == "T = (2,)\n" and single.values()["T"] == (2,)
    bare = TrainScript.parse("T = 1, 2  # bare\n").apply({"T": (1, 2, 3)})
    assert bare.text == "T = (1, 2, 3)  # bare\n"


def test_pow2_source_keeps_power_notation() -> None:
    script = TrainScript.parse("BATCH = 2**17  # tokens\nOTHER = 2**16\n")
    assert script.apply({"BATCH": 131072}).text == script.text
    edited = script.apply({"BATCH": 2**18, "OTHER": 131072})
    assert edited.text == "BATCH = 2**18  # tokens\nOTHER = 2**17\n"
    assert edited.params["OTHER"].pow2
    assert script.apply({"BATCH": 100000}).text == "BATCH = 100000  # tokens\nOTHER = 2**16\n"


def test_float_edit_keeps_scientific_notation_and_int_grouping() -> None:
    script = TrainScript.parse("LR = 3e-4\nSTEPS = 1_000\nPLAIN = 0.5\n")
    edited = script.apply({"LR": 0.0006, "STEPS": 25000, "PLAIN": 1e-05})
    assert edited.text == "LR = 6e-4\nSTEPS = 25_000\nPLAIN = 1e-05\n"


def test_untouched_lines_are_byte_identical(script: TrainScript) -> None:
    edited = script.apply({"MATRIX_LR": 0.05, "TOTAL_BATCH_SIZE": 2**20, "DEPTH": 12})
    changed = {script.params[n].lineno for n in ("MATRIX_LR", "TOTAL_BATCH_SIZE", "DEPTH")}
    old, new = lines(TRAIN_PY), lines(edited.text)
    assert len(old) == len(new)
    for number, (before, after) in enumerate(zip(old, new), start=1):
        if number not in changed:
            assert before == after
    assert new[script.params["DEPTH"].lineno - 1] == "DEPTH = 12                 # transformer layers\n"
    assert new[script.params["TOTAL_BATCH_SIZE"].lineno - 1] == (
        "TOTAL_BATCH_SIZE = 2**20  # tokens per optimizer step\n"
    )


def test_diff_shows_exactly_the_changed_lines(script: TrainScript) -> None:
    edited = script.apply({"MATRIX_LR": 0.05, "WINDOW_PATTERN": "L"})
    diff = unified_diff(script.text, edited.text)
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n@@ ")
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    assert [line for line in body if line.startswith("-")] == [
        '-WINDOW_PATTERN = "SSSL"   # S = short sliding window, L = full context',
        "-MATRIX_LR = 0.04",
    ]
    assert [line for line in body if line.startswith("+")] == [
        '+WINDOW_PATTERN = "L"   # S = short sliding window, L = full context',
        "+MATRIX_LR = 0.05",
    ]
    assert unified_diff(script.text, script.text) == ""
    assert "a/x.py" in unified_diff("A = 1\n", "A = 2\n", name="x.py", context=0)


def test_diff_marks_missing_final_newline() -> None:
    diff = unified_diff("A = 1", "A = 2")
    assert diff.endswith("-A = 1\n\\ No newline at end of file\n+A = 2\n\\ No newline at end of file\n")


def test_multiline_tuple_edit_keeps_layout_and_comments() -> None:
    text = "BETAS = (\n    0.8,   # beta1\n    0.95,  # beta2\n)\nNEXT = 1\n"
    script = TrainScript.parse(text)
    assert script.params["BETAS"].source == "(\n    0.8,   # beta1\n    0.95,  # beta2\n)"
    edited = script.apply({"BETAS": (0.8, 0.99)})
    assert edited.text == "BETAS = (\n    0.8,   # beta1\n    0.99,  # beta2\n)\nNEXT = 1\n"
    longer = script.apply({"BETAS": (0.8, 0.9, 0.99)})
    assert longer.text == "BETAS = (0.8, 0.9, 0.99)\nNEXT = 1\n"


def test_multibyte_characters_before_a_value_do_not_shift_the_edit() -> None:
    text = 'NAME = "héllo"; LR = 0.1  # ünïcode\nX = "🚀"; Y = 2\n'
    edited = TrainScript.parse(text).apply({"LR": 0.2, "Y": 3, "NAME": "ö"})
    assert edited.text == 'NAME = "ö"; LR = 0.2  # ünïcode\nX = "🚀"; Y = 3\n'


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_other_line_endings_are_preserved(newline: str) -> None:
    text = newline.join(["# héader", "A = 1  # c", 'B = "é"; C = 2', "D = (1,", "     2)", ""])
    script = TrainScript.parse(text)
    assert script.values() == {"A": 1, "B": "é", "C": 2, "D": (1, 2)}
    edited = script.apply({"A": 5, "C": 6, "D": (3, 4)})
    expected = newline.join(["# héader", "A = 5  # c", 'B = "é"; C = 6', "D = (3,", "     4)", ""])
    assert edited.text == expected


def test_byte_order_mark_is_kept_and_does_not_shift_edits() -> None:
    edited = TrainScript.parse("\ufeffA = 1  # c\nB = 2\n").apply({"A": 5, "B": 7})
    assert edited.text == "\ufeffA = 5  # c\nB = 7\n"


def test_edit_that_does_not_read_back_fails_loudly(
    script: TrainScript, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.services.script

    # The reference implementation's bug: string values pasted unquoted.
    monkeypatch.setattr(core.services.script, "format_value", lambda value, **_: str(value))
    with pytest.raises(RuntimeError, match="WINDOW_PATTERN did not read back"):
        script.apply({"WINDOW_PATTERN": "SSL"})


def test_apply_rejects_unknown_names_and_uncoercible_values(script: TrainScript) -> None:
    with pytest.raises(ProposalError) as info:
        script.apply({"MATRIX_LRR": 0.1, "DEPTH": "deep", "WINDOW_PATTERN": 3})
    assert len(info.value.errors) == 3
    assert "MATRIX_LR" in info.value.errors[0]


def test_apply_coerces_to_the_parameter_kind(script: TrainScript) -> None:
    edited = script.apply({"DEPTH": 12.0, "MATRIX_LR": 1, "ADAM_BETAS": ["0.9", 1]})
    assert_same_values(
        {n: edited.values()[n] for n in ("DEPTH", "MATRIX_LR", "ADAM_BETAS")},
        {"DEPTH": 12, "MATRIX_LR": 1.0, "ADAM_BETAS": (0.9, 1.0)},
    )
    assert "MATRIX_LR = 1.0\n" in edited.text


# ---------------------------------------------------------------------------
# format_value


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (True, {}, "True"),
        (False, {}, "False"),
        (131072, {"pow2": True}, "2**17"),
        (100, {"pow2": True}, "100"),
        (131072, {}, "131072"),
        (-3, {}, "-3"),
        (0.1, {}, "0.1"),
        (1e-4, {}, "0.0001"),
        (1e-05, {}, "1e-05"),
        (3.0, {}, "3.0"),
        (0.00031, {"original_source": "1e-3"}, "3.1e-4"),
        (2.0, {"original_source": "1E2"}, "2.0"),
        (64, {"original_source": "2**5"}, "2**6"),
        ("a'b", {}, "\"a'b\""),
        ("a'b", {"original_source": "'x'"}, "'a\\'b'"),
        ((0.8, 0.95), {}, "(0.8, 0.95)"),
        ((1,), {}, "(1,)"),
        ((), {}, "()"),
        (("x", True, 2), {}, "('x', True, 2)"),
    ],
)
def test_format_value_writes_literals(value: object, kwargs: dict, expected: str) -> None:
    text = format_value(value, **kwargs)
    assert text == expected
    assert same(TrainScript.parse(f"X = {text}\n").values()["X"], value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), None, [1, 2], {"a": 1}, b"x"])
def test_format_value_refuses_values_without_a_literal(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        format_value(value)


# ---------------------------------------------------------------------------
# Schema


def test_default_schema_follows_naming_rules(script: TrainScript) -> None:
    schema = infer_schema(script)
    lr = schema["MATRIX_LR"]
    assert (lr.log_scale, lr.minimum, lr.maximum) == (True, 0.0004, 4.0)
    wd = schema["WEIGHT_DECAY"]
    assert (wd.log_scale, wd.minimum, wd.maximum) == (True, 0.002, 20.0)
    batch = schema["TOTAL_BATCH_SIZE"]
    assert (batch.pow2, batch.minimum, batch.maximum) == (True, 2**15, 2**23)
    device = schema["DEVICE_BATCH_SIZE"]  # pow2 by name, though written as 128
    assert (device.pow2, device.minimum, device.maximum) == (True, 8, 2048)
    depth = schema["DEPTH"]
    assert (depth.pow2, depth.minimum, depth.maximum) == (False, 1, 32)
    aspect = schema["ASPECT_RATIO"]  # an int: RATIO's 0..1 rule is for floats
    assert (aspect.minimum, aspect.maximum) == (1, 256)
    for name in ("WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC"):
        assert (schema[name].minimum, schema[name].maximum) == (0, 1)
    assert schema["WINDOW_PATTERN"].choices is None and schema["WINDOW_PATTERN"].minimum is None
    assert schema["ADAM_BETAS"].kind == "tuple"
    assert not any(spec.locked for spec in schema.values())


def test_zero_rate_and_bool_defaults() -> None:
    script = TrainScript.parse("DECAY_LR = 0.0\nUSE_FLASH = True\nTOKENS = 1000\nSOFTCAP = 15.0\n")
    schema = infer_schema(script)
    zero = schema["DECAY_LR"]
    assert (zero.log_scale, zero.minimum, zero.maximum) == (False, 0, 1)
    assert schema["USE_FLASH"].choices == (True, False)
    assert not schema["TOKENS"].pow2  # named like a batch, but 1000 is not a power of two
    assert (schema["SOFTCAP"].minimum, schema["SOFTCAP"].maximum) == (None, None)


def test_config_bounds_and_locks_override_defaults(script: TrainScript) -> None:
    schema = infer_schema(
        script,
        locked=["TIME_BUDGET", "HEAD_DIM"],
        bounds={
            "MATRIX_LR": {"min": 1e-4, "max": 0.2},
            "WINDOW_PATTERN": {"choices": ["SSSL", "L", "SL"]},
            "WEIGHT_DECAY": {"min": 0, "max": 0.5},
        },
    )
    assert (schema["MATRIX_LR"].minimum, schema["MATRIX_LR"].maximum) == (1e-4, 0.2)
    assert schema["MATRIX_LR"].log_scale
    assert schema["WINDOW_PATTERN"].choices == ("SSSL", "L", "SL")
    assert not schema["WEIGHT_DECAY"].log_scale  # a floor of 0 cannot be log-scaled
    assert schema["TIME_BUDGET"].locked and schema["HEAD_DIM"].locked


def test_unknown_names_in_config_are_errors_naming_them(script: TrainScript) -> None:
    with pytest.raises(ValueError, match="MATRX_LR.*MATRIX_LR") as info:
        infer_schema(script, bounds={"MATRX_LR": {"min": 0.1}, "NOPE": {"max": 1}})
    assert "NOPE" in str(info.value)
    with pytest.raises(ValueError, match="GHOST"):
        infer_schema(script, locked=["GHOST"])


@pytest.mark.parametrize(
    "bad",
    [
        {"MATRIX_LR": {"minimum": 1}},
        {"MATRIX_LR": {"min": 1, "max": 0.5}},
        {"MATRIX_LR": {"min": "low"}},
        {"MATRIX_LR": {"min": 0, "log_scale": True}},
        {"WINDOW_PATTERN": {"choices": [1, 2]}},
        {"WINDOW_PATTERN": {"choices": []}},
        {"WINDOW_PATTERN": {"min": 1}},
        {"MATRIX_LR": {"pow2": True}},
        {"MATRIX_LR": 0.1},
    ],
)
def test_malformed_config_bounds_are_rejected(script: TrainScript, bad: dict) -> None:
    with pytest.raises(ValueError):
        infer_schema(script, bounds=bad)


def test_describe_is_one_compact_line(script: TrainScript) -> None:
    schema = infer_schema(
        script,
        locked=["TIME_BUDGET"],
        bounds={"MATRIX_LR": {"min": 1e-5, "max": 1}, "WINDOW_PATTERN": {"choices": ["SSSL", "L"]}},
    )
    assert schema["MATRIX_LR"].describe() == "MATRIX_LR: float = 0.04 (log scale, 1e-05..1)"
    assert schema["TOTAL_BATCH_SIZE"].describe() == (
        "TOTAL_BATCH_SIZE: int = 2**19 (power of two, 2**15..2**23)"
    )
    assert schema["WINDOW_PATTERN"].describe() == "WINDOW_PATTERN: str = 'SSSL' (one of 'SSSL'|'L')"
    assert schema["TIME_BUDGET"].describe() == "TIME_BUDGET: int = 300 (locked, 1..1200)"
    assert schema["ADAM_BETAS"].describe() == "ADAM_BETAS: tuple = (0.8, 0.95) (2 elements: float in [0, 1), float in [0, 1))"
    for spec in schema.values():
        assert "\n" not in spec.describe()


# ---------------------------------------------------------------------------
# Validation


def test_valid_changes_are_coerced(schema: dict[str, ParamSpec]) -> None:
    accepted = validate_changes(
        {
            "DEPTH": 12.0,
            "MATRIX_LR": "0.01",
            "ADAM_BETAS": [0.9, "0.99"],
            "TOTAL_BATCH_SIZE": 524288 * 2,
            "DEVICE_BATCH_SIZE": "2**6",
            "WINDOW_PATTERN": "L",
            "WARMDOWN_RATIO": 1,
        },
        schema,
    )
    assert_same_values(
        accepted,
        {
            "DEPTH": 12,
            "MATRIX_LR": 0.01,
            "ADAM_BETAS": (0.9, 0.99),
            "TOTAL_BATCH_SIZE": 2**20,
            "DEVICE_BATCH_SIZE": 64,
            "WINDOW_PATTERN": "L",
            "WARMDOWN_RATIO": 1.0,
        },
    )


def test_bool_parameters_accept_json_style_strings() -> None:
    schema = infer_schema(TrainScript.parse("USE_FLASH = True\n"))
    assert validate_changes({"USE_FLASH": "false"}, schema) == {"USE_FLASH": False}
    assert reasons({"USE_FLASH": 0}, schema) == ["USE_FLASH: expected bool (True/False), got int 0"]


def test_empty_change_set_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({}, schema) == ["empty change set: propose at least one parameter change"]


def test_unknown_parameter_suggests_close_names(schema: dict[str, ParamSpec]) -> None:
    [reason] = reasons({"matrix_lr": 0.05}, schema)
    assert reason == "unknown parameter 'matrix_lr' (did you mean MATRIX_LR?)"
    [reason] = reasons({"BANANA": 1}, schema)
    assert reason == "unknown parameter 'BANANA'"


def test_locked_parameter_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"TIME_BUDGET": 600}, schema) == [
        "TIME_BUDGET is locked by the experiment config and cannot be changed"
    ]


def test_frozen_parameter_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"DEPTH": 10}, schema, frozen=["DEPTH"]) == [
        "DEPTH is frozen by the search strategy; change a different parameter"
    ]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DEPTH", "deep", "DEPTH: expected int, got str 'deep'"),
        ("DEPTH", 8.5, "DEPTH: expected int, got non-integral float 8.5"),
        ("DEPTH", True, "DEPTH: expected int, got bool True"),
        ("MATRIX_LR", "abc", "MATRIX_LR: expected float, got str 'abc'"),
        ("MATRIX_LR", None, "MATRIX_LR: expected float, got null None"),
        ("MATRIX_LR", float("nan"), "MATRIX_LR: expected a finite float, got nan"),
        ("WINDOW_PATTERN", 4, "WINDOW_PATTERN: expected str, got int 4"),
        ("ADAM_BETAS", 0.9, "ADAM_BETAS: expected tuple, got float 0.9"),
    ],
)
def test_wrong_type_is_rejected(schema: dict, name: str, value: object, expected: str) -> None:
    assert reasons({name: value}, schema) == [expected]


def test_out_of_bounds_is_rejected_with_the_allowed_range(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"MATRIX_LR": 9.0}, schema) == [
        "MATRIX_LR: 9.0 is out of bounds; allowed 0.0004..4"
    ]
    assert reasons({"DEPTH": 0}, schema) == ["DEPTH: 0 is out of bounds; allowed 1..32"]
    assert reasons({"TOTAL_BATCH_SIZE": 2**24}, schema) == [
        "TOTAL_BATCH_SIZE: 2**24 is out of bounds; allowed 2**15..2**23"
    ]


def test_non_power_of_two_is_rejected_with_neighbours(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"TOTAL_BATCH_SIZE": 300000}, schema) == [
        "TOTAL_BATCH_SIZE: 300000 is not a power of two (nearest: 2**18=262144 or 2**19=524288)"
    ]


def test_value_outside_choices_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"WINDOW_PATTERN": "LLLS"}, schema) == [
        "WINDOW_PATTERN: 'LLLS' is not one of 'SSSL', 'L', 'SL'"
    ]


def test_empty_string_is_rejected() -> None:
    schema = infer_schema(TrainScript.parse('NAME = "x"\n'))
    assert reasons({"NAME": ""}, schema) == ["NAME: empty string is not allowed"]


def test_tuple_of_wrong_length_or_element_type_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"ADAM_BETAS": [0.9, 0.95, 0.99]}, schema) == [
        "ADAM_BETAS: expected a tuple of 2 elements (float, float), got 3 elements (0.9, 0.95, 0.99)"
    ]
    assert reasons({"ADAM_BETAS": [0.9, "high"]}, schema) == [
        "ADAM_BETAS: element 1: expected float, got str 'high'"
    ]


def test_no_op_change_is_rejected(schema: dict[str, ParamSpec]) -> None:
    assert reasons({"MATRIX_LR": 0.04}, schema) == [
        "MATRIX_LR: 0.04 equals the current value; propose a different value"
    ]
    assert reasons({"TOTAL_BATCH_SIZE": 524288}, schema) == [
        "TOTAL_BATCH_SIZE: 2**19 equals the current value; propose a different value"
    ]
    assert reasons({"ADAM_BETAS": [0.8, 0.95]}, schema)[0].startswith("ADAM_BETAS: (0.8, 0.95) equals")


def test_every_bad_change_is_listed_at_once(schema: dict[str, ParamSpec]) -> None:
    errors = reasons(
        {
            "MATRIX_LRR": 0.1,
            "TIME_BUDGET": 1,
            "SCALAR_LR": 0.4,
            "DEPTH": "x",
            "EMBEDDING_LR": 1e6,
            "TOTAL_BATCH_SIZE": 3,
            "WINDOW_PATTERN": "Q",
            "ADAM_BETAS": [1],
            "HEAD_DIM": 128,
            "WARMDOWN_RATIO": 0.6,  # the one valid change
        },
        schema,
        frozen=["SCALAR_LR"],
    )
    assert len(errors) == 9
    assert [e.split(" ")[0].split(":")[0] for e in errors] == [
        "unknown", "TIME_BUDGET", "SCALAR_LR", "DEPTH", "EMBEDDING_LR",
        "TOTAL_BATCH_SIZE", "WINDOW_PATTERN", "ADAM_BETAS", "HEAD_DIM",
    ]
    assert isinstance(ProposalError(errors), ValueError)


# ---------------------------------------------------------------------------
# Property-based: random edits, random scripts

FLOATS = st.floats(allow_nan=False, allow_infinity=False)
INTS = st.integers(min_value=-(10**15), max_value=10**15)
STRINGS = st.text(max_size=24)
SCALARS = {"int": INTS, "float": FLOATS, "str": STRINGS, "bool": st.booleans()}


def value_like(current: object) -> st.SearchStrategy:
    """Random values of the same kind (tuples: same length, same element kinds)."""
    if isinstance(current, tuple):
        return st.tuples(*(value_like(item) for item in current))
    kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(current)]
    return SCALARS[kind]


def assert_edit_is_exact(script: TrainScript, edited: TrainScript, changes: dict) -> None:
    expected = dict(script.values(), **changes)
    assert_same_values(edited.values(), expected)
    assert_same_values(TrainScript.parse(edited.text).values(), expected)
    touched: set[int] = set()
    for name in changes:
        param = script.params[name]
        touched.update(range(param.lineno, param.lineno + param.source.count("\n") + 1))
    old, new = lines(script.text), lines(edited.text)
    assert len(old) == len(new)
    for number, (before, after) in enumerate(zip(old, new), start=1):
        if number not in touched:
            assert before == after, f"line {number} changed"


@HYPOTHESIS
@given(data=st.data())
def test_random_edits_on_reference_script_read_back_exactly(data: st.DataObject) -> None:
    script = TrainScript.parse(TRAIN_PY)
    names = data.draw(st.sets(st.sampled_from(sorted(script.params)), min_size=1))
    changes = {name: data.draw(value_like(script.params[name].value), label=name) for name in sorted(names)}
    edited = script.apply(changes)
    assert_edit_is_exact(script, edited, changes)
    # Comments after edited single-line values survive.
    for name in changes:
        param = script.params[name]
        old_line = lines(script.text)[param.lineno - 1]
        tail = old_line[old_line.index(param.source) + len(param.source):]
        assert lines(edited.text)[param.lineno - 1].endswith(tail)


NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))
COMMENTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=20
)
LEAF = st.one_of(INTS, FLOATS, STRINGS, st.booleans())
VALUES = st.one_of(LEAF, st.tuples(LEAF), st.tuples(LEAF, LEAF), st.tuples(LEAF, LEAF, LEAF))
FILLER = [
    "import math\n",
    "lower = 3\n",
    "\n",
    "DERIVED = math.pi * 2\n",
    "def helper(x):\n    INNER = 5\n    return x * INNER\n",
    "class Config:\n    WIDTH = 4\n",
    '"""A docstring-like string."""\n',
]


@st.composite
def generated_scripts(draw: st.DrawFn) -> tuple[str, dict[str, object], dict[str, str]]:
    """A random script whose constants are written by Python's own repr (independent of format_value)."""
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    parts: list[str] = [draw(st.sampled_from(FILLER))]
    expected: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in names:
        value = draw(VALUES)
        source = repr(value)
        if type(value) is int and value > 0 and value & (value - 1) == 0 and draw(st.booleans()):
            source = f"2**{value.bit_length() - 1}"
        if isinstance(value, tuple) and len(value) > 1 and draw(st.booleans()):
            inner = "".join(f"    {repr(item)},  # item {i}\n" for i, item in enumerate(value))
            source = "(\n" + inner + ")"
        annotation = ""
        if draw(st.booleans()):
            annotation = ": " + {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "tuple")
        comment = draw(st.one_of(st.just(""), COMMENTS.map(lambda c: "  # " + c)))
        padding = " " * draw(st.integers(0, 3))
        parts.append(f"{name}{annotation} = {source}{padding}{comment}\n")
        parts.append(draw(st.sampled_from(FILLER)))
        expected[name] = value
        sources[name] = source
    return "".join(parts), expected, sources


@HYPOTHESIS
@given(generated=generated_scripts(), data=st.data())
def test_random_scripts_round_trip_and_edit_exactly(generated, data: st.DataObject) -> None:
    text, expected, sources = generated
    script = TrainScript.parse(text)
    assert_same_values(script.values(), expected)
    for name, source in sources.items():
        assert script.params[name].source == source
        assert lines(text)[script.params[name].lineno - 1].startswith(name)
    assert script.apply(script.values()).text == text
    names = data.draw(st.sets(st.sampled_from(sorted(expected)), min_size=1))
    changes = {name: data.draw(value_like(expected[name]), label=name) for name in sorted(names)}
    assert_edit_is_exact(script, script.apply(changes), changes)


@HYPOTHESIS
@given(value=VALUES)
def test_format_value_round_trips_through_the_parser(value: object) -> None:
    script = TrainScript.parse(f"X = {format_value(value)}\n")
    assert same(script.values()["X"], value)


def test_a_trailing_comment_declares_the_choices_of_a_constant():
    script = TrainScript.parse(
        'PATTERN = "SSSL"  # per layer; choices: "SSSL", "SSL", "L"\n'
        'OTHER = "x"  # choices: "a", "b"\n'  # its own value is not among them: no choices
        'MIXED = "a"  # choices: "a", 3\n'  # another kind: no choices
        'BROKEN = "a"  # choices: "a", (\n'
        'PLAIN = "a"  # no list here\n')
    assert script.params["PATTERN"].choices == ("SSSL", "SSL", "L")
    assert all(script.params[n].choices is None for n in ("OTHER", "MIXED", "BROKEN", "PLAIN"))
    from core.services.schema import infer_schema
    assert infer_schema(script)["PATTERN"].choices == ("SSSL", "SSL", "L")

"""The training workload: data preparation, the tokenizer, and train.py as a real process."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import baseline.prepare as prep
from baseline.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "baseline" / "train.py"

REFERENCE = {
    "DEPTH": 8,
    "ASPECT_RATIO": 64,
    "HEAD_DIM": 128,
    "WINDOW_PATTERN": "SSSL",
    "MAX_SEQ_LEN": 2048,
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
    "EVAL_TOKENS": 10 * 2**19,
    "DEVICE": "auto",
    "COMPILE": True,
}

PROGRESS = re.compile(
    r"^step \d{5} \(\d+\.\d%\) \| loss: \d+\.\d{6} \| lrm: \d\.\d\d \| dt: \d+ms \| "
    r"tok/sec: [\d,]+ \| mfu: \d+\.\d% \| epoch: \d+ \| remaining: \d+s$"
)


# --------------------------------------------------------------------------- helpers


def with_constants(source: str, overrides: dict[str, object]) -> str:
    """Replace top-level ``NAME = ...`` lines (a stand-in for the engine's script editor)."""
    for name, value in overrides.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert count == 1, f"{name} is not a top-level constant of train.py"
    return source


def write_script(folder: Path, **overrides: object) -> Path:
    script = folder / "train.py"
    text = TRAIN_PY.read_text(encoding="utf-8")
    script.write_text(with_constants(text, {**PRESETS["cpu-tiny"], **overrides}), encoding="utf-8")
    return script


def run_script(script: Path, data_dir: Path, timeout: float = 60,
               seed: str = "7") -> subprocess.CompletedProcess:
    env = {**os.environ, "BILEVEL_DATA_DIR": str(data_dir), "BILEVEL_SEED": seed}
    return subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert "---" in lines, stdout
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    return dict(line.split(": ", 1) for line in block)


def literal_value(node: ast.expr) -> object:
    """Value of a literal, allowing arithmetic on numbers (``2**19``); else ValueError."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(literal_value(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -literal_value(node.operand)  # type: ignore[operator]
    if isinstance(node, ast.BinOp):
        left, right = literal_value(node.left), literal_value(node.right)
        ops = {ast.Pow: pow, ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b,
               ast.Sub: lambda a, b: a - b, ast.Div: lambda a, b: a / b}
        if type(node.op) in ops and all(isinstance(v, (int, float)) for v in (left, right)):
            return ops[type(node.op)](left, right)
    raise ValueError(ast.dump(node))


def top_level_literals(source: str) -> dict[str, tuple[int, object]]:
    found: dict[str, tuple[int, object]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = (node.lineno, literal_value(node.value))
            except ValueError:
                pass
    return found


def import_train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bilevel_train_under_test", TRAIN_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return prep.prepare("stdlib", root=root, max_bytes=2_000_000, vocab_size=512,
                        log=lambda m: None)


@pytest.fixture(scope="session")
def train_module() -> ModuleType:
    return import_train_module()


# --------------------------------------------------------------------------- prepare


def test_second_prepare_is_cached_and_instant(small_data: Path) -> None:
    meta_before = json.loads((small_data / "meta.json").read_text())
    messages: list[str] = []
    started = time.perf_counter()
    again = prep.prepare("stdlib", root=small_data.parent, max_bytes=2_000_000,
                         vocab_size=512, log=messages.append)
    assert time.perf_counter() - started < 1.0
    assert again == small_data
    assert any("cached" in m for m in messages)
    assert json.loads((small_data / "meta.json").read_text()) == meta_before


def test_meta_records_hash_split_and_counts(small_data: Path) -> None:
    meta = json.loads((small_data / "meta.json").read_text())
    assert prep.data_ready(small_data)
    assert re.fullmatch(r"[0-9a-f]{64}", meta["content_sha256"])
    assert meta["source"]["kind"] == "stdlib"
    assert meta["vocab_size"] == 512 and meta["python_version"] == sys.version.split()[0]
    assert meta["tokenizer_id"] == json.loads((small_data / "tokenizer.json").read_text())["id"]
    assert meta["documents"]["val"] == len(meta["split"]["val_documents"]) >= 1
    assert 2_000_000 <= meta["bytes"]["train"] + meta["bytes"]["val"] < 2_000_000 + 1_000_000
    for split in ("train", "val"):
        tokens = np.fromfile(small_data / f"{split}.bin", dtype=np.uint16)
        assert len(tokens) == meta["tokens"][split]
        assert tokens[0] == meta["eot_id"]  # every document starts with end-of-text
        assert int((tokens == meta["eot_id"]).sum()) == meta["documents"][split]
        assert int(tokens.max()) < meta["vocab_size"]


def test_val_tokens_decode_to_the_held_out_documents(small_data: Path) -> None:
    meta = json.loads((small_data / "meta.json").read_text())
    tokenizer = prep.Tokenizer.load(small_data / "tokenizer.json")
    val = np.fromfile(small_data / "val.bin", dtype=np.uint16).tolist()
    stdlib = prep.resolve_source("stdlib").root
    expected = "".join((stdlib / doc_id).read_bytes().decode("utf-8")
                       for doc_id in meta["split"]["val_documents"])
    assert tokenizer.decode(val) == expected
    assert sum(tokenizer.to_json()["token_byte_lengths"][t] for t in val) == meta["bytes"]["val"]


def test_held_out_membership_depends_only_on_the_document_id() -> None:
    docs = [prep.Document(f"pkg/module_{i}.py", "x = 1\n", 6) for i in range(400)]
    train, val = prep.split_documents(docs)
    assert 1 <= len(val) < 30
    _, val_without_one = prep.split_documents([d for d in docs if d is not train[0]])
    assert [d.id for d in val_without_one] == [d.id for d in val]
    _, tiny_val = prep.split_documents(docs[:3])  # too few for 2%: one is still held out
    assert len(tiny_val) == 1


def test_interrupted_prepare_leaves_no_ready_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"doc{i}.txt").write_text(f"document number {i}\n" * 50)
    root = tmp_path / "data"
    ready = prep.prepare(str(corpus), root=root, vocab_size=300, log=lambda m: None)
    hash_before = json.loads((ready / "meta.json").read_text())["content_sha256"]

    real_write = prep._write_array
    calls = []

    def write_then_die(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between train.bin and val.bin
        real_write(path, array)

    monkeypatch.setattr(prep, "_write_array", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(str(corpus), name="fresh", root=root, vocab_size=300, log=lambda m: None)
    assert not (root / "fresh").exists() and not prep.data_ready(root / "fresh")

    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # a forced rebuild dies: the old data survives
        prep.prepare(str(corpus), root=root, vocab_size=300, force=True, log=lambda m: None)
    assert prep.data_ready(ready)
    assert json.loads((ready / "meta.json").read_text())["content_sha256"] == hash_before
    assert not [p for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_folder_of_text_files_is_prepared_and_rebuilt_when_edited(tmp_path: Path) -> None:
    corpus = tmp_path / "my corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    (corpus / "b.md").write_text("# Title\n\nSome *markdown* text, naïve café.\n" * 40)
    (corpus / "sub" / "c.py").write_text("def f(x):\n    return x + 1\n" * 40)
    (corpus / "ignored.bin").write_bytes(b"\xff\xfe binary")
    root = tmp_path / "data"
    out = prep.prepare(str(corpus), root=root, vocab_size=280, log=lambda m: None)
    meta = json.loads((out / "meta.json").read_text())
    assert out == root / "my-corpus"
    assert meta["source"]["kind"] == "folder"
    assert meta["documents"]["train"] + meta["documents"]["val"] == 3
    assert meta["vocab_size"] == 280

    (corpus / "a.txt").write_text("Edited text, a different corpus now.\n" * 40)
    messages: list[str] = []
    prep.prepare(str(corpus), root=root, vocab_size=280, log=messages.append)
    assert any("rebuilding" in m for m in messages)
    assert json.loads((out / "meta.json").read_text())["content_sha256"] != meta["content_sha256"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    corpus = tmp_path / "pq"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text\n")
    (corpus / "shard.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(prep.PrepareError, match="pyarrow"):
        prep.prepare(str(corpus), root=tmp_path / "data", log=lambda m: None)
    cli = subprocess.run(
        [sys.executable, "-m", "baseline.prepare", "--source", str(corpus),
         "--root", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert cli.returncode == 2
    assert "pyarrow" in cli.stderr and "Traceback" not in cli.stderr


def test_cli_prints_where_the_data_went(small_data: Path) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "baseline.prepare", "--max-bytes", "2000000",
         "--vocab-size", "512", "--root", str(small_data.parent)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == str(small_data)


def test_tokenizer_round_trips_any_text(small_data: Path) -> None:
    tokenizer = prep.Tokenizer.load(small_data / "tokenizer.json")
    text = "def naïve(x):\n\treturn x ** 2  # 日本語 😀\r\n\n    1_000_000 \x00 end"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges actually compress
    assert "".join(re.findall(prep.SPLIT_PATTERN, text)) == text


def test_bpe_training_is_deterministic() -> None:
    from collections import Counter

    counts = Counter(re.findall(prep.SPLIT_PATTERN, "aaab abab bbba the then them " * 20))
    first, second = prep.train_bpe(counts, 280), prep.train_bpe(Counter(dict(counts)), 280)
    assert first.merges == second.merges and first.id == second.id
    assert first.decode(first.encode("abab then")) == "abab then"


# --------------------------------------------------------------------------- train.py source


def test_hyperparameters_are_top_level_literals_at_reference_values() -> None:
    literals = top_level_literals(TRAIN_PY.read_text(encoding="utf-8"))
    values = {name: value for name, (_, value) in literals.items()}
    assert {n: values.get(n) for n in REFERENCE} == REFERENCE


def test_only_the_hyperparameters_are_top_level_literals_in_one_block() -> None:
    source = TRAIN_PY.read_text(encoding="utf-8")
    literals = top_level_literals(source)
    assert set(literals) == set(REFERENCE)  # anything else would look tunable
    lines = [line for line, _ in literals.values()]
    between = source.splitlines()[min(lines) - 1:max(lines)]
    assert all(
        not s.strip() or s.lstrip().startswith("#") or re.match(r"[A-Z_]+ = ", s)
        for s in between
    )
    assert 'SEED = int(os.environ.get("BILEVEL_SEED", "42"))' in source


def test_train_script_imports_nothing_from_the_project() -> None:
    tree = ast.parse(TRAIN_PY.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "contextlib", "json", "math", "os", "sys", "time",
                     "collections", "dataclasses", "pathlib", "numpy", "torch"}


def test_every_preset_names_real_constants() -> None:
    literals = top_level_literals(TRAIN_PY.read_text(encoding="utf-8"))
    assert PRESETS["reference"] == {}
    for overrides in PRESETS.values():
        for name, value in overrides.items():
            assert name in literals and type(value) is type(literals[name][1])


# --------------------------------------------------------------------------- train.py pieces


def test_flex_block_masks_match_the_cpu_boolean_masks(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch.nn.attention.flex_attention")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 32) for _ in range(3))
    attend = train_module.flex_attention_fn(compiled_model=True)  # eager: the reference path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for window in (37, 128, 256):
            flex = attend(q, k, v, train_module.window_block_mask(window, 256, cpu))
            plain = train_module.sdpa_attention(
                q, k, v, train_module.window_bool_mask(window, 256, cpu))
            assert torch.allclose(flex, plain, atol=1e-5)
    assert train_module.layer_windows(5, 2048, "SSSL") == [1024, 1024, 1024, 2048, 2048]
    assert train_module.layer_windows(3, 100, "S") == [50, 50, 100]


def test_val_bpb_scores_every_target_once(
    train_module: ModuleType, small_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    data = train_module.load_dataset(small_data)
    val = np.array(data.val[:1500])
    val[[0, 400, 401, 999]] = data.eot_id  # boundaries inside the scored range count 1 byte
    data.val = val
    eval_tokens = 1000
    table = np.array(data.token_bytes)
    table[data.eot_id] = 1
    expected = eval_tokens / (math.log(2) * table[val[1:eval_tokens + 1]].sum())  # 1 nat/token

    class OneNatPerToken(torch.nn.Module):
        def forward(self, x, y, masks):
            return torch.ones(y.shape)

    monkeypatch.setattr(train_module, "EVAL_TOKENS", eval_tokens)
    for seq_len, batch in ((128, 3), (300, 2), (1000, 1)):
        monkeypatch.setattr(train_module, "MAX_SEQ_LEN", seq_len)
        monkeypatch.setattr(train_module, "DEVICE_BATCH_SIZE", batch)
        bpb = train_module.evaluate_bpb(OneNatPerToken(), data, [], torch.device("cpu"),
                                        __import__("contextlib").nullcontext())
        assert bpb == pytest.approx(expected, rel=1e-12)


def test_lr_schedule_warms_down_linearly_to_the_final_fraction(train_module: ModuleType) -> None:
    lrm = train_module.lr_multiplier
    assert lrm(0.0) == 1.0 and lrm(0.49) == 1.0
    assert lrm(0.75) == pytest.approx(0.5) and lrm(1.0) == pytest.approx(0.0)


# --------------------------------------------------------------------------- train.py runs


@pytest.mark.slow
def test_cpu_tiny_run_prints_progress_then_a_summary_block(
    small_data: Path, tmp_path: Path
) -> None:
    run = run_script(write_script(tmp_path, TIME_BUDGET=3), small_data)
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) >= 3 and all(PROGRESS.match(line) for line in progress), run.stdout
    metrics = summary(run.stdout)
    assert list(metrics)[0] == "val_bpb"
    assert {"training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
            "total_tokens_M", "num_steps", "num_params_M", "depth"} <= set(metrics)
    assert 1.0 < float(metrics["val_bpb"]) < 10.0
    assert float(metrics["training_seconds"]) >= 3.0
    assert float(metrics["total_seconds"]) > float(metrics["training_seconds"])
    assert float(metrics["peak_vram_mb"]) == 0.0 and float(metrics["mfu_percent"]) == 0.0
    assert int(metrics["num_steps"]) >= 3 and metrics["depth"] == "2"


@pytest.mark.slow
def test_missing_data_exits_2_and_says_to_run_prepare(tmp_path: Path) -> None:
    run = run_script(write_script(tmp_path), tmp_path / "nowhere")
    assert run.returncode == 2
    assert "bilevel prepare" in run.stderr and "---" not in run.stdout


@pytest.mark.slow
def test_invalid_batch_configuration_exits_2(small_data: Path, tmp_path: Path) -> None:
    run = run_script(write_script(tmp_path, TOTAL_BATCH_SIZE=1000), small_data)
    assert run.returncode == 2
    assert "TOTAL_BATCH_SIZE" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_diverging_run_reports_nan_and_exits_3(small_data: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path, MATRIX_LR=1e6, EMBEDDING_LR=1e6, TIME_BUDGET=60)
    run = run_script(script, small_data, timeout=90)
    assert run.returncode == 3, run.stdout + run.stderr
    assert re.search(r"^loss is nan at step \d+, stopping$", run.stdout, flags=re.M)
    assert "---" not in run.stdout.splitlines()


@pytest.mark.slow
def test_seed_comes_from_the_environment(small_data: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path, TIME_BUDGET=0)  # just the two untimed steps

    def first_loss(seed: str) -> str:
        run = run_script(script, small_data, seed=seed)
        assert run.returncode == 0, run.stderr
        return re.search(r"^step 00000 .*?loss: (\S+)", run.stdout, flags=re.M).group(1)

    assert first_loss("1") == first_loss("1") != first_loss("2")

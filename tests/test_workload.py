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
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import baseline.prepare as prep
from baseline import bpe
from baseline.presets import PRESETS
from tests.support.patience import patience

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
    "EVAL_TOKENS": 40 * 2**19,  # the public eval: ~21M tokens
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
        capture_output=True, text=True, timeout=patience(timeout),
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


def test_second_prepare_is_cached(small_data: Path) -> None:
    meta_before = json.loads((small_data / "meta.json").read_text())
    messages: list[str] = []
    again = prep.prepare("stdlib", root=small_data.parent, max_bytes=2_000_000,
                         vocab_size=512, log=messages.append)
    assert again == small_data  # how fast the cache answers is bench/bench_deadlines.py's
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
    tokenizer = bpe.load_tokenizer(small_data / "tokenizer.json")
    record = json.loads((small_data / "tokenizer.json").read_text())
    val = np.fromfile(small_data / "val.bin", dtype=np.uint16).tolist()
    stdlib = prep.resolve_source("stdlib").root
    expected = "".join((stdlib / doc_id).read_bytes().decode("utf-8")
                       for doc_id in meta["split"]["val_documents"])
    assert tokenizer.decode(val) == expected
    assert sum(record["token_byte_lengths"][t] for t in val) == meta["bytes"]["val"]


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
    tokenizer = bpe.load_tokenizer(small_data / "tokenizer.json")
    text = "def naïve(x):\n\treturn x ** 2  # 日本語 😀\r\n\n    1_000_000 \x00 end"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges actually compress
    assert "".join(re.findall(prep.SPLIT_PATTERN, text)) == text


def test_bpe_training_is_deterministic_and_the_end_of_text_token_comes_last(tmp_path: Path) -> None:
    docs = ["aaab abab bbba the then them " * 20, "x = 1\n" * 10]
    first, second = (bpe.tokenizer_record(bpe.train_tokenizer(iter(docs), 280, prep.SPLIT_PATTERN, [prep.EOT_TOKEN]),
                                          prep.SPLIT_PATTERN, [prep.EOT_TOKEN]) for _ in range(2))
    assert first == second and first["vocab_size"] <= 280
    assert first["eot_id"] == first["vocab_size"] - 1 and first["token_byte_lengths"][first["eot_id"]] == 0
    (tmp_path / "tokenizer.json").write_text(json.dumps(first))
    tok = bpe.load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.decode(tok.encode("abab then", add_special_tokens=False).ids) == "abab then"


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
    assert roots <= {"__future__", "contextlib", "gc", "json", "math", "os", "sys", "time",
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
    # S attends the half context before the query and the query itself: 1025 keys at 2048.
    assert train_module.layer_windows(5, 2048, "SSSL") == [1025, 1025, 1025, 2048, 2048]
    assert train_module.layer_windows(3, 100, "S") == [51, 51, 100]


def test_val_bpb_scores_every_target_once(
    train_module: ModuleType, small_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    data = train_module.load_dataset(small_data)
    val = np.array(data.val[:1500])
    val[[0, 400, 401, 999]] = data.eot_id  # boundaries inside the scored range: not scored
    data.val = val
    eval_tokens = 1000
    table = np.array(data.token_bytes)
    targets = val[1:eval_tokens + 1]
    assert table[data.eot_id] == 0
    scored = int((targets != data.eot_id).sum())
    assert scored == eval_tokens - 3
    expected = scored / (math.log(2) * table[targets].sum())  # 1 nat per scored token

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


# --------------------------------------------------------------------------- the reference model


def test_reference_model_on_meta_has_50_3m_params_and_the_reference_optimizers(
    train_module: ModuleType,
) -> None:
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model = train_module.GPT(8192, 8, 512, 4, 128, 2048, train_module.sdpa_attention)
    assert sum(p.numel() for p in model.parameters()) == 50_332_176  # 50.3M
    assert sorted(model.value_embeds, key=int) == ["1", "3", "5", "7"]  # 4 x 8192 x 512: 16.8M
    assert sum(p.numel() for p in model.value_embeds.parameters()) == 4 * 8192 * 512
    assert [b.attn.ve_gate is not None for b in model.blocks] == [i % 2 == 1 for i in range(8)]
    assert model.blocks[1].attn.ve_gate.weight.shape == (4, 32)  # 32 channels -> one per head

    adam, muon = train_module.build_optimizers(model, 512, torch.device("cpu"))
    scale = (512 / 768) ** -0.5
    adam_groups = [(g["params"], g["lr"], g["betas"]) for g in adam.param_groups]
    assert adam_groups[0][0] == [model.lm_head.weight] and adam_groups[0][1] == pytest.approx(0.004 * scale)
    assert adam_groups[1][0] == [model.wte.weight] and adam_groups[1][1] == pytest.approx(0.6 * scale)
    assert adam_groups[2][0] == list(model.value_embeds.parameters())
    assert adam_groups[2][1] == pytest.approx(0.6 * scale)
    assert adam_groups[3][0] == [model.resid_lambdas] and adam_groups[3][1] == pytest.approx(0.005)
    assert adam_groups[4][0] == [model.x0_lambdas] and adam_groups[4][1] == 0.5
    assert adam_groups[4][2] == (0.96, 0.95) and adam_groups[0][2] == (0.8, 0.95)
    assert all(g["weight_decay"] == 0.0 and g["eps"] == 1e-10 for g in adam.param_groups)
    shapes = {tuple(g["params"][0].shape): len(g["params"]) for g in muon.param_groups}
    assert shapes == {(4, 32): 4, (512, 512): 32, (512, 2048): 8, (2048, 512): 8}
    for g in muon.param_groups:  # the block matrices, gates included, are Muon's
        assert (g["lr"], g["momentum"], g["weight_decay"], g["beta2"]) == (0.04, 0.85, 0.2, 0.95)
    owned = {id(p) for o in (adam, muon) for g in o.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}
    # 6 x the matmul weights (no lookups, no scalars) + 12 * heads * head_dim * keys per layer
    windows = train_module.layer_windows(8, 2048, "SSSL")
    assert train_module.flops_per_token(model, windows, 4) == 6 * 29_360_640 + 12 * 4 * 128 * (6 * 1025 + 2 * 2048)

    with torch.device("meta"):  # CUDA: bf16 embeddings, so a bf16 residual stream
        cuda_model = train_module.GPT(8192, 8, 512, 4, 128, 2048, train_module.sdpa_attention,
                                      embed_dtype=torch.bfloat16)
    assert cuda_model.wte.weight.dtype == torch.bfloat16
    assert {p.dtype for p in cuda_model.value_embeds.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in cuda_model.blocks.parameters()} == {torch.float32}
    assert model.wte.weight.dtype == torch.float32  # the CPU default


def test_value_embedding_gate_is_two_sigmoid_of_the_leading_channels(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    gate = torch.nn.Linear(32, 2, bias=False)
    torch.nn.init.zeros_(gate.weight)
    x = torch.randn(1, 3, 64)
    assert torch.equal(train_module.value_gate(x, gate), torch.ones(1, 3, 2))  # neutral at init
    with torch.no_grad():
        gate.weight[0, 0] = math.log(3)  # sigmoid(ln 3) = 3/4: head 0 weighs 1.5
        gate.weight[1, 31] = -math.log(3)  # head 1: 2 * 1/4 = 0.5
    x = torch.zeros(1, 1, 64)
    x[..., 0], x[..., 31], x[..., 32:] = 1.0, 1.0, 100.0  # channels past 32 are never read
    assert train_module.value_gate(x, gate).flatten().tolist() == pytest.approx([1.5, 0.5])

    attn = train_module.Attention(64, 2, 32, value_embed=True)
    torch.nn.init.zeros_(attn.ve_gate.weight)
    seen = {}
    attn_fn = lambda q, k, v, mask: seen.setdefault("v", v)  # noqa: E731
    rotary = train_module.Rotary(32, 4)
    ve = torch.randn(1, 4, 64)
    x = torch.randn(1, 4, 64)
    attn(x, ve, rotary, attn_fn, None)
    plain_v = attn.v(x).view(1, 4, 2, 32).transpose(1, 2)
    assert torch.allclose(seen["v"], plain_v + ve.view(1, 4, 2, 32).transpose(1, 2))


def test_polar_express_maps_singular_values_by_its_polynomials(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    g = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    s = [3.0 / (5.0 * 1.02 + 1e-6), 4.0 / (5.0 * 1.02 + 1e-6)]  # Frobenius norm 5, * 1.02
    a, b, c = train_module.PolarExpress.coefficients[0]
    one = train_module.polar_express(g, steps=1, dtype=torch.float64)
    assert one[0].diagonal().tolist() == pytest.approx([a * v + b * v**3 + c * v**5 for v in s])
    for a, b, c in train_module.PolarExpress.coefficients:
        s = [a * v + b * v**3 + c * v**5 for v in s]
    five = train_module.polar_express(g, dtype=torch.float64)
    assert five[0].diagonal().tolist() == pytest.approx(s, rel=1e-9)
    assert all(0.7 < v < 1.3 for v in s)  # close to the orthogonal factor (identity here)
    tall = torch.randn(1, 6, 3, dtype=torch.float64)  # the tall branch iterates on x^T x
    q = train_module.polar_express(tall, dtype=torch.float64)[0]
    assert torch.linalg.svdvals(q).min() > 0.6 and torch.linalg.svdvals(q).max() < 1.3


def test_normuon_equalises_row_rms_and_keeps_the_frobenius_norm(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    update = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]], dtype=torch.float64)
    variance = torch.zeros(1, 2, 1, dtype=torch.float64)
    out = train_module.normuon_scale(update, variance, torch.tensor(0.95), red_dim=-1)
    # Row mean squares 12.5 and 0.5; variance = 0.05 * those; each row scaled by
    # 1/sqrt(var) * sqrt(26)/sqrt(80): both rows end with mean square 6.5, total 26.
    assert variance.flatten().tolist() == pytest.approx([0.625, 0.025])
    factor = math.sqrt(26 / 80)
    assert out[0, 0].tolist() == pytest.approx([3 / math.sqrt(0.625) * factor, 4 / math.sqrt(0.625) * factor])
    assert out[0, 1].tolist() == pytest.approx([0.0, 1 / math.sqrt(0.025) * factor])
    assert out.square().mean(dim=-1).flatten().tolist() == pytest.approx([6.5, 6.5])


def test_cautious_weight_decay_only_where_update_and_weight_agree(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    params = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    update = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    train_module.cautious_decay_step(params, update, torch.tensor(0.1), torch.tensor(0.5))
    assert params.tolist() == pytest.approx([0.85, -1.1, 2.1, -1.8])


def test_muon_momentum_ramps_and_weight_decay_falls_to_zero(train_module: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    assert [train_module.muon_momentum(s) for s in (0, 150, 300, 5000)] == pytest.approx(
        [0.85, 0.90, 0.95, 0.95])
    assert [train_module.weight_decay_at(p) for p in (0.0, 0.25, 1.0)] == pytest.approx([0.2, 0.15, 0.0])
    model = train_module.GPT(64, 2, 64, 2, 32, 16, train_module.sdpa_attention)
    optimizers = train_module.build_optimizers(model, 64, torch.device("cpu"))
    lrm = train_module.apply_schedules(optimizers, step=150, progress=0.75)
    assert lrm == pytest.approx(0.5)
    muon = optimizers[1]
    assert all(g["momentum"] == pytest.approx(0.9) and g["weight_decay"] == pytest.approx(0.05)
               and g["lr"] == pytest.approx(0.02) for g in muon.param_groups)
    assert optimizers[0].param_groups[0]["betas"] == (0.8, 0.95)


def test_packed_rows_are_scored_one_window_per_row_without_special_tokens(
    train_module: ModuleType,
) -> None:
    torch = pytest.importorskip("torch")
    row, bos = 9, 0
    rows = np.array([[bos, 1, 2, 3, bos, 2, 2, 1, 3]] * 3, dtype=np.uint16)
    data = train_module.Dataset(path=Path("."), train=rows.ravel(), val=rows.ravel(), vocab_size=4,
                                eot_id=bos, token_bytes=[0, 1, 2, 3], dataset_id="x", row_tokens=row)

    class OneNatPerToken(torch.nn.Module):
        def forward(self, x, y, masks):
            return torch.ones(y.shape)

    import contextlib
    old = train_module.MAX_SEQ_LEN, train_module.EVAL_TOKENS, train_module.DEVICE_BATCH_SIZE
    try:
        train_module.MAX_SEQ_LEN, train_module.EVAL_TOKENS, train_module.DEVICE_BATCH_SIZE = 8, 16, 4
        bpb = train_module.evaluate_bpb(OneNatPerToken(), data, [], torch.device("cpu"),
                                        contextlib.nullcontext())
    finally:
        train_module.MAX_SEQ_LEN, train_module.EVAL_TOKENS, train_module.DEVICE_BATCH_SIZE = old
    # Two rows (16 // 8); targets 1 2 3 BOS 2 2 1 3: seven scored tokens of 14 bytes per row.
    assert bpb == pytest.approx(14 / (math.log(2) * 28))
    batches = train_module.TrainBatches(data.train, 8, 3, seed=0, device=torch.device("cpu"), row_tokens=row)
    x, y = batches.next()
    assert (x[:, 0] == bos).all() and batches.windows == 3  # every window starts a row


# --------------------------------------------------------------------------- train.py runs


@pytest.mark.slow
def test_cpu_tiny_run_prints_progress_then_a_summary_block(
    small_data: Path, tmp_path: Path
) -> None:
    run = run_script(write_script(tmp_path, TIME_BUDGET=3), small_data)
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stdout.splitlines() if line.startswith("step ")]
    assert progress and all(PROGRESS.match(line) for line in progress), run.stdout
    assert "(100.0%)" in progress[-1]  # the last step's line closes the budget
    metrics = summary(run.stdout)
    assert list(metrics)[0] == "val_bpb"
    assert {"training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
            "total_tokens_M", "num_steps", "num_params_M", "depth"} <= set(metrics)
    assert 1.0 < float(metrics["val_bpb"]) < 10.0
    assert float(metrics["training_seconds"]) >= 3.0
    assert float(metrics["total_seconds"]) > float(metrics["training_seconds"])
    assert float(metrics["peak_vram_mb"]) == 0.0 and float(metrics["mfu_percent"]) == 0.0
    # no untimed steps on the CPU (throwaway steps warm up): every step is in the budget
    assert int(metrics["num_steps"]) >= 1 and metrics["depth"] == "2"


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
    script = write_script(tmp_path, TIME_BUDGET=0)  # one step

    def first_loss(seed: str) -> str:
        run = run_script(script, small_data, seed=seed)
        assert run.returncode == 0, run.stderr
        return re.search(r"^step 00000 .*?loss: (\S+)", run.stdout, flags=re.M).group(1)

    assert first_loss("1") == first_loss("1") != first_loss("2")

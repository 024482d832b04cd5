"""The reference data path against a local server on 127.0.0.1: shards the test makes,
a transfer cut halfway that resumes, a corrupt shard that is refused, best-fit rows that
train.py reads."""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("tokenizers")

import baseline.climbmix as cm  # noqa: E402
import baseline.prepare as prep  # noqa: E402
from tests.test_workload import run_script, summary, write_script  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jumbo pancakes; numbers 12 345 and 2026 appear, naïve café déjà vu").split()


def make_shard(path: Path, docs: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 60)))) + "." for _ in range(docs)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=50)
    return path.read_bytes()


class ShardServer:
    """Serves ``files``; HEAD announces size and sha256 (ETag) like the real host.

    ``cut``: names whose first GET stops halfway (``broken``: every GET); ``corrupt``: names served with a byte
    flipped while the ETag keeps the true sha256. ``requests`` logs (method, name, Range).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut, self.broken, self.corrupt = files, set(), set(), set()
        self.requests: list[tuple[str, str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002
                pass

            def _name(self) -> str | None:
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                    return None
                return name

            def do_HEAD(self) -> None:
                name = self._name()
                if name is None:
                    return
                server.requests.append(("HEAD", name, ""))
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.end_headers()

            def do_GET(self) -> None:
                name = self._name()
                if name is None:
                    return
                rng = self.headers.get("Range", "")
                server.requests.append(("GET", name, rng))
                body = server.files[name]
                if name in server.corrupt:
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if name in server.cut or name in server.broken:
                    server.cut.discard(name)
                    self.wfile.write(body[start:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/climbmix/resolve/main"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[ShardServer]:
    made = tmp_path / "made"
    made.mkdir()
    files = {cm.shard_name(0): make_shard(made / "a.parquet", 400, 1),
             cm.shard_name(cm.VAL_SHARD): make_shard(made / "v.parquet", 120, 2)}
    server = ShardServer(files)
    yield server
    server.close()


def small(server: ShardServer, root: Path, **kw: object) -> Path:
    return cm.prepare_climbmix(root=root, num_shards=1, base_url=server.url, vocab_size=300, row_tokens=65,
                               eval_tokens=64 * 5, log=lambda m: None, **kw)


def test_a_cut_download_resumes_with_a_range_request_and_is_packed_in_bos_rows(
        shards: ShardServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    shards.cut.add(cm.shard_name(0))
    half = len(shards.files[cm.shard_name(0)]) // 2
    out = small(shards, tmp_path / "data")
    gets = [(n, r) for m, n, r in shards.requests if m == "GET" and n == cm.shard_name(0)]
    assert gets == [(cm.shard_name(0), ""), (cm.shard_name(0), f"bytes={half}-")]
    cached = tmp_path / "data" / "climbmix-shards" / cm.shard_name(0)
    assert cached.read_bytes() == shards.files[cm.shard_name(0)]
    assert not list(cached.parent.glob("*.part"))
    assert "shard_00000.parquet [" in capfd.readouterr().err  # the progress bar

    meta = json.loads((out / "meta.json").read_text())
    assert prep.data_ready(out) and meta["row_tokens"] == 65 and meta["vocab_size"] == 300
    assert meta["rows"]["val"] == 5  # EVAL_TOKENS // MAX_SEQ_LEN rows: the eval's size
    assert meta["source"]["shard_sha256"][cm.shard_name(0)] == hashlib.sha256(cached.read_bytes()).hexdigest()
    record = json.loads((out / "tokenizer.json").read_text())  # JSON: nothing in it can run
    bos = record["bos_id"]
    assert record["vocab_size"] == 300 and bos == 296 and record["eot_id"] == bos
    assert [record["token_byte_lengths"][i] for i in range(296, 300)] == [0, 0, 0, 0]
    rows = np.fromfile(out / "train.bin", dtype=np.uint16).reshape(-1, 65)
    assert len(rows) == meta["rows"]["train"] and (rows[:, 0] == bos).all()  # every row starts a document
    tok = cm.load_tokenizer(out / "tokenizer.json")
    text = "The quick brown fox, naïve café 2026!"
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text

    again: list[str] = []
    assert cm.prepare_climbmix(root=tmp_path / "data", num_shards=1, base_url=shards.url, vocab_size=300,
                               row_tokens=65, eval_tokens=64 * 5, log=again.append) == out
    assert any("cached" in m for m in again)


@pytest.mark.slow
def test_train_py_trains_and_scores_on_the_packed_rows(shards: ShardServer, tmp_path: Path) -> None:
    out = small(shards, tmp_path / "data")
    script = write_script(tmp_path, MAX_SEQ_LEN=64, TIME_BUDGET=1, EVAL_TOKENS=64 * 5, TOTAL_BATCH_SIZE=2**10)
    run = run_script(script, out, timeout=240)
    assert run.returncode == 0, run.stderr
    assert 0 < float(summary(run.stdout)["val_bpb"]) < 20
    wrong = write_script(tmp_path, MAX_SEQ_LEN=128, TIME_BUDGET=1, EVAL_TOKENS=128 * 5)
    refused = run_script(wrong, out, timeout=240)  # rows of 65 cannot hold a 128-token window
    assert refused.returncode == 2 and "packed in rows of 65 tokens" in refused.stderr


def test_a_part_left_by_an_earlier_run_is_resumed_with_a_range_request(shards: ShardServer, tmp_path: Path) -> None:
    name = cm.shard_name(0)
    body = shards.files[name]
    dest = tmp_path / "cache" / name
    dest.parent.mkdir()
    dest.with_name(name + ".part").write_bytes(body[:1000])  # what a killed `bilevel prepare` leaves
    assert cm.download(f"{shards.url}/{name}", dest, log=lambda m: None) == dest
    assert [r for m, n, r in shards.requests if m == "GET"] == ["bytes=1000-"]
    assert dest.read_bytes() == body and not dest.with_name(name + ".part").exists()


def test_a_transfer_that_keeps_breaking_gives_up_after_five_attempts_and_keeps_its_part(
        shards: ShardServer, tmp_path: Path) -> None:
    name = cm.shard_name(0)
    shards.broken.add(name)
    pauses: list[float] = []
    said: list[str] = []
    with pytest.raises(prep.PrepareError, match=r"shard_00000.parquet: download failed after 5 attempts: "
                                                r"connection closed after 0 of"):
        cm.download(f"{shards.url}/{name}", tmp_path / name, log=said.append, sleep=pauses.append)
    assert pauses == [0.5, 1.0, 1.5, 2.0]  # between attempts, never after the last
    half = len(shards.files[name]) // 2
    assert [r for m, n, r in shards.requests if m == "GET"] == [""] + [f"bytes={half}-"] * 4
    assert len(said) == 4 and said[0].startswith(f"shard_00000.parquet: attempt 1/5 stopped at {half:,} bytes")
    assert (tmp_path / (name + ".part")).stat().st_size == half  # the next run resumes from here
    assert not (tmp_path / name).exists()


def test_a_corrupt_shard_is_refused_and_not_kept(shards: ShardServer, tmp_path: Path) -> None:
    shards.corrupt.add(cm.shard_name(cm.VAL_SHARD))
    with pytest.raises(prep.PrepareError, match=r"shard_06542.parquet: refused: sha256 .* does not match"):
        small(shards, tmp_path / "data")
    cache = tmp_path / "data" / "climbmix-shards"
    assert sorted(p.name for p in cache.iterdir()) == [cm.shard_name(0)]  # the good one stays
    assert not (tmp_path / "data" / "climbmix").exists()


def test_best_fit_packing_takes_the_largest_document_that_fits_then_crops_the_shortest() -> None:
    docs = [[0] + [1] * 5, [0] + [2] * 4, [0] + [3] * 3, [0] + [4] * 2, [0] + [5] * 6]
    # lengths 6, 5, 4, 3, 7 into rows of 10
    rows = list(cm.pack_rows(docs, 10, buffer_docs=10))
    assert rows[0] == [0, 5, 5, 5, 5, 5, 5] + [0, 4, 4]  # 7, then the 3 that fills the row
    assert rows[1] == [0, 1, 1, 1, 1, 1] + [0, 3, 3, 3]  # 6, then 4
    assert len(rows) == 2  # the 5 alone is not a full row: dropped
    cropped = list(cm.pack_rows([[0, 1, 1, 1, 1, 1, 1, 1], [0, 2, 2, 2, 2, 2, 2, 2, 2, 2]], 6, buffer_docs=10))
    assert cropped == [[0, 1, 1, 1, 1, 1], [0, 2, 2, 2, 2, 2]]  # nothing fits: the shortest is cropped
    ties = list(cm.pack_rows([[0, 7], [0, 8], [0, 9]], 2, buffer_docs=10))
    assert ties == [[0, 7], [0, 8], [0, 9]]  # equal lengths: the earliest first, as the public scan


def test_bilevel_prepare_source_climbmix_prints_where_the_data_went(shards: ShardServer, tmp_path: Path) -> None:
    from tests.support.cli import run_bilevel

    done = run_bilevel("prepare", "--source", "climbmix", "--num-shards", "1", "--base-url", shards.url,
                       "--vocab-size", "300", cwd=tmp_path, env={"BILEVEL_DATA_ROOT": str(tmp_path / "root")})
    assert done.returncode == 0, done.stderr
    out = Path(done.stdout.strip())
    assert out == tmp_path / "root" / "climbmix" and prep.data_ready(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["row_tokens"] == 2049 and meta["source"]["train_shards"] == [cm.shard_name(0)]
    assert "shard_06542.parquet [" in done.stderr

"""The reference data: ClimbMix parquet shards, as the public autoresearch pipeline uses them.

``bilevel prepare --source climbmix`` (or ``data.source = "climbmix"``):

1. downloads ``shard_00000.parquet`` … (``--num-shards``) and the pinned validation shard
   ``shard_06542.parquet`` over HTTP into a shared shard cache, resuming a cut transfer
   with a Range request and refusing a shard whose size or sha256 (from the server's
   ``X-Linked-Size``/``X-Linked-Etag`` or ``ETag`` headers, where it sends them) does not
   match; a progress bar goes to stderr;
2. trains a byte-level BPE of 8192 ids (8188 merges' worth plus 4 reserved special tokens,
   the first of which is BOS) with the ``tokenizers`` library, on the public split pattern,
   and stores it as JSON, a format that cannot run code (the public pickle can);
3. packs documents into rows of ``MAX_SEQ_LEN + 1`` tokens the way the public loader does:
   every document starts with BOS, each row takes the largest buffered document that
   still fits, and when none fits the shortest one is cropped to fill the row;
4. writes the training rows and a validation set of the public eval size
   (``EVAL_TOKENS // MAX_SEQ_LEN`` rows, ~21M tokens) as uint16 ``train.bin``/``val.bin``
   with ``row_tokens`` in ``meta.json``, which ``train.py`` then reads one row per window.

The server is ``$BILEVEL_CLIMBMIX_URL`` or ``--base-url`` when set (tests use a local one). The download is
ours, not ``huggingface_hub``'s: hf_hub_download checks the size but never the sha256, and deletes a cut
transfer's partial file, so a later run cannot resume it; retries go through tenacity.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_incrementing
from tokenizers import Tokenizer

from baseline import bpe
from baseline.bpe import load_tokenizer  # noqa: F401 - the tests' and users' way to read the record
from baseline.dataset_folder import (FORMAT, FORMAT_VERSION, Log, PrepareError, data_ready, data_root, exclusive,
                                     read_meta, staging, write_json)

BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
VAL_SHARD = 6542  # the last shard, pinned for validation as in the public pipeline
DEFAULT_NUM_SHARDS = 10
VOCAB_SIZE = 8192
SPECIAL_TOKENS = tuple(f"<|reserved_{i}|>" for i in range(4))
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4 style split with \p{N}{1,2} instead of {1,3}: the public pipeline's pattern.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
ROW_TOKENS = 2048 + 1  # MAX_SEQ_LEN + 1: a row gives the inputs and the shifted targets
EVAL_TOKENS = 40 * 2**19  # the public eval size; val.bin holds EVAL_TOKENS // (ROW_TOKENS - 1) rows
TOKENIZER_MAX_CHARS = 1_000_000_000  # text the merges are learned from (the public default)
DOC_CAP_CHARS = 10_000  # longer documents are cut for tokenizer training only
PACK_BUFFER_DOCS = 1000  # documents the best-fit packer chooses from
MAX_ATTEMPTS = 5
RETRY_PAUSE_S = 0.5
CHUNK_BYTES = 1 << 20


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_cache() -> Path:
    return data_root() / "climbmix-shards"


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class RemoteFile:
    size: int | None
    sha256: str | None


def _remote_info(url: str, timeout: float) -> RemoteFile:
    """Size and sha256 the server vouches for (HF: X-Linked-Size / X-Linked-Etag on the redirect)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, method="HEAD")
    try:
        response = opener.open(request, timeout=timeout)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        headers = exc.headers
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip().strip('"').removeprefix("W/").strip('"')
    return RemoteFile(int(size) if size and size.isdigit() else None,
                      etag.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", etag) else None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    """One self-overwriting line on stderr: name, bytes, percent, rate."""

    def __init__(self, name: str, total: int | None, done: int, stream=None) -> None:  # noqa: ANN001
        self.name, self.total, self.done = name, total, done
        self.stream = stream if stream is not None else sys.stderr
        self.started, self.start_done, self.last = time.monotonic(), done, 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            self.draw()

    def draw(self, end: str = "") -> None:
        rate = (self.done - self.start_done) / max(time.monotonic() - self.started, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            text = f"\r{self.name} [{bar}] {frac * 100:5.1f}% {self.done / 2**20:.1f}/{self.total / 2**20:.1f} MiB"
        else:
            text = f"\r{self.name} {self.done / 2**20:.1f} MiB"
        self.stream.write(f"{text} {rate / 2**20:.1f} MiB/s{end}")
        self.stream.flush()


def download(url: str, dest: Path, *, timeout: float = 60.0, log: Log = print,
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch ``url`` into ``dest``: resumes a ``.part`` left by a cut transfer (Range), this run's or
    an earlier one's, retries, and keeps the file only if its size and sha256 match what the server
    vouches for."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    info = _remote_info(url, timeout)

    def note(state: RetryCallState) -> None:
        log(f"{dest.name}: attempt {state.attempt_number}/{MAX_ATTEMPTS} stopped at "
            f"{part.stat().st_size if part.exists() else 0:,} bytes ({state.outcome.exception()}); resuming")

    # The project's one retry library (the LLM client's too); pauses of 0.5 s, 1 s, 1.5 s, ...
    retrying = Retrying(stop=stop_after_attempt(MAX_ATTEMPTS), wait=wait_incrementing(RETRY_PAUSE_S, RETRY_PAUSE_S),
                        retry=retry_if_exception_type((urllib.error.URLError, OSError, ValueError)),
                        before_sleep=note, sleep=sleep, reraise=True)
    try:
        retrying(_resume, url, part, info, timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrepareError(f"{dest.name}: download failed after {MAX_ATTEMPTS} attempts: {exc}") from exc
    _verify(part, dest.name, info)
    os.replace(part, dest)
    return dest


def _resume(url: str, part: Path, info: RemoteFile, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    if info.size is not None and have > info.size:
        part.unlink()
        have = 0
    if info.size is None or have < info.size:
        _fetch_into(url, part, have, info.size, timeout)


def _fetch_into(url: str, part: Path, have: int, size: int | None, timeout: float) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"  # a server that ignores Range sends it all again
        progress = _Progress(part.name.removesuffix(".part"), size, have if resumed else 0)
        expected = response.headers.get("Content-Length")
        got = 0
        with open(part, mode) as f:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                got += len(chunk)
                progress.add(len(chunk))
        progress.draw(end="\n")
        if expected is not None and got < int(expected):
            raise ValueError(f"connection closed after {got:,} of {int(expected):,} bytes")


def _verify(part: Path, name: str, info: RemoteFile) -> None:
    size = part.stat().st_size
    if info.size is not None and size != info.size:
        part.unlink()
        raise PrepareError(f"{name}: refused: {size:,} bytes where the server announced {info.size:,}")
    if info.sha256 is not None:
        digest = _sha256(part)
        if digest != info.sha256:
            part.unlink()
            raise PrepareError(f"{name}: refused: sha256 {digest} does not match the server's {info.sha256} "
                               "(a corrupt or substituted shard)")


# --------------------------------------------------------------------------- tokenizer


def _documents(paths: Iterable[Path]) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PrepareError("reading parquet shards needs pyarrow: pip install 'bilevel-autoresearch[data]'") from exc
    for path in paths:
        pf = pq.ParquetFile(path)
        for group in range(pf.num_row_groups):
            yield from (t for t in pf.read_row_group(group, columns=["text"]).column("text").to_pylist() if t)


def _capped(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for doc in docs:
        doc = doc[:DOC_CAP_CHARS]
        yield doc
        seen += len(doc)
        if seen >= max_chars:
            return


def train_tokenizer(docs: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` ids, the special tokens last (BOS first of them)."""
    return bpe.train_tokenizer(docs, vocab_size, SPLIT_PATTERN, SPECIAL_TOKENS)


def tokenizer_record(tok: Tokenizer) -> dict:
    return bpe.tokenizer_record(tok, SPLIT_PATTERN, SPECIAL_TOKENS)


# --------------------------------------------------------------------------- packing


def pack_rows(docs: Iterable[list[int]], row_tokens: int, buffer_docs: int = PACK_BUFFER_DOCS) -> Iterator[list[int]]:
    """Best-fit packing, as the public loader: each row takes the largest buffered document
    that fits the space left (the earliest of equals); when none fits, the shortest is
    cropped to fill the row and its rest dropped. Rows stop when the documents run out
    (a last partial row is dropped)."""
    source = iter(docs)
    keys: list[tuple[int, int]] = []  # (length, arrival) sorted; arrival breaks ties like the public scan
    store: dict[int, list[int]] = {}
    arrival = itertools.count()
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(keys) < buffer_docs:
            doc = next(source, None)
            if doc is None:
                exhausted = True
                return
            n = next(arrival)
            store[n] = doc
            bisect.insort(keys, (len(doc), n))

    while True:
        row: list[int] = []
        while len(row) < row_tokens:
            refill()
            if not keys:
                return
            space = row_tokens - len(row)
            i = bisect.bisect_right(keys, (space, float("inf"))) - 1
            if i >= 0:
                i = bisect.bisect_left(keys, (keys[i][0], -1))  # earliest of that length
                row.extend(store.pop(keys.pop(i)[1]))
            else:
                row.extend(store.pop(keys.pop(0)[1])[:space])
        yield row


def _encoded(tok, texts: Iterable[str], bos: int, batch: int = 256) -> Iterator[list[int]]:  # noqa: ANN001
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, batch)):
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            yield [bos, *enc.ids]


def _write_rows(path: Path, rows: Iterable[list[int]], limit: int | None = None) -> int:
    count = 0
    with open(path, "wb") as f:
        for row in rows:
            np.asarray(row, dtype=np.uint16).tofile(f)
            count += 1
            if limit is not None and count >= limit:
                break
        f.flush()
        os.fsync(f.fileno())
    return count


# --------------------------------------------------------------------------- the dataset


def prepare_climbmix(
    *,
    name: str | None = None,
    root: Path | None = None,
    num_shards: int | None = None,
    base_url: str | None = None,
    vocab_size: int | None = None,
    tokenizer_max_chars: int = TOKENIZER_MAX_CHARS,
    row_tokens: int = ROW_TOKENS,
    eval_tokens: int = EVAL_TOKENS,
    force: bool = False,
    log: Log = print,
) -> Path:
    """Download, train the tokenizer, pack, and return the dataset folder (cached)."""
    root = Path(root).expanduser() if root is not None else data_root()
    name = name or "climbmix"
    num_shards = DEFAULT_NUM_SHARDS if num_shards is None else int(num_shards)
    if not 1 <= num_shards <= VAL_SHARD:
        raise PrepareError(f"--num-shards must be in 1..{VAL_SHARD}")
    vocab_size = VOCAB_SIZE if vocab_size is None else int(vocab_size)
    if not 256 + len(SPECIAL_TOKENS) < vocab_size <= 2**16:
        raise PrepareError(f"vocab_size must be in {257 + len(SPECIAL_TOKENS)}..{2**16} (uint16 ids)")
    base_url = (base_url or os.environ.get("BILEVEL_CLIMBMIX_URL") or BASE_URL).rstrip("/")
    cache = root / "climbmix-shards"
    train_names = [shard_name(i) for i in range(num_shards)]
    val_name = shard_name(VAL_SHARD)
    paths = {n: download(f"{base_url}/{n}", cache / n, log=log) for n in [*train_names, val_name]}
    shard_hashes = {n: _sha256(p) for n, p in paths.items()}
    settings = {"format_version": FORMAT_VERSION, "vocab_size": vocab_size, "row_tokens": row_tokens,
                "eval_tokens": eval_tokens, "tokenizer_max_chars": tokenizer_max_chars,
                "split_pattern": SPLIT_PATTERN, "shards": shard_hashes}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root, name):
        if not force and data_ready(target) and read_meta(target).get("fingerprint") == fingerprint:
            log(f"data ready (cached) at {target}")
            return target
        started = time.perf_counter()
        with staging(target) as stage:
            log(f"training a {vocab_size}-id tokenizer on up to {tokenizer_max_chars:,} characters")
            train_paths = [paths[n] for n in train_names]
            tok = train_tokenizer(_capped(_documents(train_paths), tokenizer_max_chars), vocab_size)
            record = tokenizer_record(tok)
            write_json(stage / "tokenizer.json", record)
            bos = record["bos_id"]
            log("packing training rows")
            train_rows = _write_rows(stage / "train.bin", pack_rows(_encoded(tok, _documents(train_paths), bos),
                                                                    row_tokens))
            val_limit = max(1, eval_tokens // (row_tokens - 1))
            val_rows = _write_rows(stage / "val.bin", pack_rows(_encoded(tok, _documents([paths[val_name]]), bos),
                                                                row_tokens), limit=val_limit)
            if not train_rows or not val_rows:
                raise PrepareError(f"the shards hold too little text for one row of {row_tokens} tokens")
            write_json(stage / "meta.json", {
                "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "fingerprint": fingerprint,
                "dataset_id": f"climbmix-{fingerprint[:16]}", "content_sha256": fingerprint,
                "source": {"kind": "climbmix", "base_url": base_url, "train_shards": train_names,
                           "val_shard": val_name, "shard_sha256": shard_hashes},
                "tokenizer_id": record["id"], "vocab_size": record["vocab_size"], "eot_id": bos, "bos_id": bos,
                "row_tokens": row_tokens, "rows": {"train": train_rows, "val": val_rows},
                "tokens": {"train": train_rows * row_tokens, "val": val_rows * row_tokens},
                "layout": "uint16 rows of row_tokens ids; every document starts with bos_id; best-fit packed",
                "val_target": {"eval_tokens": eval_tokens, "rows": val_limit},
            })
        log(f"prepared {target} in {time.perf_counter() - started:.1f}s: {train_rows:,} train rows, "
            f"{val_rows:,} val rows of {row_tokens} tokens"
            + ("" if val_rows >= val_limit else f" (the val shard fills {val_rows} of the {val_limit} the eval uses)"))
    return target

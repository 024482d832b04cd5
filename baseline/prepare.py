"""Data preparation for the training workload: a corpus, a byte-level BPE tokenizer, and
train/val token shards, built once and cached.

A prepared dataset is a folder ``DATA_ROOT/<name>/`` holding

- ``train.bin``, ``val.bin``: uint16 token ids; every document is preceded by the
  end-of-text token, so documents are separated by it;
- ``tokenizer.json``: a byte-level BPE trained with ``tokenizers`` (:mod:`baseline.bpe`: the
  library's JSON plus the split pattern and per-token byte lengths train.py reads);
- ``meta.json``: where the text came from and what exactly was used (content hash over
  document ids and bytes, byte and token counts, the split rule, the tokenizer id), so
  runs on different corpora are never compared.

Sources are ``stdlib`` (the installed Python standard library's ``.py`` files: on every
machine, no download) or a folder of ``.txt``/``.md``/``.py`` files and ``.parquet`` files
with a ``text`` column. Corpus, tokenizer trainer and shard writer are one pipeline under one
cache key (the reference download is :mod:`baseline.climbmix`; the folder both write is
:mod:`baseline.dataset_folder`).

Caching: a dataset is reused when its *listing fingerprint* matches -- a hash of the source
files' paths, sizes and modification times plus every preparation setting. That costs one
``stat`` per file, so a re-run is instant even for a large user corpus, and any edit to a
file (which changes its size or mtime) triggers a rebuild. The full content hash is still
computed while building and recorded in ``meta.json``; it is what identifies the data.

Writes are atomic: everything is built in a hidden temporary folder that is renamed into
place only when complete, so an interrupted preparation never leaves a folder that looks
ready.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from tokenizers import Tokenizer

from baseline import bpe

# The folder helpers are shared with baseline/climbmix.py; the names stay importable from here.
from baseline.dataset_folder import (FORMAT, FORMAT_VERSION, Log, PrepareError, data_ready, data_root, exclusive,
                                     read_meta, staging, write_json)


DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MAX_BYTES = {"stdlib": 24_000_000, "folder": 256_000_000}
# Fraction of documents (chosen by a hash of the document id) held out for validation.
VAL_FRACTION = 0.02
# Bytes of training text the BPE merges are learned from: enough for stable merges,
# small enough that training them takes seconds on two cores.
BPE_SAMPLE_BYTES = 3_000_000

# Precedes every document; the last id (after the 256 bytes and the merges).
EOT_TOKEN = "<|endoftext|>"
MIN_VOCAB_SIZE = 256 + 1

# GPT-style pre-split, written for Python's `re` (no \p{..} classes): words made of
# letters/underscore with one optional leading non-word char (" self", ".append"),
# numbers of up to 3 digits, punctuation runs, and whitespace runs that leave the last
# space to the next word. Every character falls in exactly one class, so the chunks
# always concatenate back to the input. The tokenizers library reads it as Oniguruma does.
SPLIT_PATTERN = r"""[^\r\n\w]?[^\W\d]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

TEXT_SUFFIXES = (".txt", ".md", ".py")
PARQUET_SUFFIX = ".parquet"
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)

# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceFile:
    path: Path
    rel: str  # posix path relative to the source root: the document id
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Source:
    kind: str  # "stdlib" | "folder"
    root: Path
    description: str
    default_name: str
    files: tuple[SourceFile, ...]

    def fingerprint(self, settings: dict[str, object]) -> str:
        listing = [[f.rel, f.size, f.mtime_ns] for f in self.files]
        blob = json.dumps(
            {"kind": self.kind, "root": str(self.root), "listing": listing, **settings},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    nbytes: int


def resolve_source(source: str) -> Source:
    """``"stdlib"`` or a folder path -> a Source with its sorted file listing."""
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _list_files(root, (".py",))
        description = f"Python {sys.version.split()[0]} standard library at {root}"
        return Source("stdlib", root, description, "stdlib", files)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise PrepareError(f"source {source!r} is neither 'stdlib' nor an existing folder")
    root = root.resolve()
    files = _list_files(root, TEXT_SUFFIXES + (PARQUET_SUFFIX,))
    if not files:
        raise PrepareError(f"no .txt, .md, .py or .parquet files under {root}")
    parquet = next((f for f in files if f.rel.endswith(PARQUET_SUFFIX)), None)
    if parquet is not None:
        _import_parquet(parquet)  # fail before reading anything else
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip(".-") or "corpus"
    return Source("folder", root, f"folder {root}", name, files)


def _list_files(root: Path, suffixes: tuple[str, ...]) -> tuple[SourceFile, ...]:
    found: list[SourceFile] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(suffixes):
                continue
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                found.append(SourceFile(path, rel, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: f.rel)
    return tuple(found)


def iter_documents(source: Source) -> Iterator[Document]:
    """Every document of the source in a fixed order; undecodable text files are skipped."""
    for file in source.files:
        if file.rel.endswith(PARQUET_SUFFIX):
            yield from _parquet_documents(file)
            continue
        try:
            text = file.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            yield Document(file.rel, text, len(text.encode("utf-8")))


def _import_parquet(file: SourceFile) -> ModuleType:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(
            f"{file.rel} is a .parquet file; reading it needs the 'pyarrow' package "
            "(pip install pyarrow), or remove .parquet files from the folder"
        ) from None
    return pq


def _parquet_documents(file: SourceFile) -> Iterator[Document]:
    parquet = _import_parquet(file).ParquetFile(file.path)
    if "text" not in parquet.schema_arrow.names:
        raise PrepareError(f"{file.rel} has no 'text' column")
    row = 0
    for batch in parquet.iter_batches(columns=["text"]):
        for value in batch.column(0).to_pylist():
            if value:
                yield Document(f"{file.rel}#{row}", value, len(value.encode("utf-8")))
            row += 1


# --------------------------------------------------------------------------- split


def _unit_hash(salt: str, doc_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """Deterministic held-out split by a hash of each document id.

    A document is held out when its hash falls below VAL_FRACTION, so membership never
    depends on which other documents exist. Small corpora that draw no (or only)
    held-out documents hold out the single lowest-hash document instead.
    """
    if len(docs) < 2:
        raise PrepareError(f"need at least 2 documents to hold one out, found {len(docs)}")
    scores = [_unit_hash("val", d.id) for d in docs]
    held = {i for i, s in enumerate(scores) if s < VAL_FRACTION}
    if not held or len(held) == len(docs):
        held = {min(range(len(docs)), key=scores.__getitem__)}
    train = [d for i, d in enumerate(docs) if i not in held]
    val = [d for i, d in enumerate(docs) if i in held]
    return train, val


def bpe_sample(train: list[Document], sample_bytes: int) -> list[Document]:
    """A deterministic spread of training documents, about ``sample_bytes`` in size."""
    ordered = sorted(train, key=lambda d: _unit_hash("bpe", d.id))
    sample: list[Document] = []
    total = 0
    for doc in ordered:
        if total >= sample_bytes:
            break
        sample.append(doc)
        total += doc.nbytes
    return sample


# --------------------------------------------------------------------------- build


def prepare(
    source: str = "stdlib",
    *,
    name: str | None = None,
    root: Path | None = None,
    max_bytes: int | None = None,
    vocab_size: int | None = None,
    force: bool = False,
    log: Log = print,
    num_shards: int | None = None,
    base_url: str | None = None,
) -> Path:
    """Build (or reuse) the dataset for ``source`` and return its folder.

    ``source = "climbmix"`` is the reference data (see baseline/climbmix.py; ``num_shards``
    and ``base_url`` apply to it only, ``max_bytes`` does not).
    """
    if source == "climbmix":
        from baseline.climbmix import prepare_climbmix

        return prepare_climbmix(name=name, root=root, num_shards=num_shards, base_url=base_url,
                                vocab_size=vocab_size, force=force, log=log)
    src = resolve_source(source)
    name = name or src.default_name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise PrepareError(f"dataset name {name!r}: use letters, digits, '_', '-', '.'")
    root = Path(root).expanduser() if root is not None else data_root()
    max_bytes = DEFAULT_MAX_BYTES[src.kind] if max_bytes is None else int(max_bytes)
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else int(vocab_size)
    if max_bytes <= 0:
        raise PrepareError("max_bytes must be positive")
    if not MIN_VOCAB_SIZE <= vocab_size <= 2**16:
        raise PrepareError(f"vocab_size must be in {MIN_VOCAB_SIZE}..{2**16} (uint16 ids)")

    settings = {
        "format_version": FORMAT_VERSION,
        "max_bytes": max_bytes,
        "vocab_size": vocab_size,
        "val_fraction": VAL_FRACTION,
        "bpe_sample_bytes": BPE_SAMPLE_BYTES,
        "split_pattern": SPLIT_PATTERN,
        "tokenizer": bpe.RECORD_FORMAT,  # a dataset of the hand-written BPE before it is rebuilt
    }
    fingerprint = src.fingerprint(settings)
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root, name):
        if not force and data_ready(target) and read_meta(target).get("fingerprint") == fingerprint:
            log(f"data ready (cached) at {target}")
            return target
        if target.exists():
            log(f"rebuilding {target} ({'forced' if force else 'source or settings changed'})")
        _build(src, target, fingerprint, max_bytes, vocab_size, log)
    return target


def _build(
    src: Source, target: Path, fingerprint: str, max_bytes: int, vocab_size: int, log: Log
) -> None:
    started = time.perf_counter()
    docs, content_sha256 = _read_capped(src, max_bytes)
    if not docs:
        raise PrepareError(f"no readable UTF-8 text in {src.description}")
    total = sum(d.nbytes for d in docs)
    log(f"read {len(docs)} documents, {total / 1e6:.1f} MB from {src.description}")
    train_docs, val_docs = split_documents(docs)

    sample = bpe_sample(train_docs, BPE_SAMPLE_BYTES)
    record, tokenizer = _train_tokenizer(sample, vocab_size, log)
    train_ids = _encode_documents(tokenizer, record["eot_id"], train_docs)
    val_ids = _encode_documents(tokenizer, record["eot_id"], val_docs)
    log(f"encoded {len(train_ids):,} train and {len(val_ids):,} val tokens")

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": target.name,
        "source": {"kind": src.kind, "path": str(src.root), "description": src.description},
        "fingerprint": fingerprint,
        "content_sha256": content_sha256,
        "content_hash_rule": "sha256 over documents in order: utf-8 id, NUL, "
        "8-byte little-endian length, bytes",
        "dataset_id": hashlib.sha256(
            f"{FORMAT_VERSION}:{content_sha256}:{record['id']}".encode()
        ).hexdigest()[:16],
        "max_bytes": max_bytes,
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "bytes": {
            "train": sum(d.nbytes for d in train_docs),
            "val": sum(d.nbytes for d in val_docs),
        },
        "tokens": {"train": int(len(train_ids)), "val": int(len(val_ids))},
        "split": {
            "rule": "held out when sha256('val:' + document id) as a fraction of 2**64 < "
            "val_fraction; if none (or all) qualify, the single lowest-hash document",
            "val_fraction": VAL_FRACTION,
            "val_documents": [d.id for d in val_docs],
        },
        "layout": "uint16 token ids; every document is preceded by eot_id",
        "vocab_size": record["vocab_size"],
        "eot_id": record["eot_id"],
        "tokenizer_id": record["id"],
        "bpe_sample": {"documents": len(sample), "bytes": sum(d.nbytes for d in sample)},
        "python_version": sys.version.split()[0],
        "numpy_version": np.__version__,
        "created_unix": int(time.time()),
    }
    with staging(target) as stage:
        write_json(stage / "tokenizer.json", record)
        _write_array(stage / "train.bin", train_ids)
        _write_array(stage / "val.bin", val_ids)
        write_json(stage / "meta.json", meta)  # last: its presence marks completion
    log(f"prepared {target} in {time.perf_counter() - started:.1f}s")


def _read_capped(src: Source, max_bytes: int) -> tuple[list[Document], str]:
    """Documents in order until ``max_bytes`` is reached, and their content hash."""
    hasher = hashlib.sha256()
    docs: list[Document] = []
    total = 0
    for doc in iter_documents(src):
        if total >= max_bytes:
            break
        data = doc.text.encode("utf-8")
        hasher.update(doc.id.encode("utf-8") + b"\0")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
        docs.append(doc)
        total += doc.nbytes
    return docs, hasher.hexdigest()


def _train_tokenizer(sample: list[Document], vocab_size: int, log: Log) -> tuple[dict, Tokenizer]:
    started = time.perf_counter()
    tokenizer = bpe.train_tokenizer((d.text for d in sample), vocab_size, SPLIT_PATTERN, [EOT_TOKEN])
    record = bpe.tokenizer_record(tokenizer, SPLIT_PATTERN, [EOT_TOKEN])
    if record["vocab_size"] < vocab_size:
        log(f"note: the sample supports only {record['vocab_size']} tokens, not {vocab_size}")
    log(f"trained BPE ({record['vocab_size']} tokens) on {len(sample):,} documents "
        f"in {time.perf_counter() - started:.1f}s")
    return record, tokenizer


def _encode_documents(tokenizer: Tokenizer, eot_id: int, docs: list[Document]) -> np.ndarray:
    # Split in Python and encode each distinct chunk once: code repeats its chunks so much that this
    # is ~4x faster than the library's own (Oniguruma) split of every document, with the same ids.
    split = re.compile(SPLIT_PATTERN)
    chunked = [split.findall(d.text) for d in docs]
    unique = list(dict.fromkeys(c for chunks in chunked for c in chunks))
    ids = dict(zip(unique, (e.ids for e in tokenizer.encode_batch(unique, add_special_tokens=False))))
    parts = [np.array([eot_id, *(i for c in chunks for i in ids[c])], dtype=np.uint16) for chunks in chunked]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _write_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        array.astype(np.uint16, copy=False).tofile(f)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m baseline.prepare", description="Prepare tokenizer and token shards."
    )
    parser.add_argument("--source", default="stdlib", help="'stdlib', 'climbmix' or a folder of text")
    parser.add_argument("--num-shards", type=int, help="climbmix: training shards to download (default 10)")
    parser.add_argument("--base-url", help="climbmix: where the shards are served from")
    parser.add_argument("--name", help="dataset name (default: 'stdlib' or the folder name)")
    parser.add_argument("--root", type=Path, help="data root (default: $BILEVEL_DATA_ROOT)")
    parser.add_argument("--max-bytes", type=int, help="cap on corpus bytes read")
    parser.add_argument("--vocab-size", type=int, help=f"default {DEFAULT_VOCAB_SIZE}")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        path = prepare(
            args.source,
            name=args.name,
            root=args.root,
            max_bytes=args.max_bytes,
            vocab_size=args.vocab_size,
            force=args.force,
            log=log,
            num_shards=args.num_shards,
            base_url=args.base_url,
        )
    except PrepareError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Byte-level BPE through the ``tokenizers`` library, for both preparations: the stdlib or folder
corpus (:mod:`baseline.prepare`) and the reference shards (:mod:`baseline.climbmix`).

The tokenizer is stored as the library's JSON, a format that cannot run code, inside a record that
``train.py`` reads without the library: ``vocab_size``, ``eot_id`` (= ``bos_id``: the special token
every document starts with) and ``token_byte_lengths`` (0 for special tokens), which val_bpb divides by.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

RECORD_FORMAT = "bilevel-hf-bpe"


def train_tokenizer(docs: Iterable[str], vocab_size: int, split_pattern: str,
                    special_tokens: Sequence[str]) -> Tokenizer:
    """``vocab_size`` ids at most: the 256 bytes, the merges learned from ``docs``, the special tokens last."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(docs, trainer=trainer)
    tok.add_special_tokens(list(special_tokens))
    return tok


def tokenizer_record(tok: Tokenizer, split_pattern: str, special_tokens: Sequence[str]) -> dict:
    """What train.py reads, with the tokenizer itself as the library's JSON; the first special token is BOS."""
    specials = set(special_tokens)
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("the trained tokenizer's ids are not contiguous")
    # Byte-level tokens spell one byte per character.
    lengths = [0 if token in specials else len(token) for token, _ in by_id]
    body = tok.to_str()
    bos = vocab[special_tokens[0]]
    return {"format": RECORD_FORMAT, "id": hashlib.sha256(body.encode()).hexdigest()[:16],
            "vocab_size": len(by_id), "eot_id": bos, "bos_id": bos,
            "special_tokens": list(special_tokens), "split_pattern": split_pattern,
            "token_byte_lengths": lengths, "tokenizer": json.loads(body)}


def load_tokenizer(path: Path) -> Tokenizer:
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return Tokenizer.from_str(json.dumps(record["tokenizer"]))

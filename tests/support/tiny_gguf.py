"""Write a tiny llama-architecture GGUF model whose weights make it always answer one given text.

The model is a bigram machine: every block's output projections (attention and feed-forward)
are zero, so the residual stream at the last position is the embedding of the last token, and
the output matrix maps each token of the answer to the next one. Greedy decoding after any
prompt ending in a newline (chatml's ``<|im_start|>assistant\\n``) therefore spells the answer
piece by piece and then stops with the end-of-sequence token. A `second_choices` piece is the
model's runner-up in place of one answer piece: a grammar that forbids the first choice (a
``response_format`` schema) makes the model write the runner-up and carry on with the answer. The other weights (queries,
keys, values, gates) are random, so llama.cpp runs a real forward pass over real tensors.

The tokenizer is a valid SentencePiece ("llama") vocabulary: the 256 byte-fallback tokens make
any prompt tokenizable, the answer's pieces are whole tokens, and ``▁data`` keeps the endpoint
check's filler prompt at about a token a word.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

WIDTH = 32  # embedding width
LAYERS = 2
HEADS = 4
FFN = 64
_SPACE = "\u2581"  # SentencePiece's word boundary
_NORMAL, _CONTROL, _BYTE = 1, 3, 6  # gguf token types


def answer_pieces(text: str) -> list[str]:
    """The answer cut into tokens: one per word with its leading space, punctuation kept on its word."""
    pieces: list[str] = []
    for index, word in enumerate(text.split(" ")):
        pieces.append(word if index == 0 else " " + word)
    return pieces


def write_tiny_model(path: Path, answer: str, *, second_choices: Mapping[str, str] | None = None,
                     context_length: int = 32768, seed: int = 0) -> Path:
    """Write a model that answers `answer` to every chatml prompt; returns `path`.

    `second_choices` maps an answer piece (as `answer_pieces` cuts it) to the piece the model
    writes where the first is not allowed.
    """
    import gguf  # the test extra: the suite that needs it skips without llama_cpp anyway

    pieces = answer_pieces(answer)
    second = dict(second_choices or {})
    if unknown := set(second) - set(pieces):
        raise ValueError(f"second choices for pieces the answer does not have: {sorted(unknown)}")
    if len(set(pieces) | set(second.values())) != len(pieces) + len(second):
        raise ValueError(f"every piece of the answer must be distinct for a bigram model: {pieces}")
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [_CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    filler = [_SPACE + "d", _SPACE + "da", _SPACE + "dat", _SPACE + "data"]
    first_piece = len(tokens)
    tokens += [p.replace(" ", _SPACE) for p in pieces + list(second.values())]
    types += [_NORMAL] * (len(pieces) + len(second))
    tokens += [f for f in filler if f not in tokens]
    types += [_NORMAL] * (len(tokens) - len(types))
    scores = [0.0] * len(tokens)
    for i in range(first_piece, len(tokens)):
        scores[i] = float(len(tokens[i]))  # longer pieces merge first
    eos, newline = 2, 3 + 0x0A

    rng = np.random.default_rng(seed)
    vocab = len(tokens)
    embed = rng.standard_normal((vocab, WIDTH)).astype(np.float32)
    embed /= np.linalg.norm(embed, axis=1, keepdims=True)
    # The answer's tokens get orthonormal embeddings, so no chance overlap blurs the chain.
    used = [newline, eos] + list(range(first_piece, first_piece + len(pieces) + len(second)))
    if len(used) > WIDTH:
        raise ValueError(f"an answer of {len(used) - 2} pieces does not fit a width of {WIDTH}")
    embed[used] = np.linalg.qr(rng.standard_normal((WIDTH, len(used))))[0].T.astype(np.float32)
    # next[t]: the token that follows t; the answer's first piece follows the prompt's last newline.
    chain = [newline] + list(range(first_piece, first_piece + len(pieces))) + [eos]
    output = np.zeros((vocab, WIDTH), dtype=np.float32)
    for current, following in zip(chain, chain[1:]):
        output[following] += 40.0 * embed[current]  # a margin of many logits over chance overlaps
    for position, piece in enumerate(pieces, start=1):
        if piece in second:
            runner_up = first_piece + len(pieces) + list(second).index(piece)
            output[runner_up] += 20.0 * embed[chain[position - 1]]
            output[chain[position + 1]] += 40.0 * embed[runner_up]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bilevel-tiny-bigram")
    writer.add_context_length(context_length)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # No "▁" before the text: llama-server feeds the tokenized generation prompt to a schema's grammar,
    # and a leading "▁" (three byte tokens here) is not the "<|im_start|>" the grammar starts with.
    writer.add_add_space_prefix(False)

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    ones = np.ones(WIDTH, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for block in range(LAYERS):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", ones)
        writer.add_tensor(prefix + "attn_q.weight", dense(WIDTH, WIDTH))
        writer.add_tensor(prefix + "attn_k.weight", dense(WIDTH, WIDTH))
        writer.add_tensor(prefix + "attn_v.weight", dense(WIDTH, WIDTH))
        writer.add_tensor(prefix + "attn_output.weight", np.zeros((WIDTH, WIDTH), dtype=np.float32))
        writer.add_tensor(prefix + "ffn_norm.weight", ones)
        writer.add_tensor(prefix + "ffn_gate.weight", dense(FFN, WIDTH))
        writer.add_tensor(prefix + "ffn_up.weight", dense(FFN, WIDTH))
        writer.add_tensor(prefix + "ffn_down.weight", np.zeros((WIDTH, FFN), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

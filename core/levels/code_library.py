"""Known code edits to ``baseline/train.py``, each with where it comes from: offline mode's code proposals.

With ``search.scope = "code"`` and no LLM, the offline proposer draws from these (core/levels/offline.py),
so a demo shows code proposals, the training wall and the trusted evaluation at work. Each block's
``find`` occurs exactly once in ``baseline/train.py`` (tests/test_code_scope.py checks it); none touches
the protocol. They are changes people have made to this kind of model, not claims that they help here.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.record.change import CodeEdit, EditBlock


@dataclass(frozen=True)
class KnownEdit:
    name: str
    source: str  # where the change comes from
    edit: CodeEdit


def _one(find: str, replace: str) -> CodeEdit:
    return CodeEdit(edits=[EditBlock(find=find, replace=replace)])


LIBRARY: tuple[KnownEdit, ...] = (
    KnownEdit("value-embedding weight decay",
              "karpathy/autoresearch, H100 session keeps: weight decay on the value embeddings",
              _one("dict(params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * adam_scale),",
                   "dict(params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * adam_scale,\n"
                   "                 weight_decay=0.01),")),
    KnownEdit("logit soft-cap 30",
              "Gemma 2 caps its final logits at 30 (Gemma Team, 2024, arXiv:2408.00118)",
              _one("max_seq_len: int, attend: AttentionFn, softcap: float = 15.0,",
                   "max_seq_len: int, attend: AttentionFn, softcap: float = 30.0,")),
    KnownEdit("zero-initialised lm_head",
              "modded-nanogpt (Keller Jordan et al., 2024) starts the output head at zero",
              _one("nn.init.normal_(self.lm_head.weight, std=0.001)", "nn.init.zeros_(self.lm_head.weight)")),
    KnownEdit("GELU MLP",
              "GPT-2's MLP activation (Radford et al., 2019), in place of Primer's ReLU² (So et al., 2021)",
              _one("return self.proj(F.relu(self.fc(x)).square())", "return self.proj(F.gelu(self.fc(x)))")),
    KnownEdit("RoPE base 100000",
              "a larger rotary base, as Llama 3 raised it (500000; Meta, 2024, arXiv:2407.21783)",
              _one("def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:",
                   "def __init__(self, head_dim: int, max_len: int, base: float = 100000.0) -> None:")),
)


def known(edit: CodeEdit) -> KnownEdit | None:
    """The library entry whose edit blocks these are, if any."""
    return next((k for k in LIBRARY if k.edit.edits == edit.edits), None)

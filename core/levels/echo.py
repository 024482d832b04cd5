"""Replies that echo the prompt: a field whose text is the prompt's own instruction or example.

Small models copy what the prompt shows them ("one sentence: what you expect and why"
as a hypothesis, "what the trace shows" as a diagnosis). Such a reply parses and may
even fit the schema, but it says nothing: every level refuses it with this reason and
re-asks. A field echoes when, words alone (case, spacing and punctuation aside), it is
one of the level's placeholders or a run of at least three words of its prompt templates.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable

from . import prompts

MIN_ECHO_WORDS = 3  # shorter texts ("the LR", "why") occur in prompts by chance
_WORD = re.compile(r"[a-z0-9_]+")


def words(text: str) -> str:
    """The text as lowercase words separated by single spaces."""
    return " ".join(_WORD.findall(text.casefold()))


@lru_cache(maxsize=None)
def template_words(*names: str) -> str:
    """The templates' text as words, each template fenced by a separator no word sequence crosses."""
    return " | ".join(words(prompts.load(n)) for n in names)


def echoes(text: str, templates: Iterable[str], placeholders: Iterable[str] = ()) -> bool:
    """Whether ``text`` is one of ``placeholders`` or a run of words of the ``templates``' text."""
    said = words(text)
    if any(text.strip() == p or (said and said == words(p)) for p in placeholders):
        return True
    if not said:
        return False
    return len(said.split()) >= MIN_ECHO_WORDS and f" {said} " in f" {template_words(*templates)} "


def echo_problem(fields: Iterable[tuple[str, Any]], templates: Iterable[str],
                 placeholders: Iterable[str] = ()) -> str:
    """Why a reply's fields echo the prompt (field = text, each), or "" when none does."""
    names = tuple(templates)
    extra = tuple(placeholders)
    echoed = [f"{k} = {str(v)[:80]!r}" for k, v in fields if isinstance(v, str) and echoes(v, names, extra)]
    if not echoed:
        return ""
    return (f"the reply repeats the prompt's own placeholder, instruction or example text ({'; '.join(echoed)}): "
            "write your own answer for this run")

"""Test support: a scripted OpenAI-compatible server and a fixture that runs one.

Import the fixture into a test module to use it::

    from tests.support import scripted_openai  # noqa: F401  (registers the fixture)

    async def test_something(scripted_openai):
        scripted_openai.enqueue("hello")
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.openai_server import Reply, ScriptedOpenAI

__all__ = ["Reply", "ScriptedOpenAI", "scripted_openai"]


@pytest.fixture
def scripted_openai() -> Iterator[ScriptedOpenAI]:
    """A running ScriptedOpenAI server, stopped after the test."""
    with ScriptedOpenAI() as server:
        yield server

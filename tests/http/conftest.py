"""The HTTP application in memory (`tests.inmemory.InMemoryDaemon`): the fixtures of
``tests/integration/conftest.py``, with no process and no socket."""

from __future__ import annotations

import pytest

from tests.inmemory import InMemoryDaemon


@pytest.fixture
def daemon() -> InMemoryDaemon:
    """A fresh application on the built-in default configuration and an empty in-memory store."""
    return InMemoryDaemon()


@pytest.fixture(scope="module")
def shared_daemon() -> InMemoryDaemon:
    """One application for a whole module (tests must use distinct namespaces)."""
    return InMemoryDaemon()

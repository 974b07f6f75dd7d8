"""Fixtures that run the real daemon on a real port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A fresh angosd on the embedded default configuration and an empty store."""
    running = Daemon(str(tmp_path / "work"), str(tmp_path / "store")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One angosd for a whole module (tests must use distinct namespaces)."""
    base = tmp_path_factory.mktemp("shared")
    running = Daemon(str(base / "work"), str(base / "store")).start()
    try:
        yield running
    finally:
        running.stop()

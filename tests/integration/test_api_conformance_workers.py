"""The whole HTTP API conformance suite again, against daemon processes with two workers: every
request may land on either worker, including the chunks of one upload and the steps of one push.

The suite is `tests.http.test_conformance` (run in memory there, over sockets here: its tests
only speak HTTP through the `tests.daemon.Client` interface) plus the socket-level cases of
`test_api_conformance`; what differs with workers is which process answers, which only a
real multi-process daemon shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.http.test_conformance import *  # noqa: F403 - the same tests, collected here too
from tests.integration.ocihelpers import wait_for
from tests.integration.test_api_conformance import *  # noqa: F403


def _start(work: Path, store: Path) -> Daemon:
    running = Daemon(str(work), str(store), workers=2).start()
    wait_for(lambda: "all 2 workers are ready" in running.log(), timeout=30)
    return running


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = _start(tmp_path / "work", tmp_path / "store")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("shared-workers")
    running = _start(base / "work", base / "store")
    try:
        yield running
    finally:
        running.stop()

"""Hostile clients that only a real socket can play, against the real daemon.

The hostile requests themselves (names, digests, ranges, manifests, fuzzed paths, raw
request lines) run against the application in memory (`tests.http.test_hostile`). What
stays here is a client that hangs up in the middle of its request headers, and a check
that the daemon process is still serving afterwards.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tests.daemon import Daemon


@pytest.fixture
def d(shared_daemon: Daemon) -> Daemon:
    return shared_daemon


@pytest.mark.parametrize("data", [b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", b"GET /v2/a\x00b HTTP/1.1\r\n\r\n"],
                         ids=["partial-headers", "bad-request-line"])
def test_disconnect_before_headers_end_logs_no_traceback(d: Daemon, data: bytes) -> None:
    before = d.log().count("Traceback")
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(data)
        time.sleep(0.2)
    time.sleep(0.3)
    assert d.log().count("Traceback") == before, d.log()[-3000:]


def test_daemon_survived(d: Daemon) -> None:
    assert d.process is not None and d.process.poll() is None
    assert d.request("GET", "/v2/").status == 200
    assert d.request("GET", f"/v2/{uuid.uuid4()}/tags/list").status == 404

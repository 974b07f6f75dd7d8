"""The part of the HTTP API conformance tests that needs a real socket, against the real daemon.

The rest of the conformance tests talk HTTP bytes to the application in memory
(`tests.http.test_conformance`). What stays here depends on TCP itself: a client that
dies mid-body with a connection reset while the daemon is writing its bytes.
"""

from __future__ import annotations

import socket

import pytest

from tests.daemon import Daemon
from tests.http.test_conformance import assert_blob, assert_created, assert_session
from tests.integration.ocihelpers import (
    digest,
    patch,
    payload,
    reset_close,
    start_upload,
    unique_namespace,
    wait_for,
    with_query,
)


@pytest.fixture
def d(shared_daemon: Daemon) -> Daemon:
    return shared_daemon


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return unique_namespace(request.node.name, "conf")


def test_interrupted_upload_reports_true_offset_and_resumes(d: Daemon, ns: str) -> None:
    data = payload(300_000, 13)
    sent = 100_000
    location = assert_session(patch(d, start_upload(d, ns), data[:1000]), ns, 1000)

    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    head = (f"PATCH {location} HTTP/1.1\r\nHost: {d.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data) - 1000}\r\n\r\n").encode()
    sock.sendall(head + data[1000:1000 + sent])
    wait_for(lambda: d.request("GET", location).headers.get("range") == f"0-{1000 + sent - 1}")
    reset_close(sock)

    stored = 1000 + sent
    assert_session(d.request("GET", location), ns, stored, status=204)
    resumed = wait_for(lambda: (r := patch(d, location, data[stored:], stored)).status != 416 and r)
    location = assert_session(resumed, ns, len(data))
    assert_created(d.request("PUT", with_query(location, f"digest={digest(data)}")), ns, digest(data))
    assert_blob(d, ns, digest(data), data)


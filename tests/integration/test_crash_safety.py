"""kill -9 in the middle of uploads: nothing partial becomes visible, offsets stay true."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

from tests.daemon import Daemon

MiB = 1024 * 1024


def start_body(daemon: Daemon, method: str, target: str, declared: int, payload: bytes) -> socket.socket:
    """Send a request whose body is cut short: ``payload`` of ``declared`` bytes."""
    connection = socket.create_connection(("127.0.0.1", daemon.port))
    head = (f"{method} {target} HTTP/1.1\r\nHost: {daemon.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    connection.sendall(head.encode() + payload)
    return connection


def upload_size(daemon: Daemon, location: str) -> int:
    response = daemon.request("GET", location)
    assert response.status == 204, response
    return int(response.headers["range"].split("-")[1]) + 1 if response.headers["range"] != "0-0" else 0


def wait_for(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_chunk_cut_by_kill_resumes_from_true_offset(tmp_path: Path) -> None:
    data = os.urandom(24 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store")).start()
    location = daemon.request("POST", "/v2/crash/blobs/uploads/").headers["location"]
    sent = 16 * MiB
    connection = start_body(daemon, "PATCH", location, len(data), data[:sent])
    wait_for(lambda: upload_size(daemon, location) >= 8 * MiB)
    daemon.kill()
    connection.close()

    daemon.start()
    try:
        stored = upload_size(daemon, location)
        assert 0 < stored <= sent
        resumed = daemon.request("PATCH", location, data[stored:],
                                 {"Content-Range": f"{stored}-{len(data) - 1}",
                                  "Content-Type": "application/octet-stream"})
        assert resumed.status == 202, resumed
        done = daemon.request("PUT", f"{location}?digest={digest}")
        assert done.status == 201, done
        assert daemon.request("GET", f"/v2/crash/blobs/{digest}").body == data
    finally:
        daemon.stop()


def test_monolithic_push_cut_by_kill_leaves_no_blob(tmp_path: Path) -> None:
    data = os.urandom(16 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store")).start()
    connection = start_body(daemon, "POST", f"/v2/crash/blobs/uploads/?digest={digest}", len(data), data[: 12 * MiB])
    sessions = tmp_path / "store" / "repositories" / "crash" / "_uploads"
    wait_for(lambda: any(p.name == "data" and p.stat().st_size > MiB for p in sessions.rglob("data")))
    daemon.kill()
    connection.close()

    daemon.start()
    try:
        assert daemon.request("HEAD", f"/v2/crash/blobs/{digest}").status == 404
        blob_files = list((tmp_path / "store").glob("blobs/sha256/*/*/data"))
        assert blob_files == []
        pushed = daemon.request("POST", f"/v2/crash/blobs/uploads/?digest={digest}", data,
                                {"Content-Type": "application/octet-stream"})
        assert pushed.status == 201
        assert daemon.request("GET", f"/v2/crash/blobs/{digest}").body == data
    finally:
        daemon.stop()

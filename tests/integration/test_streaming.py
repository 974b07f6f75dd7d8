"""Blob downloads stream with backpressure: slow readers cost no memory, quitters no harm."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from tests.daemon import Daemon

MiB = 1024 * 1024


def rss_mib(daemon: Daemon) -> float:
    assert daemon.process is not None
    with open(f"/proc/{daemon.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def big_blob(shared_daemon: Daemon) -> tuple[str, bytes]:
    data = os.urandom(64 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response = shared_daemon.request("POST", f"/v2/stream/blobs/uploads/?digest={digest}", data,
                                     {"Content-Type": "application/octet-stream"})
    assert response.status == 201
    return digest, data


def open_get(daemon: Daemon, target: str, extra: str = "") -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    connection.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    return connection


def read_response(connection: socket.socket, pause_every: int = 0) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    received = [body]
    total = len(body)
    while total < length:
        chunk = connection.recv(min(1 * MiB, length - total))
        assert chunk, "connection closed early"
        received.append(chunk)
        total += len(chunk)
        if pause_every and total // pause_every != (total - len(chunk)) // pause_every:
            time.sleep(0.05)
    return head, b"".join(received)


def test_slow_reader_gets_every_byte_in_bounded_memory(shared_daemon: Daemon, big_blob: tuple[str, bytes]) -> None:
    digest, _ = big_blob
    before = rss_mib(shared_daemon)
    connection = open_get(shared_daemon, f"/v2/stream/blobs/{digest}")
    time.sleep(1.0)  # the reader is stalled: the daemon must not read the blob ahead into memory
    assert rss_mib(shared_daemon) - before < 16
    head, body = read_response(connection, pause_every=8 * MiB)
    connection.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    assert rss_mib(shared_daemon) - before < 16


def test_range_of_a_big_blob(shared_daemon: Daemon, big_blob: tuple[str, bytes]) -> None:
    digest, data = big_blob
    first, last = 10 * MiB + 7, 40 * MiB + 3
    connection = open_get(shared_daemon, f"/v2/stream/blobs/{digest}", f"Range: bytes={first}-{last}\r\n")
    head, body = read_response(connection)
    connection.close()
    assert head.startswith(b"HTTP/1.1 206")
    assert body == data[first:last + 1]


def test_reader_that_disconnects_midway_does_no_harm(shared_daemon: Daemon, big_blob: tuple[str, bytes]) -> None:
    digest, _ = big_blob
    for _ in range(5):
        connection = open_get(shared_daemon, f"/v2/stream/blobs/{digest}")
        connection.recv(256 * 1024)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        connection.close()
    assert shared_daemon.request("GET", "/v2/").status == 200
    assert shared_daemon.request("HEAD", f"/v2/stream/blobs/{digest}").status == 200
    assert "Traceback" not in shared_daemon.log()

"""The in-memory harness itself: it never hangs, parses what the channel writes, and works
with a real thread pool as well as its inline one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from twisted.python.threadpool import ThreadPool

from tests.daemon import Response
from tests.inmemory import InMemoryDaemon, StuckRequest, parse_response


def test_an_unfinished_request_fails_instead_of_hanging() -> None:
    daemon = InMemoryDaemon(thread_grace=0)
    with pytest.raises(StuckRequest, match="no complete response"):
        daemon.raw(b"PUT /v2/a/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")


def test_a_connection_carries_requests_in_turn() -> None:
    daemon = InMemoryDaemon()
    with daemon.connect() as connection:
        location = connection.request("POST", "/v2/a/blobs/uploads/").headers["location"]
        assert connection.request("PATCH", location, iter([b"ab", b"", b"cd"])).headers["range"] == "0-3"
        assert connection.request("HEAD", "/v2/").body == b""
        assert connection.request("GET", location).status == 204


LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX: 1\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
UNFRAMED = b"HTTP/1.1 400 Bad Request\r\n\r\nbye"


@pytest.mark.parametrize(("data", "head", "closed", "expected"), [
    (LENGTH + b"NEXT", False, False, (Response(200, {"content-length": "3"}, b"abc"), len(LENGTH))),
    (LENGTH[:-1], False, False, None),
    (LENGTH[:-3], True, False, (Response(200, {"content-length": "3"}, b""), len(LENGTH) - 3)),
    (CONTINUE, False, False, (Response(204, {"x": "1"}, b""), len(CONTINUE))),
    (CHUNKED, False, False, (Response(200, {"transfer-encoding": "chunked"}, b"abc"), len(CHUNKED))),
    (CHUNKED[:-7], False, False, None),
    (UNFRAMED, False, False, None),
    (UNFRAMED, False, True, (Response(400, {}, b"bye"), len(UNFRAMED))),
    (LENGTH[:25], False, True, None),
], ids=["length", "short", "head", "continue", "chunked", "chunked-short", "open-until-close", "closed", "partial"])
def test_parse_response(data: bytes, head: bool, closed: bool, expected: tuple[Response, int] | None) -> None:
    assert parse_response(data, head, closed) == expected


def test_a_real_thread_pool_works_too(tmp_path: Path) -> None:
    daemon = InMemoryDaemon(root=str(tmp_path / "store"))
    pool = ThreadPool(2, 2, "harness-test")
    pool.start()
    try:
        daemon.reactor.pool = pool  # type: ignore[assignment]  # the filesystem store writes through it
        data = bytes(range(256)) * 2000
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert daemon.request("POST", f"/v2/a/blobs/uploads/?digest={digest}", data).status == 201
        assert daemon.request("GET", f"/v2/a/blobs/{digest}").body == data
    finally:
        pool.stop()

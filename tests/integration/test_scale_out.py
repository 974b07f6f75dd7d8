"""Several daemons on one store behave as one registry, coordinated through a real redis-server.

Two angosd processes, A and B, share one S3 bucket (moto_server) and one Redis: pushes
and pulls cross between them, an upload moves from daemon to daemon, concurrent pushes
of one tag end consistent, and a daemon killed mid-push leaves an upload that the other
finishes once the dead daemon's lock has expired. When Redis stops, uploads fail with
clear 503s while pulls go on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from angosd.coordination.interface import CoordinationError, MemoryCoordination
from angosd.coordination.redis import RedisCoordination
from tests.daemon import Daemon, Response
from tests.integration.images import build_image, inspect_raw, manifest_digest, skopeo
from tests.integration.ocihelpers import (
    assert_error,
    digest,
    image_manifest,
    patch,
    payload,
    push_blob,
    push_manifest,
    start_upload,
    with_query,
)
from tests.redis_server import RedisServer
from tests.s3_server import S3Server, free_port, s3_config, shared_s3

MiB = 1024 * 1024
PART = 5 * MiB
#: Long enough that a loaded machine never loses a held lock between renewals.
LOCK_TTL = 5


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3() -> S3Server:
    return shared_s3()


class Pair:
    """Daemons A and B on one store and one Redis."""

    def __init__(self, tmp_path: Path, store: str, redis: RedisServer, s3: S3Server) -> None:
        config = tmp_path / "shared.toml"
        self.redis = redis
        self.key_prefix = f"{tmp_path.name}:"
        text = f'[cache.redis]\nurl = "{redis.url}"\nkey_prefix = "{self.key_prefix}"\nlock_ttl_secs = {LOCK_TTL}\n'
        if store == "s3":
            text += s3_config(s3, s3.new_bucket("pair"), multipart_part_size="5MiB")
        config.write_text(text)
        root = str(tmp_path / "store")  # used by the filesystem store only; the same for both
        self.a = Daemon(str(tmp_path / "a"), root, configs=(str(config),)).start()
        try:
            self.b = Daemon(str(tmp_path / "b"), root, configs=(str(config),)).start()
        except BaseException:
            self.a.stop()
            raise

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()

    def upload_locks(self) -> int:
        """How many upload locks the daemons hold in Redis right now."""
        reply = self.redis.command("KEYS", f"{self.key_prefix}lock:upload:*")
        assert reply.startswith(b"*"), reply
        return int(reply[1:])

    def wait_for_upload_lock(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.upload_locks() == 0:
            assert time.monotonic() < deadline, "no daemon took the upload lock"
            time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path, redis: RedisServer, s3: S3Server) -> Iterator[Pair]:
    daemons = Pair(tmp_path, "s3", redis, s3)
    try:
        yield daemons
    finally:
        daemons.stop()


@pytest.mark.parametrize("store", ["s3", "fs"])
def test_push_through_a_pull_through_b(tmp_path: Path, redis: RedisServer, s3: S3Server, store: str) -> None:
    daemons = Pair(tmp_path, store, redis, s3)
    try:
        image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096, 6 * MiB), seed=21)
        skopeo("copy", "--dest-tls-verify=false", image.ref, f"docker://{daemons.a.host}/team/app:v1")
        pulled = f"docker://{daemons.b.host}/team/app:v1"
        assert manifest_digest(pulled, "--tls-verify=false") == image.digest
        skopeo("copy", "--src-tls-verify=false", pulled, f"oci:{tmp_path / 'back'}:v1")
        assert inspect_raw(f"oci:{tmp_path / 'back'}:v1") == inspect_raw(image.ref)
        for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
            assert (tmp_path / "back" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()
        # A delete through B is seen by A.
        assert daemons.b.request("DELETE", "/v2/team/app/manifests/v1").status == 202
        assert daemons.a.request("GET", "/v2/team/app/manifests/v1").status == 404
    finally:
        daemons.stop()


def test_upload_started_on_a_continued_on_b_finished_on_a(pair: Pair) -> None:
    data = payload(13 * MiB + 5, seed=3)
    location = start_upload(pair.a, "team/hop")
    assert patch(pair.a, location, data[:7 * MiB], 0).status == 202
    assert patch(pair.b, location, data[7 * MiB:12 * MiB], 7 * MiB).status == 202
    assert pair.a.request("GET", location).headers["range"] == f"0-{12 * MiB - 1}"
    assert patch(pair.a, location, data[12 * MiB:], 12 * MiB).status == 202
    # A holds a hash state that stops at 7 MiB: it must rehash the parts, not trust it.
    done = pair.a.request("PUT", with_query(location, f"digest={digest(data)}"))
    assert done.status == 201, done.body
    for daemon in (pair.a, pair.b):
        blob = daemon.request("GET", f"/v2/team/hop/blobs/{digest(data)}", headers={"X-Angosd-No-Redirect": "1"})
        assert blob.status == 200 and blob.body == data

    # A wrong digest through B keeps the session, whole, for every daemon (the client may
    # retry or resume); nothing becomes visible.
    bad = start_upload(pair.b, "team/hop")
    assert patch(pair.a, bad, b"not what the digest says", 0).status == 202
    refused = pair.b.request("PUT", with_query(bad, f"digest={digest(b'something else')}"))
    assert refused.status == 400
    kept = pair.a.request("GET", bad)
    assert kept.status == 204 and kept.headers["range"] == f"0-{len(b'not what the digest says') - 1}"
    assert pair.a.request("HEAD", f"/v2/team/hop/blobs/{digest(b'something else')}").status == 404


def test_one_session_is_written_by_one_daemon_at_a_time(pair: Pair) -> None:
    """While A streams a chunk into a session, B refuses to append to it (416 with the size)."""
    location = start_upload(pair.a, "team/lock")
    release = threading.Event()
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"x" * 1000
        sent.set()
        release.wait(30)
        yield b"y" * 1000

    results: list[int] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", pair.a.port, timeout=60)
        connection.request("PATCH", location, body=slow_body(), headers={"Content-Type": "application/octet-stream"})
        results.append(connection.getresponse().status)
        connection.close()

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert sent.wait(60)
        pair.wait_for_upload_lock()  # A has admitted the request and holds the lock
        refused = patch(pair.b, location, b"zz")
        assert refused.status == 416, refused.body
        assert b"another request is writing" in refused.body
        completing = pair.b.request("PUT", with_query(location, f"digest={digest(b'')}"))
        assert completing.status == 416
    finally:
        release.set()
        thread.join(60)
    assert results == [202]
    assert pair.upload_locks() == 0  # released when the chunk was stored
    assert patch(pair.b, location, b"zz", 2000).status == 202
    expected = b"x" * 1000 + b"y" * 1000 + b"zz"
    assert pair.a.request("PUT", with_query(location, f"digest={digest(expected)}")).status == 201


def test_concurrent_pushes_of_one_tag_end_consistent(pair: Pair) -> None:
    """32 pushes of ``latest``, split across A and B: the tag ends on one of them, whole."""
    namespace = "team/race"

    def push(index: int) -> str:
        daemon = pair.a if index % 2 else pair.b
        config = json.dumps({"architecture": "amd64", "os": "linux", "push": index}).encode()
        layer = payload(50_000 + index, seed=index)
        push_blob(daemon, namespace, config)
        push_blob(daemon, namespace, layer)
        return push_manifest(daemon, namespace, "latest", image_manifest(config, [layer]))

    with ThreadPoolExecutor(32) as pool:
        pushed = set(pool.map(push, range(32)))
    assert len(pushed) == 32
    winners = {daemon.request("GET", f"/v2/{namespace}/manifests/latest").headers["docker-content-digest"]
               for daemon in (pair.a, pair.b)}
    assert len(winners) == 1 and winners <= pushed
    for daemon in (pair.a, pair.b):
        manifest = daemon.request("GET", f"/v2/{namespace}/manifests/latest")
        assert manifest.status == 200
        document = json.loads(manifest.body)
        for descriptor in [document["config"], *document["layers"]]:
            blob = daemon.request("GET", f"/v2/{namespace}/blobs/{descriptor['digest']}",
                                  headers={"X-Angosd-No-Redirect": "1"})
            assert blob.status == 200 and digest(blob.body) == descriptor["digest"]
        assert daemon.request("GET", f"/v2/{namespace}/tags/list").json()["tags"] == ["latest"]
        for revision in pushed:  # every push left a complete, readable revision
            assert daemon.request("HEAD", f"/v2/{namespace}/manifests/{revision}").status == 200


def test_kill_a_mid_push_and_finish_through_b(pair: Pair) -> None:
    data = payload(40 * MiB, seed=8)
    location = start_upload(pair.a, "team/crash")
    assert patch(pair.a, location, data[:6 * MiB], 0).status == 202

    def body() -> Iterator[bytes]:
        for offset in range(6 * MiB, len(data), MiB):
            if offset == 24 * MiB:
                pair.a.kill()
            yield data[offset:offset + MiB]

    connection = http.client.HTTPConnection("127.0.0.1", pair.a.port, timeout=60)
    with pytest.raises(OSError):
        connection.request("PATCH", location, body=body(), headers={"Content-Type": "application/octet-stream"})
        connection.getresponse()
    connection.close()
    # A died holding the session's lock (kill -9: no release); it stays until it expires.
    assert pair.upload_locks() == 1

    # B reports only whole parts, and takes over once A's lock has expired.
    answers: list[int] = []
    finished = _finish_upload(pair.b, location, data, time.monotonic() + LOCK_TTL + 120, answers)
    assert finished.status == 201, finished.body
    assert set(answers[:-1]) <= {416, 503} and answers[-1] == 202, answers
    blob = pair.b.request("GET", f"/v2/team/crash/blobs/{digest(data)}", headers={"X-Angosd-No-Redirect": "1"})
    assert blob.body == data
    assert pair.upload_locks() == 0


def _finish_upload(daemon: Daemon, location: str, data: bytes, deadline: float,
                   answers: list[int]) -> Response:
    """What a client does after a failure: ask for the offset, send the rest, retry while refused."""
    while True:
        status = daemon.request("GET", location)
        assert status.status == 204, status.body
        stored = int(status.headers["range"].split("-")[1]) + 1
        assert 6 * MiB <= stored <= 24 * MiB and (stored - 6 * MiB) % PART == 0, stored
        sent = patch(daemon, location, data[stored:], stored)
        answers.append(sent.status)
        if sent.status == 202:
            return daemon.request("PUT", with_query(location, f"digest={digest(data)}"))
        assert sent.status in (416, 503), sent.body  # the dead daemon's lock, or its last part landing
        assert time.monotonic() < deadline, "the dead daemon's lock never expired"
        time.sleep(0.3)


def test_redis_outage_stops_uploads_with_503_and_pulls_continue(tmp_path: Path, s3: S3Server) -> None:
    """Redis stops: blob uploads answer 503 naming Redis (never 500, never a hang), pulls
    keep working; Redis returns on the same address: uploads work again."""
    with contextlib.ExitStack() as cleanup:
        redis = RedisServer(str(tmp_path / "redis")).start()
        cleanup.callback(redis.stop)
        config = tmp_path / "d.toml"
        config.write_text(f'[cache.redis]\nurl = "{redis.url}"\nlock_ttl_secs = {LOCK_TTL}\n'
                          + s3_config(s3, s3.new_bucket("redis-down"), multipart_part_size="5MiB"))
        daemon = Daemon(str(tmp_path / "d"), str(tmp_path / "unused"), configs=(str(config),)).start()
        cleanup.callback(daemon.stop)

        layer = payload(300_000, seed=12)
        push_blob(daemon, "team/app", layer)
        push_blob(daemon, "team/app", b"{}")
        push_manifest(daemon, "team/app", "v1", image_manifest(b"{}", [layer]))
        location = start_upload(daemon, "team/app")
        redis.stop()

        for refused in (patch(daemon, location, b"chunk", 0),
                        daemon.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest(b'mono')}", b"mono"),
                        daemon.request("PUT", with_query(location, f"digest={digest(b'')}"))):
            assert_error(refused, 503, "UNKNOWN")
            assert "Redis" in str(refused.json()["errors"][0]), refused.body  # cannot connect, or connection lost
        assert daemon.request("GET", "/v2/team/app/manifests/v1").status == 200
        pulled = daemon.request("GET", f"/v2/team/app/blobs/{digest(layer)}", headers={"X-Angosd-No-Redirect": "1"})
        assert pulled.status == 200 and pulled.body == layer
        assert daemon.request("GET", location).headers["range"] == "0-0"

        again = RedisServer(str(tmp_path / "redis"), port=redis.port).start()
        cleanup.callback(again.stop)
        assert patch(daemon, location, b"chunk", 0).status == 202
        assert daemon.request("PUT", with_query(location, f"digest={digest(b'chunk')}")).status == 201
        log = daemon.log()
        assert "unhandled error" not in log and "Unhandled" not in log, log[-4000:]


# -- coordination against the real Redis ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_locks_are_exclusive_expire_and_are_renewed(redis: RedisServer) -> None:
    one = RedisCoordination(reactor, redis.url, "locks-test:", lock_ttl=0.4)
    two = RedisCoordination(reactor, redis.url, "locks-test:", lock_ttl=0.4)
    other_prefix = RedisCoordination(reactor, redis.url, "elsewhere:", lock_ttl=0.4)
    try:
        lease = await one.acquire("upload:x")
        assert lease is not None
        assert await two.acquire("upload:x") is None
        assert await other_prefix.acquire("upload:x") is not None  # prefixes separate deployments
        await deferLater(reactor, 1.0)  # 2.5 lifetimes: renewal keeps it
        assert await two.acquire("upload:x") is None
        await one.release(lease)
        taken = await two.acquire("upload:x")
        assert taken is not None

        # A holder that dies (no renewal, no release) blocks others for one lifetime at most.
        assert taken.renewal is not None
        taken.renewal.stop()
        two.close()
        assert await one.acquire("upload:x") is None
        await deferLater(reactor, 0.6)
        late = await one.acquire("upload:x")
        assert late is not None
        await two.release(taken)  # the old holder's release no longer frees someone else's lock
        assert await RedisCoordination(reactor, redis.url, "locks-test:").acquire("upload:x") is None
        await one.release(late)

        await one.set("jwks:issuer", b"{}", 0.3)
        assert await two.get("jwks:issuer") == b"{}"
        await deferLater(reactor, 0.5)
        assert await two.get("jwks:issuer") is None
    finally:
        for coordination in (one, two, other_prefix):
            coordination.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_redis_is_a_clear_error() -> None:
    nowhere = RedisCoordination(reactor, f"redis://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(CoordinationError, match=r"cannot connect to Redis at redis://127\.0\.0\.1"):
        await nowhere.acquire("upload:y")


@pytest_twisted.ensureDeferred
async def test_memory_coordination_for_a_single_daemon() -> None:
    memory = MemoryCoordination(reactor)
    lease = await memory.acquire("upload:z")
    assert lease is not None and await memory.acquire("upload:z") is None
    await memory.release(lease)
    assert await memory.acquire("upload:z") is not None
    await memory.set("k", b"v", 0.2)
    assert await memory.get("k") == b"v"
    await deferLater(reactor, 0.3)
    assert await memory.get("k") is None


def test_resp_replies_parse_whole_or_not_at_all() -> None:
    from angosd.coordination.redis import RedisReplyError, _Incomplete, encode_command, parse_reply

    assert encode_command((b"SET", b"k", b"")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    stream = b"+OK\r\n$-1\r\n:42\r\n$5\r\nhe\r\no\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR wrong\r\n"
    replies, position = [], 0
    while position < len(stream):
        reply, position = parse_reply(stream, position)
        replies.append(reply)
    assert replies[:5] == ["OK", None, 42, b"he\r\no", [b"a", 1]]
    assert isinstance(replies[5], RedisReplyError) and "ERR wrong" in str(replies[5])
    for cut in range(1, len(b"$5\r\nhe\r\no\r\n")):  # every prefix of a reply is incomplete
        with pytest.raises(_Incomplete):
            parse_reply(b"$5\r\nhe\r\no\r\n"[:cut])

"""The daemon on S3: a real ``moto_server`` over HTTP, through the production code path.

Covers skopeo round trips, blob redirects (307 to a presigned URL) and proxied
streaming, a 1 GiB blob in bounded memory, client errors (4xx with OCI bodies, bucket
unchanged), garbage collection, S3 outages (clear 503s, no partial state, recovery),
hung requests and cancellation, refused credentials and missing buckets, and driver
details a conformance suite cannot see (append parts, multipart assembly, concurrent
appenders).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater

from angosd.oci.digest import Digest
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.uploads import UploadSessions
from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.s3 import S3Driver
from angosd.storage.s3_append import COPY_CONCURRENCY, MIN_PART
from tests.daemon import Daemon, Response
from tests.integration.images import build_image, inspect_raw, manifest_digest, skopeo
from tests.integration.ocihelpers import (
    OCI_MANIFEST,
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
from tests.s3_server import S3Server, free_port, s3_config, s3_driver, shared_s3

NO_TLS = "--tls-verify=false"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> S3Server:
    return shared_s3()


def start_daemon(tmp_path: Path, server: S3Server, bucket: str, name: str = "d", global_: str = "",
                 **s3_keys: Any) -> Daemon:
    config = tmp_path / f"{name}.toml"
    config.write_text(s3_config(server, bucket, **s3_keys) + (f"[global]\n{global_}\n" if global_ else ""))
    return Daemon(str(tmp_path / f"{name}-work"), str(tmp_path / f"{name}-unused-root"), configs=(str(config),)).start()


@pytest.fixture
def redirecting(tmp_path: Path, s3: S3Server) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path, s3, s3.new_bucket("redir"), multipart_part_size="5MiB")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def proxying(tmp_path: Path, s3: S3Server) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path, s3, s3.new_bucket("proxy"), global_="enable_blob_redirect = false",
                          multipart_part_size="5MiB")
    try:
        yield daemon
    finally:
        daemon.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=600, check=True)


# -- real clients ------------------------------------------------------------------------------


def test_skopeo_round_trip_with_redirects(redirecting: Daemon, s3: S3Server, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096, 7 * MiB), seed=11)
    remote = f"docker://{redirecting.host}/team/app:v1"
    skopeo("copy", "--dest-tls-verify=false", image.ref, remote)
    assert manifest_digest(remote, NO_TLS) == image.digest
    skopeo("copy", "--src-tls-verify=false", remote, f"oci:{tmp_path / 'back'}:v1")
    assert inspect_raw(f"oci:{tmp_path / 'back'}:v1") == inspect_raw(image.ref)
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "back" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    big = max((tmp_path / "src" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    path = f"/v2/team/app/blobs/sha256:{big.name}"
    response = redirecting.request("GET", path)
    assert response.status == 307
    location = response.headers["location"]
    assert location.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in location
    assert response.headers["docker-content-digest"] == f"sha256:{big.name}"
    fetched = curl("-L", "-o", str(tmp_path / "via-redirect"), redirecting.url + path)
    assert fetched.returncode == 0
    assert (tmp_path / "via-redirect").read_bytes() == big.read_bytes()

    # Ranges, the web UI and clients that ask are served inline.
    ranged = redirecting.request("GET", path, headers={"Range": "bytes=100-199"})
    assert ranged.status == 206 and ranged.body == big.read_bytes()[100:200]
    for header in ({"X-Angosd-No-Redirect": "1"}, {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"}):
        inline = redirecting.request("GET", path, headers=header)
        assert inline.status == 200 and inline.body == big.read_bytes()
    # No URL is handed out for a blob the namespace does not own.
    assert_error(redirecting.request("GET", f"/v2/other/app/blobs/sha256:{big.name}"), 404, "BLOB_UNKNOWN")
    assert redirecting.request("HEAD", path).status == 200


def test_proxy_mode_streams_blobs(proxying: Daemon, tmp_path: Path) -> None:
    data = payload(13 * MiB + 17, seed=5)
    location = start_upload(proxying, "team/stream")
    first = patch(proxying, location, data[:6 * MiB], 0)  # chunks that straddle parts
    assert first.status == 202
    second = patch(proxying, first.headers["location"], data[6 * MiB:], 6 * MiB)
    assert second.status == 202 and second.headers["range"] == f"0-{len(data) - 1}"
    blob = digest(data)
    done = proxying.request("PUT", with_query(second.headers["location"], f"digest={blob}"))
    assert done.status == 201

    source = tmp_path / "blob"
    result = curl("-o", str(source), "-w", "%{http_code} %{size_download}",
                  f"{proxying.url}/v2/team/stream/blobs/{blob}")
    assert result.stdout.decode() == f"200 {len(data)}"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == blob.split(":")[1]
    tail = proxying.request("GET", f"/v2/team/stream/blobs/{blob}", headers={"Range": f"bytes=-{3 * MiB}"})
    assert tail.status == 206 and tail.body == data[-3 * MiB:]


@pytest.mark.slow
def test_one_gib_blob_in_bounded_memory(tmp_path: Path, s3: S3Server) -> None:
    """Push 1 GiB with curl (streamed from a file), pull it back through the daemon (proxy
    mode, so every byte passes through it): same digest, and a flat daemon RSS."""
    daemon = start_daemon(tmp_path, s3, s3.new_bucket("gib"), global_="enable_blob_redirect = false")
    try:
        source = tmp_path / "gib"
        hasher = hashlib.sha256()
        block = os.urandom(MiB)
        with open(source, "wb") as out:
            for index in range(1024):
                chunk = index.to_bytes(8, "big") + block[8:]
                hasher.update(chunk)
                out.write(chunk)
        blob = f"sha256:{hasher.hexdigest()}"
        started = time.monotonic()
        location = start_upload(daemon, "big/blob")
        pushed = curl("-X", "PATCH", "-T", str(source), "-H", "Content-Type: application/octet-stream",
                      "-w", "%{http_code}", "-o", "/dev/null", f"{daemon.url}{location}")
        assert pushed.stdout == b"202"
        uploaded = time.monotonic()
        status = daemon.request("GET", location)
        assert status.headers["range"] == f"0-{1024 * MiB - 1}"
        done = daemon.request("PUT", with_query(location, f"digest={blob}"))
        assert done.status == 201, done.body
        push_seconds = time.monotonic() - started
        commit_seconds = time.monotonic() - uploaded
        back = tmp_path / "back"
        pulled = curl("-o", str(back), "-w", "%{http_code}", f"{daemon.url}/v2/big/blob/blobs/{blob}")
        assert pulled.stdout == b"200"
        pull_seconds = time.monotonic() - started - push_seconds
        check = hashlib.sha256()
        with open(back, "rb") as handle:
            while chunk := handle.read(8 * MiB):
                check.update(chunk)
        assert f"sha256:{check.hexdigest()}" == blob
        assert daemon.process is not None
        peak = _peak_rss(daemon.process.pid)
        print(f"\n1 GiB on S3: push {push_seconds:.1f}s ({1024 / push_seconds:.0f} MiB/s; "
              f"of which the commit, assembling the parts server-side, {commit_seconds:.1f}s), "
              f"pull {pull_seconds:.1f}s ({1024 / pull_seconds:.0f} MiB/s), "
              f"daemon peak RSS (VmHWM) {peak / MiB:.1f} MiB")
        assert peak < 200 * MiB, f"daemon peak RSS {peak / MiB:.1f} MiB"
    finally:
        daemon.stop()
        for name in ("gib", "back"):
            (tmp_path / name).unlink(missing_ok=True)


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_garbage_collection_reclaims_unowned_blobs_on_s3(tmp_path: Path, s3: S3Server) -> None:
    """The online collector works on a bucket: a blob no namespace owns any more goes (bytes,
    markers, its candidate mark), a blob a manifest uses stays."""
    bucket = s3.new_bucket("gc")
    daemon = start_daemon(tmp_path, s3, bucket, global_="gc_grace_secs = 1")
    try:
        kept, dropped = payload(200_000, seed=30), payload(6 * MiB + 1, seed=31)
        push_blob(daemon, "team/gc", kept)
        push_blob(daemon, "team/gc", b"{}")
        push_manifest(daemon, "team/gc", "v1", image_manifest(b"{}", [kept]))
        push_blob(daemon, "team/gc", dropped)
        assert daemon.request("DELETE", f"/v2/team/gc/blobs/{digest(dropped)}").status == 202
        hex_dropped = digest(dropped).split(":")[1]
        deadline = time.monotonic() + 120
        while any(hex_dropped in key for key in s3.keys(bucket)):
            assert time.monotonic() < deadline, sorted(s3.keys(bucket))
            time.sleep(0.5)
        assert not any("_gc/" in key for key in s3.keys(bucket))
        pulled = daemon.request("GET", f"/v2/team/gc/blobs/{digest(kept)}", headers={"X-Angosd-No-Redirect": "1"})
        assert pulled.status == 200 and pulled.body == kept
        assert daemon.request("GET", "/v2/team/gc/manifests/v1").status == 200
    finally:
        daemon.stop()


# -- faults ---------------------------------------------------------------------------------------


def _storage_unavailable(response: Response, *words: str) -> None:
    assert_error(response, 503, "UNKNOWN")
    message = str(response.json()["errors"][0])
    for word in words:
        assert word in message, message


def test_s3_outage_gives_clear_503s_and_recovers(tmp_path: Path) -> None:
    with contextlib.ExitStack() as cleanup:
        server = S3Server(str(tmp_path / "moto")).start()
        cleanup.callback(server.stop)
        daemon = start_daemon(tmp_path, server, server.new_bucket("outage"), multipart_part_size="5MiB",
                              max_attempts=2, operation_attempt_timeout_secs=3, operation_timeout_secs=20)
        cleanup.callback(daemon.stop)
        _outage(server, daemon)


def _outage(server: S3Server, daemon: Daemon) -> None:
    base = payload(300_000, seed=1)
    push_blob(daemon, "app/x", base)
    push_manifest(daemon, "app/x", "v1", image_manifest(base))
    data = payload(24 * MiB, seed=2)
    location = start_upload(daemon, "app/x")
    assert patch(daemon, location, data[:MiB], 0).status == 202

    # S3 hangs while a big chunk streams in: the chunk fails, nothing half-written counts.
    def body() -> Iterator[bytes]:
        for offset in range(MiB, len(data), MiB):
            if offset == 12 * MiB:
                server.freeze()
            yield data[offset:offset + MiB]

    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    connection.request("PATCH", location, body=body(), headers={"Content-Type": "application/octet-stream"})
    answer = connection.getresponse()  # after the whole body: the rest is read and dropped
    failed = Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    connection.close()
    _storage_unavailable(failed, f"S3 endpoint {server.endpoint}", "unavailable", "no answer within 3s")

    _storage_unavailable(daemon.request("GET", "/v2/app/x/manifests/v1"), "S3 endpoint", "unavailable")
    _storage_unavailable(daemon.request("POST", f"/v2/app/x/blobs/uploads/?digest={digest(b'new')}", b"new"),
                         "S3 endpoint", "unavailable")
    assert daemon.request("GET", "/readyz").status == 503
    server.thaw()

    # Recovered: what was stored is whole, the failed monolithic push left nothing visible.
    assert daemon.request("GET", "/v2/app/x/manifests/v1").status == 200
    assert_error(daemon.request("GET", f"/v2/app/x/blobs/{digest(b'new')}"), 404, "BLOB_UNKNOWN")
    status = daemon.request("GET", location)
    assert status.status == 204
    stored = int(status.headers["range"].split("-")[1]) + 1
    assert MiB <= stored < len(data) and (stored - MiB) % (5 * MiB) == 0, stored
    assert patch(daemon, location, data[stored:], stored).status == 202
    done = daemon.request("PUT", with_query(location, f"digest={digest(data)}"))
    assert done.status == 201, done.body
    assert daemon.request("GET", f"/v2/app/x/blobs/{digest(data)}",
                          headers={"X-Angosd-No-Redirect": "1"}).body == data
    assert daemon.request("GET", "/readyz").status == 200
    _no_unexpected_errors(daemon)


def _no_unexpected_errors(daemon: Daemon) -> None:
    """Every failure was mapped to an answer: no 500, no crashed writer, no lost Deferred."""
    log = daemon.log()
    for sign in ("unhandled error", "Unhandled error in Deferred", "Unhandled Error", "crashed"):
        assert sign not in log, log[-6000:]


def test_client_errors_are_4xx_with_oci_bodies_and_change_nothing(tmp_path: Path, s3: S3Server) -> None:
    """On S3 as on a disk: a client's mistake is a 4xx with an OCI error body, never a 5xx,
    and it leaves the bucket as it was (a refused upload session is discarded whole)."""
    bucket = s3.new_bucket("client")
    daemon = start_daemon(tmp_path, s3, bucket, global_="enable_blob_redirect = false", multipart_part_size="5MiB")
    try:
        _client_errors(daemon, s3, bucket)
    finally:
        daemon.stop()


def _client_errors(proxying: Daemon, s3: S3Server, bucket: str) -> None:
    ns = "team/client-errors"
    config, layer = b'{"os": "linux"}', payload(7 * MiB + 3, seed=4)
    push_blob(proxying, ns, config)
    push_blob(proxying, ns, layer)
    manifest = image_manifest(config, [layer])
    push_manifest(proxying, ns, "v1", manifest)
    location = patch(proxying, start_upload(proxying, ns), b"0123456789", 0).headers["location"]
    # The longest name and tag the API accepts fit S3's key limit, appends included.
    longest = "/".join(["a" * 63] * 4)
    push_blob(proxying, longest, config)
    push_blob(proxying, longest, layer)
    push_manifest(proxying, longest, "t" * 128, manifest)
    doomed = patch(proxying, start_upload(proxying, ns), b"first chunk").headers["location"]
    before = sorted(s3.keys(bucket))

    blob = f"/v2/{ns}/blobs/{digest(layer)}"
    unknown = digest(b"never pushed")
    cases: list[tuple[str, str, bytes | None, dict[str, str], int, str | None]] = [
        ("GET", f"/v2/{ns}/manifests/nope", None, {}, 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/v2/{ns}/manifests/{unknown}", None, {}, 404, "MANIFEST_UNKNOWN"),
        ("DELETE", f"/v2/{ns}/manifests/nope", None, {}, 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/v2/{ns}/blobs/{unknown}", None, {}, 404, "BLOB_UNKNOWN"),
        ("GET", f"/v2/other/app/blobs/{digest(layer)}", None, {}, 404, "BLOB_UNKNOWN"),
        ("GET", blob, None, {"Range": f"bytes={len(layer)}-"}, 416, None),
        ("GET", f"/v2/{ns}/blobs/sha256:xyz", None, {}, 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{'a' * 300}/tags/list", None, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/a/../../etc/tags/list", None, {}, None, None),
        ("PUT", f"/v2/{ns}/manifests/{'t' * 129}", manifest, {"Content-Type": OCI_MANIFEST}, 400, "TAG_INVALID"),
        ("PUT", f"/v2/{ns}/manifests/v2", b"{not json", {"Content-Type": OCI_MANIFEST}, 400, "MANIFEST_INVALID"),
        ("PUT", f"/v2/{ns}/manifests/{digest(b'other')}", manifest, {"Content-Type": OCI_MANIFEST}, 400,
         "DIGEST_INVALID"),
        ("POST", f"/v2/{ns}/blobs/uploads/?digest={digest(b'claimed')}", b"sent", {}, 400, "DIGEST_INVALID"),
        ("POST", f"/v2/{ns}/blobs/uploads/?digest-algorithm=md5", None, {}, 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{ns}/blobs/uploads/{'0' * 8}-0000-4000-8000-{'0' * 12}", None, {}, 404,
         "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", location, b"late", {"Content-Range": "3-6"}, 416, None),
        ("PATCH", location, b"late", {"Content-Range": "abc"}, 416, None),
        ("PUT", with_query(location, "digest=sha256:zz"), None, {}, 400, "DIGEST_INVALID"),
        ("PUT", with_query(doomed, f"digest={digest(b'something else')}"), None, {}, 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{ns}/tags/list?n=-1", None, {}, 400, "PAGINATION_NUMBER_INVALID"),
    ]
    for method, target, body, headers, status, code in cases:
        response = proxying.request(method, target, body, headers)
        assert 400 <= response.status < 500, (method, target, response.status, response.body[:300])
        assert_error(response, status or response.status, code)
    assert sorted(s3.keys(bucket)) == before
    assert proxying.request("GET", location).headers["range"] == "0-9"
    assert proxying.request("GET", doomed).headers["range"] == "0-10"  # a digest mismatch keeps the session
    assert proxying.request("GET", f"/v2/{ns}/manifests/v1").body == manifest
    _no_unexpected_errors(proxying)


@pytest_twisted.ensureDeferred
async def test_hung_s3_times_out_and_cancelling_stops_at_once(tmp_path: Path) -> None:
    """A frozen S3 server (SIGSTOP: connections open, nothing answers): a request whose body
    is still being sent and one waiting for its answer both fail with a `StorageError`
    after ``max_attempts`` timeouts; a caller that gives up is not retried behind its back.
    When the server answers again, the same connection pool works."""
    server = S3Server(str(tmp_path / "moto")).start()
    try:
        bucket = server.new_bucket("hung")
        hasty = s3_driver(reactor, server, bucket, max_attempts=2, attempt_timeout=1.0)
        patient = s3_driver(reactor, server, bucket, max_attempts=3, attempt_timeout=120.0)
        assert isinstance(hasty, S3Driver) and isinstance(patient, S3Driver)
        big = payload(32 * MiB, seed=6)  # more than the socket buffers hold: the PUT stalls mid-body
        await hasty.write("before", b"stored before the outage")
        server.freeze()
        for operation in (lambda: hasty.write("big", big), lambda: hasty.read("before")):
            with pytest.raises(StorageError, match=r"unavailable: no answer within 1s"):
                await operation()

        for operation in (lambda: patient.write("big", big), lambda: patient.read("before")):
            pending = operation()
            await deferLater(reactor, 0.5)
            started = time.monotonic()
            pending.cancel()
            with pytest.raises(CancelledError):
                await pending
            assert time.monotonic() - started < 60, "a cancelled request was retried"

        server.thaw()
        await patient.write("big", big)
        assert await patient.read("before") == b"stored before the outage"
        assert await patient.stat("big") == len(big)
    finally:
        server.stop()


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An "S3" that refuses every request's signature."""

    def _refuse(self) -> None:
        body = (b"<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code>"
                b"<Message>The request signature we calculated does not match</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _refuse

    def log_message(self, *args: Any) -> None:
        pass


def test_refused_credentials_missing_bucket_and_no_server_are_clear_503s(tmp_path: Path, s3: S3Server) -> None:
    with contextlib.ExitStack() as cleanup:
        refusing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
        cleanup.callback(refusing.server_close)
        threading.Thread(target=refusing.serve_forever, daemon=True).start()
        cleanup.callback(refusing.shutdown)
        fake = S3Server(str(tmp_path / "fake"), port=refusing.server_address[1])
        closed = S3Server(str(tmp_path / "closed"), port=free_port())
        daemons = []
        for server, bucket, name, extra in [(fake, "bucket", "refused", {}),
                                            (s3, "no-such-bucket-angosd", "nobucket", {}),
                                            (closed, "bucket", "closed", {"max_attempts": 2})]:
            daemons.append(start_daemon(tmp_path, server, bucket, name, **extra))
            cleanup.callback(daemons[-1].stop)
        expectations = [("S3 rejected the credentials (SignatureDoesNotMatch)", "access_key_id and secret_key"),
                        ("S3 bucket 'no-such-bucket-angosd' does not exist",),
                        ("is unavailable", "Connection refused")]
        for daemon, words in zip(daemons, expectations, strict=True):
            _storage_unavailable(daemon.request("GET", "/v2/team/app/manifests/latest"), *words)
            _storage_unavailable(daemon.request("POST", "/v2/team/app/blobs/uploads/"), *words)
            assert daemon.request("GET", "/readyz").status == 503


# -- driver details ---------------------------------------------------------------------------------


@pytest.fixture
def driver(s3: S3Server) -> S3Driver:
    made = s3_driver(reactor, s3, part_size=MIN_PART)
    assert isinstance(made, S3Driver)
    return made


@pytest_twisted.ensureDeferred
async def test_appends_become_parts_and_assemble_into_one_object(driver: S3Driver, s3: S3Server) -> None:
    """Parts of every size (request-sized remainders, full parts) assemble exactly, server-side
    where S3 allows it; stat, hash and read see base plus parts all along."""
    sizes = [1_000, MIN_PART + 3, 17, 2 * MIN_PART, 4 * MiB, 1]
    data = payload(sum(sizes), seed=9)
    key = "repositories/n/_uploads/u/data"
    await driver.write(key, b"")
    position = 0
    for size in sizes:
        writer = await driver.open_append(key)
        assert writer.offset == position
        writer.write(data[position:position + size])
        await writer.finish()
        position += size
        assert await driver.stat(key) == position
    assert await driver.hash_object(key, "sha256") == hashlib.sha256(data).hexdigest()
    handle = await driver.open_read(key)
    assert handle.size == len(data)
    assert await handle.read_all() == data
    bucket = driver.client.options.bucket
    parts = [k for k in s3.keys(bucket) if "/.tmp-parts/" in k]
    assert len(parts) >= len(sizes)

    await driver.move(key, "blobs/x/data")
    assert await driver.read("blobs/x/data") == data
    assert await driver.stat(key) is None
    assert [k for k in s3.keys(bucket)] == ["blobs/x/data"]


def watch_copies(driver: S3Driver, fail_copy: int | None = None) -> dict[str, int]:
    """Count the UploadPartCopy requests of ``driver`` and the most in flight at once; with
    ``fail_copy`` the copy of that number (1-based) fails as a refused request would."""
    seen = {"copies": 0, "in_flight": 0, "most": 0}
    call = driver.client.call

    async def counting(method: str, full_key: str | None, query: Any = (), headers: Any = None,
                       body: bytes | None = None) -> Any:
        if not (headers and "x-amz-copy-source-range" in headers):
            return await call(method, full_key, query, headers, body)
        seen["copies"] += 1
        if seen["copies"] == fail_copy:
            raise StorageError("copy refused")
        seen["in_flight"] += 1
        seen["most"] = max(seen["most"], seen["in_flight"])
        try:
            return await call(method, full_key, query, headers, body)
        finally:
            seen["in_flight"] -= 1

    driver.client.call = counting  # type: ignore[method-assign]
    return seen


async def appended(driver: S3Driver, key: str, parts: int) -> bytes:
    data = payload(parts * MIN_PART, seed=parts)
    for index in range(parts):
        writer = await driver.open_append(key)
        writer.write(data[index * MIN_PART:(index + 1) * MIN_PART])
        await writer.finish()
    return data


@pytest_twisted.ensureDeferred
async def test_assembly_copies_parts_in_parallel_within_a_bound(driver: S3Driver, s3: S3Server) -> None:
    parts = COPY_CONCURRENCY + 3
    data = await appended(driver, "uploads/many/data", parts)
    seen = watch_copies(driver)
    await driver.move("uploads/many/data", "blobs/many/data")
    assert seen["copies"] == parts
    assert 1 < seen["most"] <= COPY_CONCURRENCY
    assert await driver.read("blobs/many/data") == data
    assert [k for k in s3.keys(driver.client.options.bucket)] == ["blobs/many/data"]


@pytest_twisted.ensureDeferred
async def test_a_failed_part_copy_fails_the_move_and_changes_nothing(driver: S3Driver, s3: S3Server) -> None:
    data = await appended(driver, "uploads/failing/data", 8)
    seen = watch_copies(driver, fail_copy=3)
    with pytest.raises(StorageError, match="copy refused"):
        await driver.move("uploads/failing/data", "blobs/failing/data")
    assert seen["in_flight"] == 0  # every other copy settled before the upload was aborted
    assert await driver.stat("blobs/failing/data") is None
    assert await driver.read("uploads/failing/data") == data


@pytest_twisted.ensureDeferred
async def test_chunks_in_other_processes_complete_without_reading_the_upload_again(driver: S3Driver) -> None:
    """The hash state is saved as an object beside the upload: a process that did not
    receive the chunks completes without a single read of the upload's bytes."""
    rehashes = []
    hash_object = driver.hash_object

    def counted(key: str, algorithm: str) -> Deferred[str]:
        rehashes.append(key)
        return hash_object(key, algorithm)

    driver.hash_object = counted  # type: ignore[method-assign]

    def process() -> UploadSessions:
        return UploadSessions(driver, BlobStore(driver), Clock(), 1 << 30)

    session = await process().start("team/app")
    data = payload(2 * MIN_PART + 5, seed=4)
    for first, last in ((0, 1000), (1000, MIN_PART + 7), (MIN_PART + 7, len(data))):
        sink = await process().open_sink("team/app", session, first)
        sink.write(data[first:last])
        await sink.finish()
    assert await process().complete("team/app", session, Digest.of(data)) == len(data)
    assert rehashes == []
    assert await driver.read(paths.blob_data(Digest.of(data))) == data

class RecordingHook:
    """Sees every request the S3 client sends: (method, path, Range header or None)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def request(self, agent: Any, method: bytes, uri: bytes, headers: Any, body: Any) -> Any:
        ranges = headers.getRawHeaders(b"Range") if headers is not None else None
        path = uri.decode().split("?")[0].split("/", 3)[3]
        self.seen.append((method.decode(), path, ranges[0].decode() if ranges else None))
        return agent.request(method, uri, headers, body)


@pytest_twisted.ensureDeferred
async def test_a_whole_object_is_read_with_one_get_and_a_range_with_one_ranged_get(s3: S3Server) -> None:
    """Opening and streaming a whole object is one GET without Range (its answer gives the
    size and ETag); a range asked after opening is one more GET, with Range and If-Match."""
    from angosd.outbound.client import make_client
    from angosd.storage.s3_client import S3Options
    from tests.pools import started_pools
    from tests.s3_server import s3_options
    from tests.unit.test_storage_drivers import PausingConsumer, drain

    hook = RecordingHook()
    options = s3_options(s3, s3.new_bucket("one-get"))
    assert isinstance(options, S3Options)
    driver = S3Driver(reactor, make_client(reactor, hook=hook)[0], options, started_pools(reactor).io)
    data = payload(3 * MiB + 17, seed=4)
    await driver.write("blobs/big", data)
    bucket_key = f"{options.bucket}/blobs/big"

    hook.seen.clear()
    handle = await driver.open_read("blobs/big")
    assert handle.size == len(data)
    consumer = PausingConsumer()
    await drain(handle.write_to(consumer, 0, len(data) - 1), consumer)
    assert consumer.received == data
    assert hook.seen == [("GET", bucket_key, None)]

    hook.seen.clear()
    handle = await driver.open_read("blobs/big")
    consumer = PausingConsumer()
    await drain(handle.write_to(consumer, MiB, 2 * MiB), consumer)
    assert consumer.received == data[MiB:2 * MiB + 1]
    assert hook.seen == [("GET", bucket_key, None), ("GET", bucket_key, f"bytes={MiB}-{2 * MiB}")]

    hook.seen.clear()
    await driver.write("blobs/small", b"tiny")
    hook.seen.clear()
    assert await (await driver.open_read("blobs/small")).read_all() == b"tiny"
    assert hook.seen == [("GET", f"{options.bucket}/blobs/small", None)]

    with pytest.raises(PathNotFound):
        await driver.open_read("blobs/missing")


@pytest_twisted.ensureDeferred
async def test_a_second_writer_at_the_same_offset_is_refused(driver: S3Driver) -> None:
    """Two appenders that opened at the same size (two daemons without a lock): the first part
    wins, the other writer fails instead of replacing it, and the size never lies."""
    key = "uploads/race/data"
    first = await driver.open_append(key)
    second = await driver.open_append(key)
    first.write(b"from the first writer")
    await first.finish()
    second.write(b"second!")
    with pytest.raises(StorageError, match="another writer"):
        await second.finish()
    assert await driver.read(key) == b"from the first writer"
    assert await driver.stat(key) == len(b"from the first writer")


@pytest_twisted.ensureDeferred
async def test_writer_pauses_its_producer_while_parts_are_stored(driver: S3Driver) -> None:
    class Producer:
        paused = False
        pauses = 0

        def pauseProducing(self) -> None:
            self.paused = True
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    writer = await driver.open_append("uploads/pause/data")
    producer = Producer()
    writer.registerProducer(producer, True)  # type: ignore[attr-defined]
    chunk = payload(MiB, seed=3)
    written = 0
    while not producer.paused:
        writer.write(chunk)
        written += len(chunk)
        assert written <= 3 * MIN_PART, "the writer must push back before it holds three parts"
    await writer.finish()
    assert not producer.paused and producer.pauses >= 1
    assert await driver.stat("uploads/pause/data") == written


@pytest_twisted.ensureDeferred
async def test_key_prefix_isolates_stores_in_one_bucket(s3: S3Server) -> None:
    bucket = s3.new_bucket("prefix")
    one = s3_driver(reactor, s3, bucket, key_prefix="one/")
    two = s3_driver(reactor, s3, bucket, key_prefix="two")
    await one.write("repositories/a/x", b"1")  # type: ignore[attr-defined]
    await two.write("repositories/a/x", b"2")  # type: ignore[attr-defined]
    assert await one.read("repositories/a/x") == b"1"  # type: ignore[attr-defined]
    assert await two.children("repositories") == ["a"]  # type: ignore[attr-defined]
    assert sorted(s3.keys(bucket)) == ["one/repositories/a/x", "two/repositories/a/x"]


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 SlowDown to the first ``failures`` requests, then 200."""

    failures = 0
    seen = 0

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen += 1
        body = b"" if self.seen > self.failures else b"<Error><Code>SlowDown</Code><Message>easy</Message></Error>"
        self.send_response(200 if self.seen > self.failures else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_server_errors_are_retried_then_reported(tmp_path: Path) -> None:
    flaky = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    server = S3Server(str(tmp_path), port=flaky.server_address[1])
    try:
        _Flaky.failures, _Flaky.seen = 2, 0
        patient = s3_driver(reactor, server, "bucket", max_attempts=3)
        await patient.write("k", b"v")  # type: ignore[attr-defined]
        assert _Flaky.seen == 3
        _Flaky.failures, _Flaky.seen = 5, 0
        hasty = s3_driver(reactor, server, "bucket", max_attempts=2)
        with pytest.raises(StorageError, match="unavailable: HTTP 503 SlowDown easy"):
            await hasty.write("k", b"v")  # type: ignore[attr-defined]
        assert _Flaky.seen == 2
    finally:
        flaky.shutdown()
        flaky.server_close()


def test_slicing_segments_maps_logical_ranges() -> None:
    from angosd.storage.s3_read import Segment, slice_segments

    segments = [Segment("base", 0, 3), Segment("p/3", 0, 4), Segment("p/7", 0, 2)]
    assert slice_segments(segments, 0, 8) == segments
    assert slice_segments(segments, 2, 4) == [Segment("base", 2, 1), Segment("p/3", 0, 2)]
    assert slice_segments(segments, 7, 7) == [Segment("p/7", 0, 1)]
    assert slice_segments(segments, 5, 20) == [Segment("p/3", 2, 2), Segment("p/7", 0, 2)]
    assert slice_segments(segments, 9, 12) == []


def test_received_pieces_are_taken_in_order_across_boundaries() -> None:
    from angosd.storage.s3_read import _Pieces

    data = payload(1_000, seed=3)
    pieces = _Pieces()
    for start, end in ((0, 300), (300, 300), (300, 301), (301, 700), (700, 1_000)):
        pieces.append(memoryview(data)[start:end] if start % 2 else data[start:end])
    assert len(pieces) == 1_000
    assert [pieces.take(size) for size in (250, 51, 399, 1, 5_000)] == [
        data[:250], data[250:301], data[301:700], data[700:701], data[701:]]
    assert len(pieces) == 0 and not pieces
    whole = payload(10, seed=4)
    pieces.append(whole)
    assert pieces.take(10) is whole  # a piece that is exactly a chunk is passed on, not copied


def test_metadata_store_on_s3_beside_a_filesystem_blob_store(tmp_path: Path, s3: S3Server) -> None:
    """``[metadata_store.s3]``: tags, revisions and ownership records in the bucket, blob bytes
    and upload sessions in the filesystem store."""
    bucket = s3.new_bucket("meta")
    config = tmp_path / "split.toml"
    config.write_text(s3_config(s3, bucket).replace("[blob_store.s3]", "[metadata_store.s3]")
                      + f'[blob_store.fs]\nroot_dir = "{tmp_path / "data"}"\n')
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "data"), configs=(str(config),)).start()
    try:
        layer, image_config = payload(300_000, seed=50), b'{"os": "linux", "n": 50}'
        push_blob(daemon, "team/split", layer)
        push_blob(daemon, "team/split", image_config)
        body = image_manifest(image_config, [layer])
        push_manifest(daemon, "team/split", "v1", body)
        pending = start_upload(daemon, "team/split")
        assert daemon.request("GET", "/v2/team/split/manifests/v1").body == body
        assert daemon.request("GET", f"/v2/team/split/blobs/{digest(layer)}").body == layer
        assert daemon.request("GET", "/v2/team/split/tags/list").json()["tags"] == ["v1"]
        keys = s3.keys(bucket)
        assert keys and all(key.startswith("repositories/team/split/") for key in keys), keys
        assert not [key for key in keys if "/_uploads/" in key]
        assert any("/_manifests/tags/v1" in key for key in keys), keys
        assert (tmp_path / "data" / "blobs").is_dir()
        assert (tmp_path / "data" / "repositories" / "team" / "split" / "_uploads" / pending.rsplit("/", 1)[1]).is_dir()
        assert not (tmp_path / "data" / "repositories" / "team" / "split" / "_manifests").exists()
    finally:
        daemon.stop()

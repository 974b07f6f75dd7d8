"""Pull-through cache against real upstream registries on loopback.

Upstreams: Debian's docker-registry (distribution 2.8) anonymous, behind htpasswd Basic
auth, behind token auth (our token endpoint), over TLS requiring a client certificate,
and a second angosd; plus a fake upstream that corrupts or cuts blobs. The mirror is a
real angosd whose repository ``hub`` maps ``hub/<name>`` to ``<name>`` upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, Response
from tests.integration.images import (
    SKOPEO,
    Layout,
    build_artifact,
    build_image,
    build_index,
    digest_of_file,
    inspect_raw,
    skopeo,
    skopeo_may_fail,
)
from tests.integration.upstreams import (
    DOCKER_REGISTRY,
    HTPASSWD,
    DockerRegistry,
    FakeUpstream,
    MiB,
    TlsFiles,
    TokenServer,
    push_blob,
    require_tool,
    wait_for,
)

NO_TLS = "--tls-verify=false"
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
PUSHER = ("pusher", "push-secret")
MIRROR = ("mirror", "mirror-secret")
FAST = {"connect_timeout_secs": 2, "read_timeout_secs": 15}


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Missing tools fail every test with the package to install (never a silent skip)."""
    require_tool(SKOPEO, "skopeo")
    require_tool(DOCKER_REGISTRY, "docker-registry")
    require_tool(HTPASSWD, "apache2-utils")


def start_mirror(base: Path, repositories: dict[str, list[dict[str, Any]]]) -> Daemon:
    """An angosd whose ``[repository."NAME"]`` blocks mirror the given upstream entries."""
    lines: list[str] = []
    for name, upstreams in repositories.items():
        lines.append(f'[repository."{name}"]')
        for upstream in upstreams:
            lines.append(f'[[repository."{name}".upstream]]')
            lines += [f"{key} = {json.dumps(value)}" for key, value in {**FAST, **upstream}.items()]
    base.mkdir(parents=True, exist_ok=True)
    config = base / "mirror.toml"
    config.write_text("\n".join(lines) + "\n")
    return Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()


def assert_clean_log(daemon: Daemon) -> None:
    """The (stopped) daemon logged no unhandled error or traceback."""
    text = daemon.log()
    for marker in ("Unhandled", "Traceback", "#critical"):
        assert marker not in text, f"{marker!r} in the mirror's log:\n{text[-4000:]}"


def get_manifest(daemon: Daemon, name: str, reference: str) -> Response:
    return daemon.request("GET", f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})


def blob_file(daemon: Daemon, digest: str) -> Path:
    """Where the mirror's filesystem store keeps a blob's bytes."""
    algorithm, _, hexdigest = digest.partition(":")
    return Path(daemon.root) / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"


def upload_sessions(daemon: Daemon, namespace: str) -> list[str]:
    uploads = Path(daemon.root) / "repositories" / namespace / "_uploads"
    return sorted(os.listdir(uploads)) if uploads.is_dir() else []


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their digest."""
    sha = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(0, size, 4 * MiB):
            chunk = os.urandom(min(4 * MiB, size - out.tell()))
            sha.update(chunk)
            out.write(chunk)
    return "sha256:" + sha.hexdigest()


def assert_pulled_identical(source: Layout, pulled_dir: Path) -> None:
    """Every blob skopeo wrote is byte-identical to the source layout's blob of that digest."""
    blobs = sorted((pulled_dir / "blobs" / "sha256").iterdir())
    assert blobs, f"nothing pulled into {pulled_dir}"
    for blob in blobs:
        original = Path(source.path) / "blobs" / "sha256" / blob.name
        assert original.is_file(), f"pulled a blob the source does not have: {blob.name}"
        assert digest_of_file(str(blob)) == f"sha256:{blob.name}"
        assert blob.read_bytes() == original.read_bytes()


def pull_and_compare(mirror: Daemon, source: Layout, name: str, tag: str, into: Path, *extra: str) -> None:
    """``skopeo inspect --raw`` and ``skopeo copy`` through the mirror give the source's bytes."""
    remote = f"docker://{mirror.host}/hub/{name}:{tag}"
    assert inspect_raw(remote, NO_TLS) == inspect_raw(source.ref)
    skopeo("copy", *extra, "--src-tls-verify=false", remote, f"oci:{into}:{tag}")
    assert inspect_raw(f"oci:{into}:{tag}") == inspect_raw(source.ref)
    assert_pulled_identical(source, into)


def get_blob_raw(daemon: Daemon, path: str) -> tuple[int, int | None, bytes, bool]:
    """GET a blob; returns (status, Content-Length, bytes read, complete?) without raising
    when the server cuts the body short."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        try:
            body = response.read()
            complete = True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        except (ConnectionError, OSError):
            body, complete = b"", False
        return response.status, int(length) if length is not None else None, body, complete
    finally:
        connection.close()


# -- upstream kinds ------------------------------------------------------------------------------


@dataclass
class Upstream:
    """An upstream registry under test: how to push to it and how the mirror reaches it."""

    url: str
    host: str
    push_args: list[str]
    mirror_entry: dict[str, Any]
    bad_entry: dict[str, Any] | None = None  # an upstream entry lacking the credentials
    stop: Callable[[], None] = lambda: None
    checks: list[Callable[[], None]] = field(default_factory=list)

    def push(self, layout: Layout, target: str, *extra: str) -> None:
        skopeo("copy", *self.push_args, *extra, layout.ref, f"docker://{self.host}/{target}")


def anonymous_upstream(base: Path) -> Upstream:
    registry = DockerRegistry(base).start()
    return Upstream(registry.url, registry.host, registry.skopeo_dest(), {"url": registry.url}, stop=registry.stop)


def basic_upstream(base: Path) -> Upstream:
    registry = DockerRegistry(base, htpasswd=PUSHER).start()
    connection = registry.connection()
    connection.request("GET", "/v2/")
    refused = connection.getresponse()
    refused.read()
    connection.close()
    assert refused.status == 401 and "Basic" in (refused.getheader("WWW-Authenticate") or "")
    entry = {"url": registry.url, "username": PUSHER[0], "password": PUSHER[1]}
    return Upstream(registry.url, registry.host, registry.skopeo_dest(), entry, {"url": registry.url},
                    stop=registry.stop)


def token_upstream(base: Path) -> Upstream:
    tokens = TokenServer(base, {PUSHER[0]: PUSHER[1], MIRROR[0]: MIRROR[1]})
    registry = DockerRegistry(base, token=tokens).start()

    def stop() -> None:
        registry.stop()
        tokens.close()

    def negotiated() -> None:
        assert ("repository:library/app:pull", tokens.service, MIRROR[0]) in tokens.requests, tokens.requests

    entry = {"url": registry.url, "username": MIRROR[0], "password": MIRROR[1]}
    return Upstream(registry.url, registry.host, registry.skopeo_dest(PUSHER), entry, {"url": registry.url},
                    stop=stop, checks=[negotiated])


def mtls_upstream(base: Path) -> Upstream:
    tls = TlsFiles.create(base / "tls")
    registry = DockerRegistry(base, tls=tls).start()
    entry = {"url": registry.url, "server_ca_bundle": tls.ca_file, "client_certificate": tls.client_cert,
             "client_private_key": tls.client_key}
    return Upstream(registry.url, registry.host, registry.skopeo_dest(), entry,
                    {"url": registry.url, "server_ca_bundle": tls.ca_file}, stop=registry.stop)


def angosd_upstream(base: Path) -> Upstream:
    daemon = Daemon(str(base / "work"), str(base / "store")).start()
    return Upstream(daemon.url, daemon.host, ["--dest-tls-verify=false"], {"url": daemon.url}, stop=daemon.stop)


UPSTREAMS: dict[str, Callable[[Path], Upstream]] = {
    "anonymous": anonymous_upstream,
    "basic": basic_upstream,
    "token": token_upstream,
    "mtls": mtls_upstream,
    "angosd": angosd_upstream,
}


# -- pulls through each kind of upstream --------------------------------------------------------


@pytest.mark.parametrize("kind", list(UPSTREAMS))
def test_pull_through_is_byte_identical(kind: str, tmp_path: Path) -> None:
    upstream = UPSTREAMS[kind](tmp_path / "upstream")
    mirror = None
    try:
        image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096, 300_000), seed=list(UPSTREAMS).index(kind))
        index = build_index(str(tmp_path / "src"), "multi", seed=7)
        upstream.push(image, "library/app:v1")
        upstream.push(index, "library/app:multi", "--all")
        artifact = None
        if kind == "angosd":
            artifact = build_artifact(str(tmp_path / "src"), image, "sig")
            upstream.push(artifact, "library/app:sig")
        repositories = {"hub": [upstream.mirror_entry]}
        if upstream.bad_entry is not None:
            repositories["nocreds"] = [upstream.bad_entry]
        mirror = start_mirror(tmp_path / "mirror", repositories)

        if artifact is not None:  # referrers come from upstream before anything is cached
            listed = mirror.request("GET", f"/v2/hub/library/app/referrers/{image.digest}")
            assert listed.status == 200, listed
            assert [(m["digest"], m["artifactType"]) for m in listed.json()["manifests"]] == [
                (artifact.digest, "application/vnd.example.signature.v1")]

        pull_and_compare(mirror, image, "library/app", "v1", tmp_path / "pulled-image")
        pull_and_compare(mirror, index, "library/app", "multi", tmp_path / "pulled-index", "--all")
        for child in json.loads(inspect_raw(index.ref))["manifests"]:
            served = get_manifest(mirror, "hub/library/app", child["digest"])
            assert served.status == 200 and served.headers["x-angosd-cache"] == "hit"
        for digest in [image.digest, index.digest]:
            assert blob_file(mirror, digest).is_file()
        layers = json.loads(inspect_raw(image.ref))["layers"]
        assert all(blob_file(mirror, layer["digest"]).is_file() for layer in layers)

        tags = mirror.request("GET", "/v2/hub/library/app/tags/list")
        assert tags.status == 200 and {"v1", "multi"} <= set(tags.json()["tags"]), tags
        again = get_manifest(mirror, "hub/library/app", "v1")  # mutable tag: revalidated, unchanged
        assert again.status == 200 and again.headers["x-angosd-cache"] == "hit"
        assert again.headers["docker-content-digest"] == image.digest

        if artifact is not None:
            pull_and_compare(mirror, artifact, "library/app", "sig", tmp_path / "pulled-artifact")
            listed = mirror.request("GET", f"/v2/hub/library/app/referrers/{image.digest}")
            assert [m["digest"] for m in listed.json()["manifests"]] == [artifact.digest]
        if upstream.bad_entry is not None:  # without the credentials the same upstream is unusable
            refused = get_manifest(mirror, "nocreds/library/app", "v1")
            assert refused.status == 503 and refused.error_codes == ["UNAVAILABLE"], refused
        for check in upstream.checks:
            check()
    finally:
        if mirror is not None:
            mirror.stop()
        upstream.stop()


# -- outages ------------------------------------------------------------------------------------


def test_stale_if_error_then_revalidation(tmp_path: Path) -> None:
    registry = DockerRegistry(tmp_path / "upstream").start()
    mirror = start_mirror(tmp_path / "mirror", {"hub": [{"url": registry.url}]})
    try:
        first = build_image(str(tmp_path / "src"), "v1", seed=20)
        other = build_image(str(tmp_path / "src"), "other", seed=21)
        skopeo("copy", *registry.skopeo_dest(), first.ref, f"docker://{registry.host}/library/app:v1")
        skopeo("copy", *registry.skopeo_dest(), other.ref, f"docker://{registry.host}/library/other:v1")
        pull_and_compare(mirror, first, "library/app", "v1", tmp_path / "warm")

        registry.stop()
        by_tag = f"docker://{mirror.host}/hub/library/app:v1"
        skopeo("copy", "--src-tls-verify=false", by_tag, f"oci:{tmp_path / 'offline-tag'}:v1")
        by_digest = f"docker://{mirror.host}/hub/library/app@{first.digest}"
        skopeo("copy", "--src-tls-verify=false", by_digest, f"oci:{tmp_path / 'offline-digest'}:v1")
        for pulled in ("offline-tag", "offline-digest"):
            assert inspect_raw(f"oci:{tmp_path / pulled}:v1") == inspect_raw(first.ref)
        stale = get_manifest(mirror, "hub/library/app", "v1")
        assert stale.status == 200 and stale.headers["x-angosd-cache"] == "stale"
        assert stale.headers["warning"].startswith("110 ")
        assert stale.headers["docker-content-digest"] == first.digest
        assert get_manifest(mirror, "hub/library/app", first.digest).headers["x-angosd-cache"] == "hit"

        missing = get_manifest(mirror, "hub/library/other", "v1")
        assert missing.status == 503 and missing.error_codes == ["UNAVAILABLE"], missing
        failed = skopeo_may_fail("copy", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/other:v1",
                                 f"oci:{tmp_path / 'never'}:v1", timeout=120)
        assert failed.returncode != 0
        assert "503 Service Unavailable" in failed.stderr, failed.stderr

        registry.start()
        heads = registry.count("HEAD", "/v2/library/app/manifests/v1")
        gets = registry.count("GET", "/v2/library/app/manifests/v1")
        back = get_manifest(mirror, "hub/library/app", "v1")
        assert back.status == 200 and back.headers["x-angosd-cache"] == "hit"
        wait_for(lambda: registry.count("HEAD", "/v2/library/app/manifests/v1") == heads + 1, 5, "the HEAD")
        assert registry.count("GET", "/v2/library/app/manifests/v1") == gets

        moved = build_image(str(tmp_path / "src"), "v1-new", seed=22)
        skopeo("copy", *registry.skopeo_dest(), moved.ref, f"docker://{registry.host}/library/app:v1")
        refreshed = get_manifest(mirror, "hub/library/app", "v1")
        assert refreshed.status == 200 and refreshed.headers["x-angosd-cache"] == "miss"
        assert refreshed.headers["docker-content-digest"] == moved.digest
        pull_and_compare(mirror, moved, "library/app", "v1", tmp_path / "after-move")
        assert get_manifest(mirror, "hub/library/app", "v1").headers["x-angosd-cache"] == "hit"
    finally:
        mirror.stop()
        registry.stop()


# -- broken upstream bodies ---------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    try:
        yield upstream
    finally:
        upstream.close()


def test_corrupted_blob_is_refused_and_not_cached(fake: FakeUpstream, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(3 * MiB,), seed=30)
    manifest = json.loads(inspect_raw(image.ref))
    for descriptor in [manifest["config"], *manifest["layers"]]:
        with open(image.blob_path(descriptor["digest"]), "rb") as blob:
            fake.add_blob(blob.read())
    layer = manifest["layers"][0]["digest"]
    fake.blobs[layer].mode = "corrupt"
    fake.add_manifest("library/bad", "v1", image.media_type, inspect_raw(image.ref))
    mirror = start_mirror(tmp_path / "mirror", {"hub": [{"url": fake.url}]})
    try:
        failed = skopeo_may_fail("copy", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/bad:v1",
                                 f"oci:{tmp_path / 'pulled'}:v1", timeout=120)
        assert failed.returncode != 0, "skopeo copied an image whose layer is corrupt"
        config = manifest["config"]["digest"]  # a good blob of the same upstream fills fine
        status, _, _, complete = get_blob_raw(mirror, f"/v2/hub/library/bad/blobs/{config}")
        assert (status, complete) == (200, True)
        assert blob_file(mirror, config).is_file()

        for attempt in range(2):
            before = fake.blob_gets.get(layer, 0)
            status, length, body, complete = get_blob_raw(mirror, f"/v2/hub/library/bad/blobs/{layer}")
            assert status == 200 and length == manifest["layers"][0]["size"]
            assert not complete and len(body) < (length or 0), f"attempt {attempt}: the body was not cut short"
            assert fake.blob_gets[layer] == before + 1, "each request must be a fill from upstream"
            assert not blob_file(mirror, layer).exists()
            wait_for(lambda: not upload_sessions(mirror, "hub/library/bad"), 5, "the fill's session to go")
        assert not list((Path(mirror.root) / "blobs").rglob(f"{layer.partition(':')[2]}*"))
    finally:
        mirror.stop()
    assert_clean_log(mirror)


def test_upstream_dying_mid_blob_leaves_nothing_and_recovers(fake: FakeUpstream, tmp_path: Path) -> None:
    data = os.urandom(32 * MiB)
    digest = fake.add_blob(data, mode="die")
    mirror = start_mirror(tmp_path / "mirror", {"hub": [{"url": fake.url}]})
    try:
        status, length, body, complete = get_blob_raw(mirror, f"/v2/hub/library/big/blobs/{digest}")
        assert status == 200 and length == len(data)
        assert not complete and len(body) <= len(data) // 2
        assert body == data[: len(body)]
        wait_for(lambda: not upload_sessions(mirror, "hub/library/big"), 5, "the fill's session to go")
        assert not blob_file(mirror, digest).exists()

        fake.blobs[digest].mode = "ok"
        status, length, body, complete = get_blob_raw(mirror, f"/v2/hub/library/big/blobs/{digest}")
        assert (status, complete) == (200, True) and body == data
        assert blob_file(mirror, digest).read_bytes() == data
        assert fake.blob_gets[digest] == 2
        assert not upload_sessions(mirror, "hub/library/big")
    finally:
        mirror.stop()
    assert_clean_log(mirror)


def test_slow_client_does_not_trip_the_upstream_idle_timeout(fake: FakeUpstream, tmp_path: Path) -> None:
    """A client that stops reading for longer than read_timeout_secs pauses the upstream; that
    pause is not the upstream going quiet, so the fill (and the client's download) go on."""
    data = os.urandom(32 * MiB)
    digest = fake.add_blob(data)
    mirror = start_mirror(tmp_path / "mirror", {"hub": [{"url": fake.url, "read_timeout_secs": 1}]})
    try:
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=60)
        connection.request("GET", f"/v2/hub/library/slow/blobs/{digest}")
        response = connection.getresponse()
        first = response.read(MiB)
        time.sleep(3)
        try:
            rest = response.read()
        except http.client.IncompleteRead as exc:
            raise AssertionError(f"the mirror cut a paused client after {MiB + len(exc.partial)} bytes") from None
        connection.close()
        assert first + rest == data
        assert blob_file(mirror, digest).read_bytes() == data
        assert fake.blob_gets[digest] == 1
    finally:
        mirror.stop()
    assert_clean_log(mirror)


# -- one shared anonymous upstream and mirror ----------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockerRegistry, Daemon]]:
    base = tmp_path_factory.mktemp("pair")
    registry = DockerRegistry(base / "upstream").start()
    try:
        mirror = start_mirror(base / "mirror", {"hub": [{"url": registry.url}]})
        try:
            yield registry, mirror
        finally:
            mirror.stop()
        assert_clean_log(mirror)
    finally:
        registry.stop()


@pytest.mark.slow
def test_concurrent_pulls_share_one_fill(pair: tuple[DockerRegistry, Daemon], tmp_path: Path) -> None:
    registry, mirror = pair
    size = 100 * MiB
    digest = random_file(tmp_path / "big", size)
    push_blob(registry.connection(), "library/herd", str(tmp_path / "big"), digest)
    barrier = threading.Barrier(8)
    results: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
            barrier.wait()
            connection.request("GET", f"/v2/hub/library/herd/blobs/{digest}")
            response = connection.getresponse()
            sha, received = hashlib.sha256(), 0
            while chunk := response.read(MiB):
                sha.update(chunk)
                received += len(chunk)
            results.append((response.status, received, "sha256:" + sha.hexdigest()))
            connection.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert results == [(200, size, digest)] * 8
    assert registry.count("GET", f"/v2/library/herd/blobs/{digest}") == 1, list(registry.requests())
    assert digest_of_file(str(blob_file(mirror, digest))) == digest


def test_client_disconnect_does_not_abort_the_fill(pair: tuple[DockerRegistry, Daemon], tmp_path: Path) -> None:
    registry, mirror = pair
    size = 48 * MiB
    digest = random_file(tmp_path / "blob", size)
    push_blob(registry.connection(), "library/quitter", str(tmp_path / "blob"), digest)

    client = socket.create_connection(("127.0.0.1", mirror.port))
    client.sendall(f"GET /v2/hub/library/quitter/blobs/{digest} HTTP/1.1\r\nHost: {mirror.host}\r\n\r\n".encode())
    received = b""
    while len(received) < MiB:
        chunk = client.recv(256 * 1024)
        assert chunk, "the mirror closed the connection early"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    client.close()

    wait_for(lambda: blob_file(mirror, digest).is_file(), 10, "the fill to complete")
    assert digest_of_file(str(blob_file(mirror, digest))) == digest
    status, length, body, complete = get_blob_raw(mirror, f"/v2/hub/library/quitter/blobs/{digest}")
    assert (status, length, complete) == (200, size, True)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert registry.count("GET", f"/v2/library/quitter/blobs/{digest}") == 1
    assert not upload_sessions(mirror, "hub/library/quitter")


def test_follower_leaving_does_not_strand_the_others(pair: tuple[DockerRegistry, Daemon], tmp_path: Path) -> None:
    """A request waiting for another's fill disconnects; the fill and later waiters carry on."""
    registry, mirror = pair
    size = 32 * MiB
    digest = random_file(tmp_path / "blob", size)
    push_blob(registry.connection(), "library/crowd", str(tmp_path / "blob"), digest)
    path = f"/v2/hub/library/crowd/blobs/{digest}"

    leader = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=60)
    leader.request("GET", path)
    leading = leader.getresponse()  # headers are in: the fill runs, throttled by this reader
    first = leading.read(MiB)
    quitter = socket.create_connection(("127.0.0.1", mirror.port))
    quitter.sendall(f"GET {path} HTTP/1.1\r\nHost: {mirror.host}\r\n\r\n".encode())
    waiter_result: list[tuple[int, int | None, bytes, bool]] = []
    waiter = threading.Thread(target=lambda: waiter_result.append(get_blob_raw(mirror, path)))
    time.sleep(0.5)  # the quitter is waiting for the fill
    quitter.close()
    waiter.start()
    time.sleep(0.5)  # and so is the waiter, queued behind the quitter
    rest = leading.read()
    leader.close()
    assert "sha256:" + hashlib.sha256(first + rest).hexdigest() == digest
    waiter.join(30)
    assert not waiter.is_alive(), "a request waiting for the fill was never answered"
    status, length, body, complete = waiter_result[0]
    assert (status, length, complete) == (200, size, True)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert registry.count("GET", f"/v2/library/crowd/blobs/{digest}") == 1


def test_pushes_refused_and_delete_evicts(pair: tuple[DockerRegistry, Daemon], tmp_path: Path) -> None:
    registry, mirror = pair
    image = build_image(str(tmp_path / "src"), "v1", seed=40)
    skopeo("copy", *registry.skopeo_dest(), image.ref, f"docker://{registry.host}/library/evict:v1")
    assert get_manifest(mirror, "hub/library/evict", "v1").headers["x-angosd-cache"] == "miss"

    started = mirror.request("POST", "/v2/hub/library/evict/blobs/uploads/")
    assert started.status == 415 and started.error_codes == ["UNSUPPORTED"], started
    put = mirror.request("PUT", "/v2/hub/library/evict/manifests/v2", inspect_raw(image.ref),
                         {"Content-Type": image.media_type})
    assert put.status == 415 and put.error_codes == ["UNSUPPORTED"], put
    pushed = skopeo_may_fail("copy", "--dest-tls-verify=false", image.ref,
                             f"docker://{mirror.host}/hub/library/evict:v2", timeout=120)
    assert pushed.returncode != 0
    assert get_manifest(mirror, "hub/library/evict", "v2").status == 404

    gets = registry.count("GET", "/v2/library/evict/manifests/v1")
    deleted = mirror.request("DELETE", f"/v2/hub/library/evict/manifests/{image.digest}")
    assert deleted.status == 202, deleted
    assert not (Path(mirror.root) / "repositories/hub/library/evict/_manifests/tags/v1").exists()
    refilled = get_manifest(mirror, "hub/library/evict", "v1")
    assert refilled.status == 200 and refilled.headers["x-angosd-cache"] == "miss"
    assert refilled.headers["docker-content-digest"] == image.digest
    assert registry.count("GET", "/v2/library/evict/manifests/v1") == gets + 1
    pull_and_compare(mirror, image, "library/evict", "v1", tmp_path / "pulled")


# -- ns= ------------------------------------------------------------------------------------------


def test_ns_serves_two_upstream_registries_behind_one_path(tmp_path: Path) -> None:
    """containerd's ``hosts.toml`` mirrors send ``/v2/library/app/...?ns=<registry>``: each
    repository declaring that ``namespace`` serves it from its own upstream."""
    docker_io = DockerRegistry(tmp_path / "docker-io").start()
    quay_io = DockerRegistry(tmp_path / "quay-io").start()
    lines = ['[repository."hub"]', 'namespace = "docker.io"', '[[repository."hub".upstream]]',
             f"url = {json.dumps(docker_io.url)}", '[repository."quay"]', 'namespace = "quay.io"',
             '[[repository."quay".upstream]]', f"url = {json.dumps(quay_io.url)}"]
    (tmp_path / "mirror").mkdir()
    config = tmp_path / "mirror" / "mirror.toml"
    config.write_text("\n".join(lines) + "\n")
    mirror = Daemon(str(tmp_path / "mirror" / "work"), str(tmp_path / "mirror" / "store"),
                    configs=(str(config),)).start()
    try:
        hub_image = build_image(str(tmp_path / "src"), "hub", seed=40)
        quay_image = build_image(str(tmp_path / "src"), "quay", seed=41)
        skopeo("copy", *docker_io.skopeo_dest(), hub_image.ref, f"docker://{docker_io.host}/library/app:v1")
        skopeo("copy", *quay_io.skopeo_dest(), quay_image.ref, f"docker://{quay_io.host}/library/app:v1")
        for ns, image, repository in (("docker.io", hub_image, "hub"), ("quay.io", quay_image, "quay")):
            response = mirror.request("GET", f"/v2/library/app/manifests/v1?ns={ns}",
                                      headers={"Accept": MANIFEST_ACCEPT})
            assert response.status == 200, response
            assert response.headers["docker-content-digest"] == image.digest
            assert response.headers["oci-namespace"] == ns
            config_digest = json.loads(response.body)["config"]["digest"]
            blob = mirror.request("GET", f"/v2/library/app/blobs/{config_digest}?ns={ns}")
            assert blob.status == 200 and blob.body == Path(image.path, "blobs", "sha256",
                                                            config_digest.split(":")[1]).read_bytes()
            tags = mirror.request("GET", f"/v2/library/app/tags/list?ns={ns}")
            assert tags.json()["tags"] == ["v1"]
            # The same content under the repository's own path (it was cached there).
            assert get_manifest(mirror, f"{repository}/library/app", "v1").headers["x-angosd-cache"] == "hit"
        unknown = mirror.request("GET", "/v2/library/app/manifests/v1?ns=ghcr.io")
        assert unknown.status == 404, unknown
    finally:
        mirror.stop()
        docker_io.stop()
        quay_io.stop()
    assert_clean_log(mirror)

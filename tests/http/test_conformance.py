"""OCI Distribution v1.1 conformance of the HTTP API, over HTTP bytes to the real application.

Here the application runs in memory (`tests.inmemory.InMemoryDaemon`, see ``conftest``);
`tests.integration.test_api_conformance_workers` runs these same tests against a daemon
process with two workers. Most tests share one daemon (`shared_daemon`) and each works in its
own namespace (the ``ns`` fixture); tests that need an exact catalog run a fresh `daemon`.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.daemon import Client, Response
from tests.integration.ocihelpers import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_DIGEST,
    MAX_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    UUID_RE,
    assert_error,
    digest,
    encode,
    image_manifest,
    index_manifest,
    patch,
    payload,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
    start_upload,
    unique_namespace,
    with_query,
)


@pytest.fixture
def d(shared_daemon: Client) -> Client:
    return shared_daemon


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return unique_namespace(request.node.name, "conf")


#: A well-formed upload session id no session has (fixed, so test ids are stable).
NO_SESSION = "5f0c6d2a-7b1e-4c3d-9a8b-0123456789ab"


def unknown_digest(seed: str = "nothing") -> str:
    return digest(f"never uploaded: {seed}".encode())


# -- base, health, routing -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/v2/", "/v2"])
def test_api_version(d: Client, method: str, path: str) -> None:
    response = d.request(method, path)
    assert response.status == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health(d: Client, path: str) -> None:
    assert d.request("GET", path).status == 200


@pytest.mark.parametrize("path", [
    "/v2/nothing-here",
    "/v2/ns/unknown/endpoint",
    "/v2/ns/blobs/",
    "/v2/ns/manifests/",
    "/v2/_ext/nope",
])
def test_unknown_v2_path_is_oci_404(d: Client, path: str) -> None:
    assert_error(d.request("GET", path), 404)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/ns/tags/list"),
    ("DELETE", "/v2/ns/tags/list"),
    ("PUT", "/v2/"),
    ("POST", "/v2/_catalog"),
    ("POST", "/v2/ns/manifests/latest"),
    ("PATCH", f"/v2/ns/blobs/{EMPTY_DIGEST}"),
    ("PUT", f"/v2/ns/referrers/{EMPTY_DIGEST}"),
    ("GET", "/v2/ns/blobs/uploads/"),
    ("POST", f"/v2/ns/blobs/uploads/{NO_SESSION}"),
])
def test_wrong_method_is_405(d: Client, method: str, path: str) -> None:
    assert_error(d.request(method, path, b"" if method in ("POST", "PUT", "PATCH") else None), 405)


# -- uploads ---------------------------------------------------------------------------------


def assert_session(response: Response, namespace: str, size: int, status: int = 202) -> str:
    """An upload-session answer: ``status``, Location, Docker-Upload-UUID and Range for ``size`` bytes."""
    assert response.status == status, (response.status, response.body)
    location = response.headers["location"]
    match = re.fullmatch(rf"/v2/{re.escape(namespace)}/blobs/uploads/({UUID_RE})", location)
    assert match, location
    assert response.headers["docker-upload-uuid"] == match.group(1)
    assert response.headers["range"] == f"0-{max(size - 1, 0)}"
    return location


def assert_blob(d: Client, namespace: str, blob_digest: str, data: bytes) -> None:
    response = d.request("GET", f"/v2/{namespace}/blobs/{blob_digest}")
    assert response.status == 200, (response.status, response.body)
    assert response.body == data
    assert response.headers["docker-content-digest"] == blob_digest


def assert_created(response: Response, namespace: str, blob_digest: str) -> None:
    assert response.status == 201, (response.status, response.body)
    assert response.headers["location"] == f"/v2/{namespace}/blobs/{blob_digest}"
    assert response.headers["docker-content-digest"] == blob_digest


def test_start_upload(d: Client, ns: str) -> None:
    response = d.request("POST", f"/v2/{ns}/blobs/uploads/")
    location = assert_session(response, ns, 0)
    status = d.request("GET", location)
    assert_session(status, ns, 0, status=204)
    assert status.headers["location"] == location


def test_monolithic_upload(d: Client, ns: str) -> None:
    data = payload(5000)
    response = d.request("POST", f"/v2/{ns}/blobs/uploads/?digest={digest(data)}", data)
    assert_created(response, ns, digest(data))
    assert_blob(d, ns, digest(data), data)


def test_monolithic_upload_with_wrong_digest_stores_nothing(d: Client, ns: str) -> None:
    data, claimed = payload(3000), digest(b"something else")
    assert_error(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest={claimed}", data), 400, "DIGEST_INVALID")
    for blob_digest in (claimed, digest(data)):
        assert_error(d.request("GET", f"/v2/{ns}/blobs/{blob_digest}"), 404, "BLOB_UNKNOWN")


def test_monolithic_empty_blob(d: Client, ns: str) -> None:
    response = d.request("POST", f"/v2/{ns}/blobs/uploads/?digest={EMPTY_DIGEST}", b"")
    assert_created(response, ns, EMPTY_DIGEST)
    assert_blob(d, ns, EMPTY_DIGEST, b"")


def test_mount_from_owner(d: Client, ns: str) -> None:
    source, data = f"{ns}/source", payload(700, 1)
    blob_digest = push_blob(d, source, data)
    assert_error(d.request("GET", f"/v2/{ns}/blobs/{blob_digest}"), 404, "BLOB_UNKNOWN")
    response = d.request("POST", f"/v2/{ns}/blobs/uploads/?mount={blob_digest}&from={source}")
    assert_created(response, ns, blob_digest)
    assert_blob(d, ns, blob_digest, data)


def test_mount_without_from_finds_an_owner(d: Client, ns: str) -> None:
    data = payload(800, 2)
    blob_digest = push_blob(d, f"{ns}/elsewhere", data)
    assert_created(d.request("POST", f"/v2/{ns}/blobs/uploads/?mount={blob_digest}"), ns, blob_digest)
    assert_blob(d, ns, blob_digest, data)


@pytest.mark.parametrize("case", ["from-non-owner", "from-unknown-namespace", "from-invalid-name", "from-dot-dot",
                                  "from-empty", "unknown-digest", "no-from-unknown"])
def test_unsatisfiable_mount_opens_a_session(d: Client, ns: str, case: str) -> None:
    owned = push_blob(d, f"{ns}/owner", payload(900, 3))
    push_blob(d, f"{ns}/bystander", payload(10, 4))
    query = {
        "from-non-owner": f"mount={owned}&from={ns}/bystander",
        "from-unknown-namespace": f"mount={owned}&from={ns}/never-existed",
        "from-invalid-name": f"mount={owned}&from={ns.upper()}/OWNER",
        "from-dot-dot": f"mount={owned}&from={ns}/x/../owner",
        "from-empty": f"mount={owned}&from=",
        "unknown-digest": f"mount={unknown_digest()}&from={ns}/owner",
        "no-from-unknown": f"mount={unknown_digest()}",
    }[case]
    target = f"{ns}/target"
    location = assert_session(d.request("POST", f"/v2/{target}/blobs/uploads/?{query}"), target, 0)
    assert d.request("GET", location).status == 204
    mounted = owned if case.startswith("from") else unknown_digest()
    assert_error(d.request("GET", f"/v2/{target}/blobs/{mounted}"), 404, "BLOB_UNKNOWN")


def test_mount_with_malformed_digest(d: Client, ns: str) -> None:
    assert_error(d.request("POST", f"/v2/{ns}/blobs/uploads/?mount=sha256:abc&from={ns}/x"), 400, "DIGEST_INVALID")


def test_digest_algorithm_sha512(d: Client, ns: str) -> None:
    data = payload(4096, 5)
    location = assert_session(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest-algorithm=sha512"), ns, 0)
    location = assert_session(patch(d, location, data), ns, len(data))
    blob_digest = digest(data, "sha512")
    assert_created(d.request("PUT", with_query(location, f"digest={blob_digest}")), ns, blob_digest)
    assert_blob(d, ns, blob_digest, data)


def test_bogus_digest_algorithm(d: Client, ns: str) -> None:
    assert_error(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest-algorithm=md5"), 400, "DIGEST_INVALID")


def test_sha512_end_to_end(d: Client, ns: str) -> None:
    data = payload(2500, 6)
    blob_digest = push_blob(d, ns, data, "sha512")
    assert blob_digest.startswith("sha512:") and len(blob_digest) == 7 + 128
    assert_blob(d, ns, blob_digest, data)
    head = d.request("HEAD", f"/v2/{ns}/blobs/{blob_digest}")
    assert head.status == 200 and head.headers["content-length"] == str(len(data))
    assert_error(d.request("GET", f"/v2/{ns}/blobs/{digest(data)}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("with_range", [False, True], ids=["plain", "content-range"])
def test_chunked_upload(d: Client, ns: str, with_range: bool) -> None:
    data = payload(10_000, 7)
    chunks = [data[:4000], data[4000:4001], data[4001:]]
    location = start_upload(d, ns)
    offset = 0
    for chunk in chunks:
        location = assert_session(patch(d, location, chunk, offset if with_range else None), ns, offset + len(chunk))
        offset += len(chunk)
        assert_session(d.request("GET", location), ns, offset, status=204)
    blob_digest = digest(data)
    assert_created(d.request("PUT", with_query(location, f"digest={blob_digest}")), ns, blob_digest)
    assert_blob(d, ns, blob_digest, data)


def test_put_with_final_chunk(d: Client, ns: str) -> None:
    data = payload(6000, 8)
    location = assert_session(patch(d, start_upload(d, ns), data[:2500]), ns, 2500)
    response = d.request("PUT", with_query(location, f"digest={digest(data)}"), data[2500:],
                         {"Content-Type": "application/octet-stream"})
    assert_created(response, ns, digest(data))
    assert_blob(d, ns, digest(data), data)


def test_put_with_only_body(d: Client, ns: str) -> None:
    data = payload(1234, 9)
    response = d.request("PUT", with_query(start_upload(d, ns), f"digest={digest(data)}"), data)
    assert_created(response, ns, digest(data))
    assert_blob(d, ns, digest(data), data)


def test_chunked_transfer_encoding_patch(d: Client, ns: str) -> None:
    data = payload(50_000, 10)
    with d.connect() as connection:
        body = (data[i:i + 7000] for i in range(0, len(data), 7000))
        location = assert_session(connection.request("PATCH", start_upload(d, ns), body), ns, len(data))
        assert_created(connection.request("PUT", with_query(location, f"digest={digest(data)}")), ns, digest(data))
    assert_blob(d, ns, digest(data), data)


@pytest.mark.parametrize("bad_first", [0, 999, 1001], ids=["rewind", "overlap", "gap"])
def test_out_of_order_chunk_is_416_and_resumable(d: Client, ns: str, bad_first: int) -> None:
    data = payload(3000, 11)
    location = assert_session(patch(d, start_upload(d, ns), data[:1000], 0), ns, 1000)
    refused = patch(d, location, data[bad_first:bad_first + 500], bad_first)
    assert_error(refused, 416)
    assert_session(refused, ns, 1000, status=416)
    assert_session(d.request("GET", location), ns, 1000, status=204)
    location = assert_session(patch(d, refused.headers["location"], data[1000:], 1000), ns, len(data))
    assert_created(d.request("PUT", with_query(location, f"digest={digest(data)}")), ns, digest(data))
    assert_blob(d, ns, digest(data), data)


def test_content_range_not_matching_content_length_is_416(d: Client, ns: str) -> None:
    location = assert_session(patch(d, start_upload(d, ns), b"abcd", 0), ns, 4)
    refused = d.request("PATCH", location, b"efgh", {"Content-Range": "4-9"})
    assert_error(refused, 416)
    assert_session(refused, ns, 4, status=416)
    assert_session(d.request("GET", location), ns, 4, status=204)


def test_refused_chunk_keeps_the_connection_usable(d: Client, ns: str) -> None:
    location = start_upload(d, ns)
    with d.connect() as connection:
        assert_error(connection.request("PATCH", location, payload(200_000), {"Content-Range": "5-200004"}), 416)
        assert_session(connection.request("GET", location), ns, 0, status=204)
        assert_session(connection.request("PATCH", location, b"hello", {"Content-Range": "0-4"}), ns, 5)


def test_put_without_digest(d: Client, ns: str) -> None:
    location = assert_session(patch(d, start_upload(d, ns), b"some bytes"), ns, 10)
    assert_error(d.request("PUT", location), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("final_chunk", [False, True], ids=["no-body", "final-chunk"])
def test_put_with_mismatching_digest_stores_nothing(d: Client, ns: str, final_chunk: bool) -> None:
    data, claimed = payload(2000, 12), digest(b"not this")
    location = patch(d, start_upload(d, ns), data[:1000]).headers["location"]
    rest = data[1000:] if final_chunk else None
    assert_error(d.request("PUT", with_query(location, f"digest={claimed}"), rest), 400, "DIGEST_INVALID")
    for blob_digest in (claimed, digest(data), digest(data[:1000])):
        assert_error(d.request("GET", f"/v2/{ns}/blobs/{blob_digest}"), 404, "BLOB_UNKNOWN")


def test_cancel_upload(d: Client, ns: str) -> None:
    location = assert_session(patch(d, start_upload(d, ns), b"to be dropped"), ns, 13)
    response = d.request("DELETE", location)
    assert response.status == 204
    assert_error(d.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(d.request("DELETE", location), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("session", [NO_SESSION, "garbage", NO_SESSION.upper(), "0" * 36])
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload_session(d: Client, ns: str, session: str, method: str) -> None:
    path = f"/v2/{ns}/blobs/uploads/{session}"
    if method == "PUT":
        path += f"?digest={digest(b'x')}"
    body = b"x" if method in ("PATCH", "PUT") else None
    assert_error(d.request(method, path, body), 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_session_is_bound_to_its_namespace(d: Client, ns: str) -> None:
    location = start_upload(d, ns)
    session = location.rsplit("/", 1)[1]
    assert_error(d.request("GET", f"/v2/{ns}/other/blobs/uploads/{session}"), 404, "BLOB_UPLOAD_UNKNOWN")


# -- blobs -----------------------------------------------------------------------------------


BLOB = payload(100, 14)


@pytest.fixture(scope="module")
def blob_ns(shared_daemon: Client) -> str:
    namespace = unique_namespace("blob-reads", "conf")
    push_blob(shared_daemon, namespace, BLOB)
    push_blob(shared_daemon, namespace, b"")
    return namespace


def test_blob_head_and_get(d: Client, blob_ns: str) -> None:
    path = f"/v2/{blob_ns}/blobs/{digest(BLOB)}"
    for method in ("HEAD", "GET"):
        response = d.request(method, path)
        assert response.status == 200
        assert response.headers["docker-content-digest"] == digest(BLOB)
        assert response.headers["content-length"] == str(len(BLOB))
        assert response.headers["accept-ranges"] == "bytes"
        assert response.body == (BLOB if method == "GET" else b"")


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-0", 0, 0),
    ("bytes=10-", 10, 99),
    ("bytes=-5", 95, 99),
    ("bytes=90-5000", 90, 99),
    ("bytes=-500", 0, 99),
    ("bytes=99-99", 99, 99),
    ("bytes=0-99", 0, 99),
])
def test_blob_range(d: Client, blob_ns: str, header: str, first: int, last: int) -> None:
    response = d.request("GET", f"/v2/{blob_ns}/blobs/{digest(BLOB)}", headers={"Range": header})
    assert response.status == 206
    assert response.body == BLOB[first:last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(BLOB)}"
    assert response.headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("header", ["bytes=-0", "bytes=100-", "bytes=100-200", "bytes=5000-"])
def test_blob_range_not_satisfiable(d: Client, blob_ns: str, header: str) -> None:
    response = d.request("GET", f"/v2/{blob_ns}/blobs/{digest(BLOB)}", headers={"Range": header})
    assert_error(response, 416)
    assert response.headers["content-range"] == f"bytes */{len(BLOB)}"


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "garbage", "bytes=", "bytes=5-2", "items=0-1", "bytes=-"])
def test_blob_unusable_range_serves_everything(d: Client, blob_ns: str, header: str) -> None:
    response = d.request("GET", f"/v2/{blob_ns}/blobs/{digest(BLOB)}", headers={"Range": header})
    assert response.status == 200
    assert response.body == BLOB


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=-5", "bytes=10-"])
def test_empty_blob_with_range(d: Client, blob_ns: str, header: str) -> None:
    response = d.request("GET", f"/v2/{blob_ns}/blobs/{EMPTY_DIGEST}", headers={"Range": header})
    assert response.status == 200
    assert response.body == b""
    assert response.headers["content-length"] == "0"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_blob_of_another_namespace_is_unknown(d: Client, blob_ns: str, method: str) -> None:
    response = d.request(method, f"/v2/{blob_ns}-other/blobs/{digest(BLOB)}")
    assert response.status == 404
    if method != "HEAD":
        assert_error(response, 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_and_malformed_blob_digests(d: Client, ns: str, method: str) -> None:
    assert_error(d.request(method, f"/v2/{ns}/blobs/{unknown_digest()}"), 404, "BLOB_UNKNOWN")
    assert_error(d.request(method, f"/v2/{ns}/blobs/sha256:1234"), 400, "DIGEST_INVALID")
    assert d.request("HEAD", f"/v2/{ns}/blobs/{unknown_digest()}").status == 404


def test_delete_blob(d: Client, ns: str) -> None:
    data = payload(321, 15)
    blob_digest = push_blob(d, ns, data)
    push_blob(d, f"{ns}/keeper", data)
    assert d.request("DELETE", f"/v2/{ns}/blobs/{blob_digest}").status == 202
    assert_error(d.request("GET", f"/v2/{ns}/blobs/{blob_digest}"), 404, "BLOB_UNKNOWN")
    assert d.request("HEAD", f"/v2/{ns}/blobs/{blob_digest}").status == 404
    assert_error(d.request("DELETE", f"/v2/{ns}/blobs/{blob_digest}"), 404, "BLOB_UNKNOWN")
    assert_blob(d, f"{ns}/keeper", blob_digest, data)


# -- manifests -------------------------------------------------------------------------------


def build_manifest(d: Client, namespace: str, media_type: str) -> bytes:
    """Push what a manifest of ``media_type`` references; return the manifest's bytes."""
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        config, layer = b'{"architecture":"amd64","os":"linux"}', payload(500, 16)
        push_blob(d, namespace, config)
        push_blob(d, namespace, layer)
        return image_manifest(config, [layer], media_type=media_type)
    child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    child = push_image(d, namespace, "child", media_type=child_type)
    return index_manifest([child], media_type=media_type)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
def test_push_and_pull_manifest(d: Client, ns: str, media_type: str) -> None:
    body = build_manifest(d, ns, media_type)
    manifest_digest = digest(body)
    response = put_manifest(d, ns, "v1", body, media_type)
    assert response.status == 201, response.body
    assert response.headers["location"] == f"/v2/{ns}/manifests/{manifest_digest}"
    assert response.headers["docker-content-digest"] == manifest_digest
    assert "oci-subject" not in response.headers

    for reference in ("v1", manifest_digest):
        got = d.request("GET", f"/v2/{ns}/manifests/{reference}", headers={"Accept": media_type})
        assert got.status == 200
        assert got.body == body
        assert got.headers["content-type"] == media_type
        assert got.headers["docker-content-digest"] == manifest_digest
        head = d.request("HEAD", f"/v2/{ns}/manifests/{reference}")
        assert head.status == 200
        assert head.body == b""
        assert head.headers["content-length"] == str(len(body))
        assert head.headers["content-type"] == media_type
        assert head.headers["docker-content-digest"] == manifest_digest


def test_push_manifest_by_digest(d: Client, ns: str) -> None:
    body = image_manifest(b"{}")
    push_blob(d, ns, b"{}")
    manifest_digest = push_manifest(d, ns, digest(body), body)
    assert manifest_digest == digest(body)
    assert d.request("GET", f"/v2/{ns}/manifests/{manifest_digest}").body == body
    assert d.request("GET", f"/v2/{ns}/tags/list").json() == {"name": ns, "tags": []}


def test_push_manifest_by_mismatching_digest(d: Client, ns: str) -> None:
    body, other = image_manifest(b"{}"), image_manifest(b"[]")
    assert_error(put_manifest(d, ns, digest(other), body), 400, "DIGEST_INVALID")
    for reference in (digest(body), digest(other)):
        assert_error(d.request("GET", f"/v2/{ns}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(("content_type", "body"), [
    (OCI_INDEX, image_manifest(b"{}")),
    (DOCKER_MANIFEST, image_manifest(b"{}")),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "mediaType": '),
    (OCI_MANIFEST, b"not json at all"),
    (OCI_MANIFEST, b"[]"),
    (OCI_MANIFEST, encode({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})),
    ("application/vnd.docker.distribution.manifest.v1+prettyjws",
     encode({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})),
    (OCI_MANIFEST, encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": "sha256:12"}})),
], ids=["type-index-body-manifest", "type-docker-body-oci", "truncated-json", "not-json", "not-object",
        "schema-1", "schema-1-signed", "bad-config"])
def test_invalid_manifest(d: Client, ns: str, content_type: str, body: bytes) -> None:
    assert_error(put_manifest(d, ns, "bad", body, content_type), 400, "MANIFEST_INVALID")
    assert_error(d.request("GET", f"/v2/{ns}/manifests/bad"), 404, "MANIFEST_UNKNOWN")


def padded_manifest(size: int) -> bytes:
    """A valid image manifest of exactly ``size`` bytes (padded in an annotation)."""
    base = image_manifest(b"{}", annotations={"pad": ""})
    body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(body) == size
    return body


def test_manifest_at_size_limit_is_accepted(d: Client, ns: str) -> None:
    body = padded_manifest(MAX_MANIFEST)
    push_blob(d, ns, b"{}")
    assert push_manifest(d, ns, "big", body) == digest(body)
    assert d.request("GET", f"/v2/{ns}/manifests/big").body == body


def test_oversize_manifest_is_413(d: Client, ns: str) -> None:
    body = padded_manifest(MAX_MANIFEST + 1)
    response = put_manifest(d, ns, "huge", body)
    assert_error(response, 413)
    assert_error(d.request("GET", f"/v2/{ns}/manifests/huge"), 404, "MANIFEST_UNKNOWN")
    assert_error(d.request("GET", f"/v2/{ns}/manifests/{digest(body)}"), 404, "MANIFEST_UNKNOWN")
    assert_error(d.request("GET", f"/v2/{ns}/tags/list"), 404, "NAME_UNKNOWN")


def test_manifest_with_subject(d: Client, ns: str) -> None:
    subject = push_image(d, ns, "base")
    referrer = image_manifest(b"{}", config_type=OCI_EMPTY, subject=subject, artifactType="application/x.sig")
    push_blob(d, ns, b"{}")
    response = put_manifest(d, ns, digest(referrer), referrer)
    assert response.status == 201
    assert response.headers["oci-subject"] == digest(subject)


def test_delete_manifest_by_tag_keeps_the_revision(d: Client, ns: str) -> None:
    body = push_image(d, ns, "one")
    push_manifest(d, ns, "two", body)
    assert d.request("DELETE", f"/v2/{ns}/manifests/one").status == 202
    assert_error(d.request("GET", f"/v2/{ns}/manifests/one"), 404, "MANIFEST_UNKNOWN")
    assert d.request("GET", f"/v2/{ns}/manifests/two").body == body
    assert d.request("GET", f"/v2/{ns}/manifests/{digest(body)}").body == body
    assert d.request("GET", f"/v2/{ns}/tags/list").json()["tags"] == ["two"]
    assert_error(d.request("DELETE", f"/v2/{ns}/manifests/one"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_by_digest_removes_its_tags(d: Client, ns: str) -> None:
    body = push_image(d, ns, "one")
    push_manifest(d, ns, "two", body)
    other = push_image(d, ns, "other", seed=1)
    assert d.request("DELETE", f"/v2/{ns}/manifests/{digest(body)}").status == 202
    for reference in ("one", "two", digest(body)):
        assert_error(d.request("GET", f"/v2/{ns}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    assert d.request("GET", f"/v2/{ns}/manifests/other").body == other
    assert d.request("GET", f"/v2/{ns}/tags/list").json()["tags"] == ["other"]
    assert_error(d.request("DELETE", f"/v2/{ns}/manifests/{digest(body)}"), 404, "MANIFEST_UNKNOWN")


def test_manifest_of_another_namespace_is_unknown(d: Client, ns: str) -> None:
    body = push_image(d, ns, "mine")
    for reference in ("mine", digest(body)):
        assert_error(d.request("GET", f"/v2/{ns}/other/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_manifest(d: Client, ns: str, method: str) -> None:
    push_image(d, ns, "exists")
    for reference in ("nope", unknown_digest()):
        assert_error(d.request(method, f"/v2/{ns}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    assert d.request("HEAD", f"/v2/{ns}/manifests/nope").status == 404


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "bad%21tag", "b%C3%A4d"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_invalid_tag(d: Client, ns: str, method: str, tag: str) -> None:
    body = image_manifest(b"{}") if method == "PUT" else None
    headers = {"Content-Type": OCI_MANIFEST} if body else {}
    assert_error(d.request(method, f"/v2/{ns}/manifests/{tag}", body, headers), 400, "TAG_INVALID")


def test_longest_valid_tag(d: Client, ns: str) -> None:
    tag = "_" + "a" * 127
    body = image_manifest(b"{}")
    push_blob(d, ns, b"{}")
    push_manifest(d, ns, tag, body)
    assert d.request("GET", f"/v2/{ns}/manifests/{tag}").body == body


# -- tags and catalog ------------------------------------------------------------------------


def next_link(response: Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


def walk_pages(d: Client, path: str, key: str) -> list[list[str]]:
    """Follow ``Link`` headers from ``path``; return every page's items."""
    pages: list[list[str]] = []
    next_path: str | None = path
    while next_path is not None:
        response = d.request("GET", next_path)
        assert response.status == 200, response.body
        pages.append(response.json()[key])
        next_path = next_link(response)
        assert len(pages) < 100
    return pages


TAGS = ["v1", "latest", "A", "1.0", "_x", "v10", "v2", "Z9"]


@pytest.fixture(scope="module")
def tagged_ns(shared_daemon: Client) -> str:
    namespace = unique_namespace("tags", "conf")
    body = image_manifest(b"{}")
    push_blob(shared_daemon, namespace, b"{}")
    for tag in TAGS:
        push_manifest(shared_daemon, namespace, tag, body)
    return namespace


def test_tags_list_is_sorted(d: Client, tagged_ns: str) -> None:
    response = d.request("GET", f"/v2/{tagged_ns}/tags/list")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"name": tagged_ns, "tags": sorted(TAGS)}
    assert "link" not in response.headers


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_tags_pagination(d: Client, tagged_ns: str, n: int) -> None:
    ordered = sorted(TAGS)
    first = d.request("GET", f"/v2/{tagged_ns}/tags/list?n={n}")
    assert first.json() == {"name": tagged_ns, "tags": ordered[:n]}
    assert next_link(first) == f"/v2/{tagged_ns}/tags/list?n={n}&last={ordered[n - 1]}"
    pages = walk_pages(d, f"/v2/{tagged_ns}/tags/list?n={n}", "tags")
    assert pages == [ordered[i:i + n] for i in range(0, len(ordered), n)]


@pytest.mark.parametrize("n", [len(TAGS), len(TAGS) + 1, 10_000])
def test_tags_page_holding_everything_has_no_link(d: Client, tagged_ns: str, n: int) -> None:
    response = d.request("GET", f"/v2/{tagged_ns}/tags/list?n={n}")
    assert response.json()["tags"] == sorted(TAGS)
    assert "link" not in response.headers


def test_tags_n_zero(d: Client, tagged_ns: str) -> None:
    response = d.request("GET", f"/v2/{tagged_ns}/tags/list?n=0")
    assert response.status == 200
    assert response.json() == {"name": tagged_ns, "tags": []}


@pytest.mark.parametrize("last", ["latest", "l", "m", "0", "zzz", "v1"])
def test_tags_last_is_lexical(d: Client, tagged_ns: str, last: str) -> None:
    response = d.request("GET", f"/v2/{tagged_ns}/tags/list?last={last}")
    assert response.json()["tags"] == [tag for tag in sorted(TAGS) if tag > last]
    assert "link" not in response.headers
    limited = d.request("GET", f"/v2/{tagged_ns}/tags/list?n=1&last={last}")
    expected = [tag for tag in sorted(TAGS) if tag > last]
    assert limited.json()["tags"] == expected[:1]
    assert (next_link(limited) is not None) == (len(expected) > 1)


def test_tags_of_unknown_namespace(d: Client, ns: str) -> None:
    assert_error(d.request("GET", f"/v2/{ns}/tags/list"), 404, "NAME_UNKNOWN")


def test_catalog(daemon: Client) -> None:
    assert daemon.request("GET", "/v2/_catalog").json() == {"repositories": []}
    names = ["zeta", "a/b/c", "alpha", "a", "m/n", "a-b", "a/b"]
    for name in names:
        push_blob(daemon, name, b"{}")
        push_manifest(daemon, name, "t", image_manifest(b"{}"))
    push_blob(daemon, "blobs/only", b"no manifest here")
    push_blob(daemon, "deleted", b"[]")
    push_manifest(daemon, "deleted", "t", image_manifest(b"[]"))
    assert daemon.request("DELETE", f"/v2/deleted/manifests/{digest(image_manifest(b'[]'))}").status == 202

    response = daemon.request("GET", "/v2/_catalog")
    assert response.status == 200
    assert response.json() == {"repositories": sorted(names)}
    assert "link" not in response.headers
    for n in (1, 2, 3, 6):
        pages = walk_pages(daemon, f"/v2/_catalog?n={n}", "repositories")
        assert pages == [sorted(names)[i:i + n] for i in range(0, len(names), n)]
    first = daemon.request("GET", "/v2/_catalog?n=2")
    assert next_link(first) == f"/v2/_catalog?n=2&last={sorted(names)[1]}"
    assert daemon.request("GET", "/v2/_catalog?n=0").json() == {"repositories": []}
    assert daemon.request("GET", "/v2/_catalog?last=a/b").json()["repositories"] == [
        name for name in sorted(names) if name > "a/b"]
    assert daemon.request("GET", "/v2/_catalog?n=100&last=b").json()["repositories"] == ["m/n", "zeta"]


# -- referrers -------------------------------------------------------------------------------


def test_referrers(d: Client, ns: str) -> None:
    subject = push_image(d, ns, "base")
    signature = image_manifest(b"{}", config_type=OCI_EMPTY, subject=subject, artifactType="application/x.sig",
                               annotations={"org.example.kind": "signature"})
    sbom = image_manifest(b'{"sbom": true}', config_type="application/x.sbom", subject=subject)
    unrelated = image_manifest(b"{}", config_type=OCI_EMPTY, subject=b"other subject", artifactType="application/x.sig")
    for config in (b"{}", b'{"sbom": true}'):
        push_blob(d, ns, config)
    for body in (signature, sbom, unrelated):
        push_manifest(d, ns, digest(body), body)
    expected = {
        digest(signature): {"mediaType": OCI_MANIFEST, "digest": digest(signature), "size": len(signature),
                            "artifactType": "application/x.sig",
                            "annotations": {"org.example.kind": "signature"}},
        digest(sbom): {"mediaType": OCI_MANIFEST, "digest": digest(sbom), "size": len(sbom),
                       "artifactType": "application/x.sbom"},
    }

    response = d.request("GET", f"/v2/{ns}/referrers/{digest(subject)}")
    assert response.status == 200
    assert response.headers["content-type"] == OCI_INDEX
    assert "oci-filters-applied" not in response.headers
    index = response.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    assert {entry["digest"]: entry for entry in index["manifests"]} == expected
    assert len(index["manifests"]) == 2

    filtered = d.request("GET", f"/v2/{ns}/referrers/{digest(subject)}?artifactType=application/x.sbom")
    assert filtered.status == 200
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert filtered.json()["manifests"] == [expected[digest(sbom)]]

    assert d.request("DELETE", f"/v2/{ns}/manifests/{digest(signature)}").status == 202
    after = d.request("GET", f"/v2/{ns}/referrers/{digest(subject)}").json()["manifests"]
    assert after == [expected[digest(sbom)]]
    assert d.request("GET", f"/v2/{ns}/other/referrers/{digest(subject)}").json()["manifests"] == []


@pytest.mark.parametrize("query", ["", "?artifactType=application/x.none"])
@pytest.mark.parametrize("where", ["unknown-digest", "unknown-namespace", "unreferenced"])
def test_referrers_empty(d: Client, ns: str, where: str, query: str) -> None:
    subject = push_image(d, ns, "base")
    path = {"unknown-digest": f"/v2/{ns}/referrers/{unknown_digest()}",
            "unknown-namespace": f"/v2/{ns}/nowhere/referrers/{unknown_digest()}",
            "unreferenced": f"/v2/{ns}/referrers/{digest(subject)}"}[where]
    response = d.request("GET", path + query)
    assert response.status == 200
    assert response.headers["content-type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert ("oci-filters-applied" in response.headers) == bool(query)


@pytest.mark.parametrize("bad", ["sha256:abc", "latest", "md5:" + "0" * 32, "sha256:" + "A" * 64])
def test_referrers_malformed_digest(d: Client, ns: str, bad: str) -> None:
    assert_error(d.request("GET", f"/v2/{ns}/referrers/{bad}"), 400, "DIGEST_INVALID")


def test_referrers_of_index_subject(d: Client, ns: str) -> None:
    child = push_image(d, ns, "child")
    index = index_manifest([child])
    push_manifest(d, ns, "multi", index, OCI_INDEX)
    attached = index_manifest([], media_type=OCI_INDEX)
    attached = encode({**json.loads(attached), "artifactType": "application/x.bundle",
                       "subject": {"mediaType": OCI_INDEX, "digest": digest(index), "size": len(index)}})
    response = put_manifest(d, ns, "attached", attached, OCI_INDEX)
    assert response.status == 201 and response.headers["oci-subject"] == digest(index)
    found = d.request("GET", f"/v2/{ns}/referrers/{digest(index)}").json()["manifests"]
    assert found == [{"mediaType": OCI_INDEX, "digest": digest(attached), "size": len(attached),
                      "artifactType": "application/x.bundle"}]

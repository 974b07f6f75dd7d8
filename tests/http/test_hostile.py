"""Hostile input: every request gets a 4xx with an OCI error body and leaves storage unchanged.

All tests share one application, in memory but on a real filesystem store (so a path
that escapes the store would show on disk). Each test snapshots every file under the
store's root, and the names beside it, after its own setup and compares after the
hostile requests; upload sessions made during setup are part of the "before" picture.
Disconnects mid-request need a real socket and stay in `tests.integration.test_api_hostile`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon import Response
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import (
    MAX_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    digest,
    image_manifest,
    patch,
    payload,
    push_blob,
    push_manifest,
    raw_request,
    snapshot,
    start_upload,
    unique_namespace,
    with_query,
)

MANIFEST = image_manifest(b"{}")
BLOB = b"hostile test blob"
SESSION = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> InMemoryDaemon:
    """The application on a filesystem store in a directory of its own."""
    return InMemoryDaemon(root=str(tmp_path_factory.mktemp("hostile") / "store"))


@pytest.fixture
def d(shared_daemon: InMemoryDaemon) -> InMemoryDaemon:
    return shared_daemon


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return unique_namespace(request.node.name, "hostile")


@contextmanager
def unchanged(daemon: InMemoryDaemon) -> Iterator[None]:
    """Assert that nothing under the daemon's root, nor beside it, changes in the block."""
    assert daemon.root is not None
    outside = os.path.dirname(daemon.root)
    before, beside = snapshot(daemon.root), sorted(os.listdir(outside))
    yield
    assert snapshot(daemon.root) == before
    assert sorted(os.listdir(outside)) == beside


def refused(response: Response, status: int | None = None, code: str | None = None) -> None:
    """A 4xx (``status`` if given) with an OCI error body (``code`` if given)."""
    assert 400 <= response.status < 500, (response.status, response.body[:300])
    assert_error(response, status or response.status, code)


# -- hostile namespaces ----------------------------------------------------------------------

HOSTILE_NAMES = [
    "a/../../etc",
    "../../../tmp/escape",
    "..",
    "a/..",
    ".",
    "a/./b",
    "a/%2e%2e/%2e%2e/etc",
    "%2e%2e/%2e%2e/etc",
    "%2E%2E%2F%2E%2E%2Fetc",
    "a%2F..%2F..%2Fetc",
    "a%2fb",
    "/etc",
    "/",
    "a//b",
    "a/b/",
    "Upper",
    "a/B",
    "a" * 300,
    "/".join(["abcdefghij"] * 30),
    "a%00b",
    "a%00",
    "a%0ab",
    "a%0d%0aX-Injected:%201",
    "a%09b",
    "a%1bb",
    "a%7fb",
    "a%20b",
    "a%ffb",
    "a%C3%A4b",
    "a/_uploads",
    "a/_manifests/tags",
    "_catalog",
    "a+b",
    "-a",
    "a-",
    "a..b",
    "a\\b",
    "~root",
    "a;b",
]


def name_requests(name: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """One request per kind of endpoint, all in namespace ``name``."""
    blob_digest = digest(BLOB)
    return [
        ("POST", f"/v2/{name}/blobs/uploads/", None, {}),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={blob_digest}", BLOB, {}),
        ("POST", f"/v2/{name}/blobs/uploads/?mount={blob_digest}&from=hostile-mount-source", None, {}),
        ("PATCH", f"/v2/{name}/blobs/uploads/{SESSION}", BLOB, {}),
        ("PUT", f"/v2/{name}/blobs/uploads/{SESSION}?digest={blob_digest}", BLOB, {}),
        ("GET", f"/v2/{name}/blobs/uploads/{SESSION}", None, {}),
        ("DELETE", f"/v2/{name}/blobs/uploads/{SESSION}", None, {}),
        ("GET", f"/v2/{name}/blobs/{blob_digest}", None, {}),
        ("DELETE", f"/v2/{name}/blobs/{blob_digest}", None, {}),
        ("PUT", f"/v2/{name}/manifests/latest", MANIFEST, {"Content-Type": OCI_MANIFEST}),
        ("PUT", f"/v2/{name}/manifests/{digest(MANIFEST)}", MANIFEST, {"Content-Type": OCI_MANIFEST}),
        ("GET", f"/v2/{name}/manifests/latest", None, {}),
        ("DELETE", f"/v2/{name}/manifests/latest", None, {}),
        ("GET", f"/v2/{name}/tags/list", None, {}),
        ("GET", f"/v2/{name}/referrers/{digest(MANIFEST)}", None, {}),
    ]


@pytest.fixture(scope="module")
def mount_source(shared_daemon: InMemoryDaemon) -> str:
    push_blob(shared_daemon, "hostile-mount-source", BLOB)
    push_blob(shared_daemon, "hostile-mount-source", b"{}")
    push_manifest(shared_daemon, "hostile-mount-source", "latest", MANIFEST)
    return "hostile-mount-source"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_namespace(d: InMemoryDaemon, mount_source: str, name: str) -> None:
    with unchanged(d):
        for method, target, body, headers in name_requests(name):
            response = d.request(method, target, body, headers)
            assert 400 <= response.status < 500, (method, target, response.status, response.body[:300])
            assert_error(response, response.status)


@pytest.mark.parametrize("target", [
    b"/v2/a\x00b/tags/list",
    b"/v2/a\x01b/tags/list",
    b"/v2/a\x7fb/tags/list",
    b"/v2/\xc3\xa4/tags/list",
    b"/v2/\xff/tags/list",
])
def test_raw_control_bytes_in_target(d: InMemoryDaemon, target: bytes) -> None:
    """Bytes http.client refuses to send: the daemon must still answer 4xx, never 5xx."""
    with unchanged(d):
        response = raw_request(d, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert 400 <= response.status < 500, (response.status, response.body[:300])


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "FOO", "BREW"])
def test_unknown_method(d: InMemoryDaemon, method: str) -> None:
    with unchanged(d):
        response = raw_request(d, f"{method} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        refused(response, 405)


# -- hostile digests, references and session ids ---------------------------------------------

BAD_DIGESTS = [
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "SHA256:" + "0" * 64,
    "sha512:" + "0" * 64,
    "md5:" + "0" * 32,
    "sha256:",
    ":" + "0" * 64,
    "sha256:" + "g" * 64,
    "sha256:" + "0" * 64 + "%0a",
    "sha256:..%2F..%2F" + "0" * 58,
    "sha256:" + "0" * 10_000,
]


def digest_requests(ns: str, location: str, bad: str) -> list[tuple[str, str, bytes | None, int, str]]:
    """(method, target, body, status, code) for a malformed digest in every place one goes."""
    return [
        ("GET", f"/v2/{ns}/blobs/{bad}", None, 400, "DIGEST_INVALID"),
        ("DELETE", f"/v2/{ns}/blobs/{bad}", None, 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{ns}/manifests/{bad}", None, 400, "DIGEST_INVALID"),
        ("DELETE", f"/v2/{ns}/manifests/{bad}", None, 400, "DIGEST_INVALID"),
        ("PUT", f"/v2/{ns}/manifests/{bad}", MANIFEST, 400, "DIGEST_INVALID"),
        ("GET", f"/v2/{ns}/referrers/{bad}", None, 400, "DIGEST_INVALID"),
        ("POST", f"/v2/{ns}/blobs/uploads/?digest={bad}", BLOB, 400, "DIGEST_INVALID"),
        ("POST", f"/v2/{ns}/blobs/uploads/?mount={bad}", None, 400, "DIGEST_INVALID"),
        ("POST", f"/v2/{ns}/blobs/uploads/?mount={bad}&from={ns}", None, 400, "DIGEST_INVALID"),
        ("PUT", with_query(location, f"digest={bad}"), None, 400, "DIGEST_INVALID"),
    ]


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=lambda bad: bad[:80])
def test_malformed_digest(d: InMemoryDaemon, ns: str, bad: str) -> None:
    push_blob(d, ns, BLOB)
    push_blob(d, ns, b"{}")
    push_manifest(d, ns, "latest", MANIFEST)
    location = patch(d, start_upload(d, ns), b"pending").headers["location"]
    with unchanged(d):
        for method, target, body, status, code in digest_requests(ns, location, bad):
            headers = {"Content-Type": OCI_MANIFEST} if target.startswith(f"/v2/{ns}/manifests") else {}
            response = d.request(method, target, body, headers)
            assert response.status == status, (method, target, response.status, response.body[:300])
            assert_error(response, status, code)
    assert d.request("GET", location).headers["range"] == "0-6"


def test_empty_digest_parameters(d: InMemoryDaemon, ns: str) -> None:
    location = start_upload(d, ns)
    with unchanged(d):
        for method, target, body in [("POST", f"/v2/{ns}/blobs/uploads/?digest=", BLOB),
                                     ("POST", f"/v2/{ns}/blobs/uploads/?mount=", None),
                                     ("PUT", with_query(location, "digest="), None),
                                     ("PUT", with_query(location, "digest"), None)]:
            refused(d.request(method, target, body), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("tag", ["..", "%2e%2e", "a%2Fb", "a%00", "a%0a", "-x", "." + "a" * 10, "a" * 129,
                                 "%C3%A4", "a%20b", "a*"])
def test_hostile_tag(d: InMemoryDaemon, ns: str, tag: str) -> None:
    push_blob(d, ns, b"{}")
    push_manifest(d, ns, "latest", MANIFEST)
    with unchanged(d):
        for method, body in (("PUT", MANIFEST), ("GET", None), ("DELETE", None)):
            headers = {"Content-Type": OCI_MANIFEST} if body else {}
            refused(d.request(method, f"/v2/{ns}/manifests/{tag}", body, headers), 400, "TAG_INVALID")


@pytest.mark.parametrize("session", ["..", "%2e%2e", "..%2F..%2Fblobs", "%00", "x" * 1000, SESSION.upper(),
                                     "{" + SESSION + "}", SESSION.replace("-", ""), SESSION + "%0a"])
def test_hostile_session_id(d: InMemoryDaemon, ns: str, session: str) -> None:
    start_upload(d, ns)
    with unchanged(d):
        for method, query, body in (("GET", "", None), ("PATCH", "", BLOB), ("DELETE", "", None),
                                    ("PUT", f"?digest={digest(BLOB)}", BLOB)):
            target = f"/v2/{ns}/blobs/uploads/{session}{query}"
            refused(d.request(method, target, body), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("content_range", ["abc", "5-2", "-1-3", "0-99999999999999999999", "0-", "bytes=a-b", ""])
def test_hostile_content_range(d: InMemoryDaemon, ns: str, content_range: str) -> None:
    location = patch(d, start_upload(d, ns), b"0123").headers["location"]
    with unchanged(d):
        refused(d.request("PATCH", location, b"4567", {"Content-Range": content_range}), 416)
    assert d.request("GET", location).headers["range"] == "0-3"


@pytest.mark.parametrize("query", ["n=-1", "n=abc", "n=1e3", "n=99999999999999999999", "n=", "n=%00"])
@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/hostile-mount-source/tags/list"])
def test_hostile_pagination(d: InMemoryDaemon, mount_source: str, path: str, query: str) -> None:
    with unchanged(d):
        refused(d.request("GET", f"{path}?{query}"), 400, "PAGINATION_NUMBER_INVALID")


@pytest.mark.parametrize("algorithm", ["md5", "SHA256", "", "sha256%00", "sha1", "x" * 500])
def test_hostile_digest_algorithm(d: InMemoryDaemon, ns: str, algorithm: str) -> None:
    with unchanged(d):
        refused(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest-algorithm={algorithm}"), 400, "DIGEST_INVALID")


# -- mismatched content ------------------------------------------------------------------------


def test_mismatched_monolithic_upload(d: InMemoryDaemon, ns: str) -> None:
    push_blob(d, ns, BLOB)
    with unchanged(d):
        for data, claimed in [(payload(5000), digest(b"other")), (b"", digest(b"x")), (b"x", digest(b"")),
                              (BLOB + b"!", digest(BLOB)), (BLOB, digest(BLOB, "sha512")[:71])]:
            refused(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest={claimed}", data), 400, "DIGEST_INVALID")
        refused(d.request("POST", f"/v2/{ns}/blobs/uploads/?digest={digest(BLOB, 'sha512')}", BLOB[:-1]),
                400, "DIGEST_INVALID")


@pytest.mark.parametrize("case", ["wrong-digest", "algorithm-switch", "final-chunk"])
def test_mismatched_chunked_upload(d: InMemoryDaemon, ns: str, case: str) -> None:
    data = payload(9000, 1)
    query = "?digest-algorithm=sha512" if case == "algorithm-switch" else ""
    location = start_upload(d, ns, query)
    location = patch(d, location, data[:4000]).headers["location"]
    claimed = digest(data) if case == "algorithm-switch" else digest(data + b"!")
    rest = data[4000:] if case == "final-chunk" else None
    if case != "final-chunk":
        location = patch(d, location, data[4000:]).headers["location"]
    refused(d.request("PUT", with_query(location, f"digest={claimed}"), rest), 400, "DIGEST_INVALID")
    refused(d.request("GET", f"/v2/{ns}/blobs/{digest(data)}"), 404, "BLOB_UNKNOWN")
    # The session is kept with every byte received, so the client can resume or retry.
    assert d.request("GET", location).headers["range"] == f"0-{len(data) - 1}"
    assert d.request("DELETE", location).status == 204


# -- hostile manifests -------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body", "status", "code"), [
    (OCI_MANIFEST, b"{" + b" " * MAX_MANIFEST + b"}", 413, None),
    (OCI_MANIFEST, b"[" * (MAX_MANIFEST + 10), 413, None),
    (OCI_MANIFEST, b"[" * 100_000, 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"a":' * 100_000, 400, "MANIFEST_INVALID"),
    ("text/plain", MANIFEST, 400, "MANIFEST_INVALID"),
    ("application/json", MANIFEST.replace(OCI_MANIFEST.encode(), b"application/json"), 400, "MANIFEST_INVALID"),
    (OCI_INDEX, MANIFEST, 400, "MANIFEST_INVALID"),
    ("", b"", 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b"\xff\xfe\x00{", 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2.0, "config": 1}', 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": true}', 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode()
     + b'", "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64 + b'", "size": -1}, "layers": []}',
     400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode()
     + b'", "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64 + b'", "size": 1}, "layers": {}}',
     400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "../../etc", "size": 1}}',
     400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64
     + b'", "size": 1}, "subject": {"mediaType": "x", "digest": "sha256:../x", "size": 1}}', 400, "MANIFEST_INVALID"),
    (OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64
     + b'", "size": 1}, "annotations": {"a": 1}}', 400, "MANIFEST_INVALID"),
], ids=["oversize-object", "oversize-brackets", "deep-brackets", "deep-valid", "deep-objects", "text-plain",
        "plain-json", "index-type-for-image", "empty", "binary", "float-schema", "bool-schema", "negative-size",
        "layers-object", "path-digest", "path-subject", "annotation-int"])
def test_hostile_manifest(d: InMemoryDaemon, ns: str, content_type: str, body: bytes, status: int,
                          code: str | None) -> None:
    push_blob(d, ns, b"{}")
    push_manifest(d, ns, "existing", MANIFEST)
    headers = {"Content-Type": content_type} if content_type else {}
    with unchanged(d):
        for reference in ("latest", "existing", digest(body)):
            refused(d.request("PUT", f"/v2/{ns}/manifests/{reference}", body, headers), status, code)
    assert d.request("GET", f"/v2/{ns}/manifests/existing").body == MANIFEST


# -- fuzzing ---------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
KEYWORDS = ["v2", "blobs", "uploads", "manifests", "tags", "list", "referrers", "_catalog", "_ext", "..", ".", "",
            "%2e%2e", "%2F", "%00", "latest", SESSION, digest(BLOB), "sha256:", "sha512:" + "0" * 128]
SEGMENT = st.sampled_from(KEYWORDS) | st.text(PRINTABLE, max_size=12)
QUERY = st.lists(st.tuples(st.sampled_from(["n", "last", "digest", "mount", "from", "artifactType",
                                            "digest-algorithm"]) | st.text(PRINTABLE, max_size=6),
                           st.sampled_from(["", "0", "-1", "sha256:", digest(BLOB)]) | st.text(PRINTABLE, max_size=12)),
                 max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD", "DELETE", "PUT", "PATCH", "POST"]),
       segments=st.lists(SEGMENT, max_size=7), query=QUERY, prefix=st.sampled_from(["/v2/", "/", "/v2/fuzz/"]))
def test_fuzz_request_path(shared_daemon: InMemoryDaemon, method: str, segments: list[str],
                           query: list[tuple[str, str]], prefix: str) -> None:
    target = prefix + "/".join(segments)
    if query:
        target += "?" + "&".join(f"{key}={value}" for key, value in query)
    body = b"{}" if method in ("PUT", "PATCH", "POST") else None
    response = shared_daemon.request(method, target, body)
    assert response.status < 500, (method, target, response.status, response.body[:300])
    if target.startswith("/v2") and response.status >= 400 and method != "HEAD":
        assert_error(response, response.status)

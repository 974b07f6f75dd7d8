"""Strict where it protects data: manifest references, refused upload requests that write
nothing, resumable digest mismatches, manifest encodings and media types, and the error
codes and edges of the API (pagination numbers, over-long lines, absolute-form targets,
disconnects during authorization, full stores, the ``Server`` header)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from angosd.storage.errors import OutOfSpace
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import (
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest,
    encode,
    image_manifest,
    index_manifest,
    patch,
    payload,
    push_blob,
    push_manifest,
    put_manifest,
    start_upload,
    with_query,
)

CONFIG = b'{"architecture": "amd64", "os": "linux"}'


@pytest.fixture
def d() -> InMemoryDaemon:
    return InMemoryDaemon()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- manifest references --------------------------------------------------------------------


def test_a_manifest_whose_config_is_missing_is_refused(d: InMemoryDaemon) -> None:
    layer = payload(300, 1)
    push_blob(d, "team/app", layer)
    body = image_manifest(CONFIG, [layer])
    assert_error(put_manifest(d, "team/app", "v1", body), 404, "MANIFEST_BLOB_UNKNOWN")
    assert_error(d.request("GET", "/v2/team/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    push_blob(d, "team/app", CONFIG)
    assert push_manifest(d, "team/app", "v1", body) == digest(body)


def test_a_manifest_whose_layer_is_missing_is_refused(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG, [payload(300, 2)])
    assert_error(put_manifest(d, "team/app", digest(body), body), 404, "MANIFEST_BLOB_UNKNOWN")
    assert_error(d.request("GET", f"/v2/team/app/manifests/{digest(body)}"), 404, "MANIFEST_UNKNOWN")


def test_an_index_needs_its_children_in_its_own_namespace(d: InMemoryDaemon) -> None:
    push_blob(d, "team/a", CONFIG)
    child = image_manifest(CONFIG)
    push_manifest(d, "team/a", digest(child), child)
    index = index_manifest([child])
    assert_error(put_manifest(d, "team/b", "multi", index, OCI_INDEX), 404, "MANIFEST_BLOB_UNKNOWN")
    assert push_manifest(d, "team/a", "multi", index, OCI_INDEX) == digest(index)


def test_a_blob_readable_elsewhere_is_mounted_and_one_that_is_not_is_refused() -> None:
    daemon = InMemoryDaemon('[global.access_policy]\ndefault = "deny"\n'
                            'rules = ["!(request.namespace == \'secret/x\' && request.action == \'get-blob\')"]\n')
    for namespace in ("secret/x", "public/x"):
        push_blob(daemon, namespace, CONFIG)
    layer = payload(400, 3)
    push_blob(daemon, "secret/x", layer)
    body = image_manifest(CONFIG, [layer])
    # Only the secret namespace has the layer and the caller may not read it there.
    assert_error(put_manifest(daemon, "mine/x", "v1", body), 404, "MANIFEST_BLOB_UNKNOWN")
    push_blob(daemon, "public/x", layer)
    assert push_manifest(daemon, "mine/x", "v1", body) == digest(body)
    pulled = daemon.request("GET", f"/v2/mine/x/blobs/{digest(layer)}")
    assert pulled.status == 200 and pulled.body == layer


def test_non_distributable_layers_with_urls_need_not_be_present(d: InMemoryDaemon) -> None:
    push_blob(d, "team/win", CONFIG)
    foreign = payload(500, 4)
    config = descriptor("application/vnd.oci.image.config.v1+json", CONFIG)
    body = encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                   "layers": [descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar", foreign,
                                         urls=["https://example.com/layer.tar"])]})
    assert push_manifest(d, "team/win", "v1", body) == digest(body)
    plain = encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                    "layers": [descriptor(OCI_LAYER, foreign)]})
    assert_error(put_manifest(d, "team/win", "v2", plain), 404, "MANIFEST_BLOB_UNKNOWN")


def test_a_descriptor_size_that_is_not_the_blob_size_is_400(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": {**descriptor("application/vnd.oci.image.config.v1+json", CONFIG), "size": 3},
                   "layers": []})
    assert_error(put_manifest(d, "team/app", "v1", body), 400, "SIZE_INVALID")


def test_allow_missing_manifest_references_opts_a_repository_out() -> None:
    daemon = InMemoryDaemon('[repository."loose"]\nallow_missing_manifest_references = true\n'
                            '[repository."strict"]\n')
    body = image_manifest(CONFIG, [payload(100, 5)])
    assert push_manifest(daemon, "loose/app", "v1", body) == digest(body)
    assert_error(put_manifest(daemon, "strict/app", "v1", body), 404, "MANIFEST_BLOB_UNKNOWN")


def test_the_global_key_applies_to_namespaces_of_no_repository() -> None:
    daemon = InMemoryDaemon("[global]\nallow_missing_manifest_references = true\n")
    body = image_manifest(CONFIG)
    assert push_manifest(daemon, "any/app", "v1", body) == digest(body)


# -- uploads: refused requests write nothing, mismatches keep the session --------------------


def upload_range(d: InMemoryDaemon, location: str) -> str:
    response = d.request("GET", location)
    assert response.status == 204, response
    return response.headers["range"]


def test_put_without_digest_appends_nothing(d: InMemoryDaemon) -> None:
    location = patch(d, start_upload(d, "team/up"), b"abc").headers["location"]
    assert_error(d.request("PUT", location, b"xyz"), 400, "DIGEST_INVALID")
    assert_error(d.request("PUT", with_query(location, "digest=sha256:nothex"), b"xyz"), 400, "DIGEST_INVALID")
    assert upload_range(d, location) == "0-2"


def test_a_chunked_body_longer_than_its_content_range_is_refused_whole(d: InMemoryDaemon) -> None:
    location = start_upload(d, "team/up")
    response = d.request("PATCH", location, iter([b"0123456789"]), {"Content-Range": "0-2"})
    assert_error(response, 400, "SIZE_INVALID")
    assert upload_range(d, location) == "0-0"
    assert d.request("GET", location).headers["range"] == "0-0"
    short = d.request("PATCH", location, iter([b"01"]), {"Content-Range": "0-2"})
    assert_error(short, 400, "SIZE_INVALID")
    assert upload_range(d, location) == "0-0"
    whole = d.request("PATCH", location, iter([b"0", b"12"]), {"Content-Range": "0-2"})
    assert whole.status == 202 and whole.headers["range"] == "0-2"
    done = d.request("PUT", with_query(whole.headers["location"], f"digest={digest(b'012')}"))
    assert done.status == 201


def test_a_digest_mismatch_keeps_the_session_resumable(d: InMemoryDaemon) -> None:
    location = patch(d, start_upload(d, "team/up"), b"abc").headers["location"]
    wrong = d.request("PUT", with_query(location, f"digest={digest(b'abd')}"))
    assert_error(wrong, 400, "DIGEST_INVALID")
    assert wrong.headers["range"] == "0-2" and wrong.headers["location"] == location
    assert upload_range(d, location) == "0-2"
    resumed = patch(d, location, b"def", 3)
    assert resumed.status == 202 and resumed.headers["range"] == "0-5"
    done = d.request("PUT", with_query(location, f"digest={digest(b'abcdef')}"))
    assert done.status == 201
    assert d.request("GET", f"/v2/team/up/blobs/{digest(b'abcdef')}").body == b"abcdef"


def test_a_monolithic_upload_with_a_wrong_digest_leaves_no_session(d: InMemoryDaemon) -> None:
    response = d.request("POST", f"/v2/team/up/blobs/uploads/?digest={digest(b'other')}", b"data")
    assert_error(response, 400, "DIGEST_INVALID")
    assert d.request("GET", "/v2/_ext/team/up/_uploads").json()["uploads"] == []


# -- manifest bodies and media types ---------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_a_manifest_that_is_not_plain_utf8_is_refused(d: InMemoryDaemon, encoding: str) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG).decode().encode(encoding)
    assert_error(put_manifest(d, "team/app", "v1", body), 400, "MANIFEST_INVALID")


def test_a_manifest_put_needs_a_content_type(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG)
    assert_error(d.request("PUT", "/v2/team/app/manifests/v1", body), 400, "MANIFEST_INVALID")
    assert_error(put_manifest(d, "team/app", "v1", body, OCI_INDEX), 400, "MANIFEST_INVALID")


# -- errors and edges -------------------------------------------------------------------------


@pytest.mark.parametrize("n", ["%C2%B2", "%D9%A1", "%EF%BC%91", "-1", "1.0", "0x1", "1234567890"])
@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/team/app/tags/list"])
def test_a_count_that_is_not_ascii_digits_is_400(d: InMemoryDaemon, n: str, path: str) -> None:
    push_blob(d, "team/app", CONFIG)
    push_manifest(d, "team/app", "v1", image_manifest(CONFIG))
    assert_error(d.request("GET", f"{path}?n={n}"), 400, "PAGINATION_NUMBER_INVALID")


def test_tags_of_a_namespace_whose_manifests_were_all_deleted(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG)
    push_manifest(d, "team/app", "v1", body)
    assert d.request("DELETE", f"/v2/team/app/manifests/{digest(body)}").status == 202
    response = d.request("GET", "/v2/team/app/tags/list")
    assert response.status == 200 and response.json() == {"name": "team/app", "tags": []}
    assert_error(d.request("GET", "/v2/team/never/tags/list"), 404, "NAME_UNKNOWN")


def test_an_over_long_request_line_is_answered_414(d: InMemoryDaemon) -> None:
    response = d.raw(b"GET /v2/" + b"a" * 20_000 + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_error(response, 414, "SIZE_INVALID")


def test_an_over_long_header_line_is_answered_431(d: InMemoryDaemon) -> None:
    response = d.raw(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 20_000 + b"\r\n\r\n")
    assert_error(response, 431, "SIZE_INVALID")
    with d.connect() as connection:  # a second request's over-long header line is a header line too
        assert connection.request("GET", "/v2/").status == 200
        refused = connection.send(b"GET /v2/ HTTP/1.1\r\nX-Long: " + b"x" * 17_000 + b"\r\n\r\n")
        assert_error(refused, 431, "SIZE_INVALID")


def test_absolute_form_targets_are_routed_like_origin_form() -> None:
    daemon = InMemoryDaemon("[ui]\nenabled = true\n")
    push_blob(daemon, "team/app", CONFIG)
    push_manifest(daemon, "team/app", "v1", image_manifest(CONFIG))
    response = daemon.raw(b"GET http://127.0.0.1:5000/v2/_catalog?n=5 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n")
    assert response.status == 200 and response.json() == {"repositories": ["team/app"]}
    tags = daemon.raw(b"GET HTTPS://registry.example/v2/team/app/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
    assert tags.json() == {"name": "team/app", "tags": ["v1"]}


def test_every_response_names_angosd_as_server(d: InMemoryDaemon) -> None:
    for response in (d.request("GET", "/v2/"), d.request("GET", "/v2/team/x/tags/list"),
                     d.request("GET", "/healthz")):
        assert response.headers["server"] == "angosd"
        assert all("twisted" not in value.lower() for _, value in response.header_lines)


def test_an_unsatisfiable_blob_range_is_416_size_invalid(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", b"0123456789")
    response = d.request("GET", f"/v2/team/app/blobs/{digest(b'0123456789')}", headers={"Range": "bytes=20-30"})
    assert_error(response, 416, "SIZE_INVALID")
    assert response.headers["content-range"] == "bytes */10"


def test_pushes_to_a_pull_through_cache_are_415_and_wrong_methods_405() -> None:
    daemon = InMemoryDaemon('[repository."hub"]\n[[repository."hub".upstream]]\nurl = "http://127.0.0.1:9"\n')
    assert_error(daemon.request("POST", "/v2/hub/library/x/blobs/uploads/"), 415, "UNSUPPORTED")
    assert_error(daemon.request("PUT", "/v2/hub/library/x/manifests/v1", image_manifest(CONFIG),
                                {"Content-Type": OCI_MANIFEST}), 415, "UNSUPPORTED")
    assert_error(daemon.request("DELETE", "/v2/"), 405, "UNSUPPORTED")


def test_a_full_store_is_one_log_line_per_507(d: InMemoryDaemon, logged: list[dict[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert d.driver is not None

    def full(*_: object) -> None:
        raise OutOfSpace("no space left on device")

    monkeypatch.setattr(d.driver, "write", full)
    response = d.request("POST", "/v2/team/app/blobs/uploads/")
    assert response.status == 507
    failures = [event for event in logged if "log_failure" in event]
    assert failures == []
    lines = [event for event in logged if "storage failure" in event.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["log_level"].name == "error"


def test_a_client_leaving_during_authorization_logs_no_unhandled_error(logged: list[dict[str, Any]]) -> None:
    from argon2 import PasswordHasher

    password = PasswordHasher().hash("secret")
    daemon = InMemoryDaemon(f'[auth.identity.alice]\nusername = "alice"\npassword = "{password}"\n')
    connection = daemon.connect()
    # Basic auth is verified in the thread pool; its answer waits in the reactor's queue.
    connection.protocol.dataReceived(b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n"
                                     b"Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n")
    assert daemon.reactor.queued, "authorization should still be pending"
    connection.close()  # the client leaves, then the pending verification completes
    del connection  # an unhandled failure is logged when its Deferred is collected
    gc.collect()
    unhandled = [event for event in logged if "Unhandled error" in str(event.get("log_format", ""))
                 or "log_failure" in event]
    assert unhandled == [], [str(event.get("log_failure") or event.get("log_format")) for event in unhandled]


# -- ?tag= on a push by digest (OCI distribution, development version) ------------------------


def test_a_push_by_digest_with_tag_parameters_creates_every_tag(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG)
    response = d.request("PUT", f"/v2/team/app/manifests/{digest(body)}?tag=v1&tag=latest&tag=v1.0.0", body,
                         {"Content-Type": OCI_MANIFEST})
    assert response.status == 201, response.body
    assert [value for name, value in response.header_lines if name == "oci-tag"] == ["v1", "latest", "v1.0.0"]
    assert d.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["latest", "v1", "v1.0.0"]
    for tag in ("v1", "latest", "v1.0.0"):
        assert d.request("GET", f"/v2/team/app/manifests/{tag}").body == body


def test_a_push_without_tag_parameters_has_no_oci_tag_header(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG)
    response = put_manifest(d, "team/app", digest(body), body)
    assert response.status == 201 and "oci-tag" not in response.headers


def test_an_invalid_tag_parameter_refuses_the_whole_push(d: InMemoryDaemon) -> None:
    push_blob(d, "team/app", CONFIG)
    body = image_manifest(CONFIG)
    response = d.request("PUT", f"/v2/team/app/manifests/{digest(body)}?tag=ok&tag=-bad", body,
                         {"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "TAG_INVALID")
    assert_error(d.request("GET", f"/v2/team/app/manifests/{digest(body)}"), 404, "MANIFEST_UNKNOWN")
    assert_error(d.request("GET", "/v2/team/app/manifests/ok"), 404, "MANIFEST_UNKNOWN")


def test_tag_parameters_respect_immutable_tags() -> None:
    daemon = InMemoryDaemon("[global]\nimmutable_tags = true\n")
    push_blob(daemon, "team/app", CONFIG)
    first, second = image_manifest(CONFIG), image_manifest(CONFIG, annotations={"n": "2"})
    push_manifest(daemon, "team/app", "v1", first)
    response = daemon.request("PUT", f"/v2/team/app/manifests/{digest(second)}?tag=v2&tag=v1", second,
                              {"Content-Type": OCI_MANIFEST})
    assert_error(response, 409, "TAG_IMMUTABLE")
    assert_error(daemon.request("GET", "/v2/team/app/manifests/v2"), 404, "MANIFEST_UNKNOWN")
    assert json.loads(daemon.request("GET", "/v2/team/app/manifests/v1").body) == json.loads(first)

"""OCI Distribution v1.1 conformance of the HTTP API, against the real daemon.

Most tests share one daemon (`shared_daemon`) and each works in its own namespace (the
``ns`` fixture); tests that need an exact catalog run a fresh `daemon`.
"""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest

from tests.daemon import Daemon
from tests.integration.ocihelpers import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_DIGEST,
    MAX_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    UUID_RE,
    Connection,
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


def unknown_digest(seed: str = "nothing") -> str:
    return digest(f"never uploaded: {seed}".encode())


# -- base, health, routing -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/v2/", "/v2"])
def test_api_version(d: Daemon, method: str, path: str) -> None:
    response = d.request(method, path)
    assert response.status == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health(d: Daemon, path: str) -> None:
    assert d.request("GET", path).status == 200


@pytest.mark.parametrize("path", [
    "/v2/nothing-here",
    "/v2/ns/unknown/endpoint",
    "/v2/ns/blobs/",
    "/v2/ns/manifests/",
    "/v2/_ext/nope",
])
def test_unknown_v2_path_is_oci_404(d: Daemon, path: str) -> None:
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
    ("POST", f"/v2/ns/blobs/uploads/{uuid.uuid4()}"),
])
def test_wrong_method_is_405(d: Daemon, method: str, path: str) -> None:
    assert_error(d.request(method, path, b"" if method in ("POST", "PUT", "PATCH") else None), 405)


# -- uploads ---------------------------------------------------------------------------------



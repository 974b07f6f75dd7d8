"""Small helpers shared by the HTTP API tests: digests, pushes, raw requests, snapshots.

Everything talks to a `tests.daemon.Client`: a running `tests.daemon.Daemon` over real sockets,
or the application in memory (`tests.inmemory.InMemoryDaemon`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

from tests.daemon import Client, KeepAlive, Response

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MAX_MANIFEST = 4 * 1024 * 1024

_unique = itertools.count()


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


EMPTY_DIGEST = digest(b"")


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (so a misplaced chunk changes the digest)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def unique_namespace(hint: str, prefix: str = "t") -> str:
    """A valid, never-repeated namespace (two components) derived from ``hint``."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower())[:40].strip("-") or "x"
    return f"{prefix}{next(_unique)}/{slug}"


# -- assertions --------------------------------------------------------------------------


def assert_error(response: Response, status: int, code: str | None = None) -> None:
    """``response`` has ``status`` and an OCI error envelope (with ``code`` if given)."""
    assert response.status == status, (response.status, response.body[:500])
    document = response.json()
    assert isinstance(document, dict) and isinstance(document.get("errors"), list), document
    assert document["errors"], document
    for entry in document["errors"]:
        assert isinstance(entry.get("code"), str) and isinstance(entry.get("message"), str), entry
    if code is not None:
        assert response.error_codes == [code], document


# -- blobs and uploads ---------------------------------------------------------------------


def push_blob(daemon: Client, namespace: str, data: bytes, algorithm: str = "sha256") -> str:
    """Monolithic upload; returns the digest."""
    blob_digest = digest(data, algorithm)
    response = daemon.request("POST", f"/v2/{namespace}/blobs/uploads/?digest={blob_digest}", data,
                              {"Content-Type": "application/octet-stream"})
    assert response.status == 201, (response.status, response.body)
    return blob_digest


def start_upload(daemon: Client, namespace: str, query: str = "") -> str:
    """Open an upload session; returns its Location."""
    response = daemon.request("POST", f"/v2/{namespace}/blobs/uploads/{query}")
    assert response.status == 202, (response.status, response.body)
    return response.headers["location"]


def patch(daemon: Client | KeepAlive, location: str, chunk: bytes, first: int | None = None) -> Response:
    headers = {"Content-Type": "application/octet-stream"}
    if first is not None:
        headers["Content-Range"] = f"{first}-{first + len(chunk) - 1}"
    return daemon.request("PATCH", location, chunk, headers)


def with_query(location: str, query: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}{query}"


# -- manifests -----------------------------------------------------------------------------


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def encode(document: dict[str, Any]) -> bytes:
    """Deliberately non-canonical JSON, so byte-exactness is actually tested."""
    return json.dumps(document, indent=3).encode() + b"\n"


def image_manifest(config: bytes = b"{}", layers: Iterable[bytes] = (), *, media_type: str = OCI_MANIFEST,
                   config_type: str | None = None, subject: bytes | None = None, subject_type: str = OCI_MANIFEST,
                   **fields: Any) -> bytes:
    """An image manifest (OCI or Docker v2) for the given config and layer bytes."""
    docker = media_type == DOCKER_MANIFEST
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type or (DOCKER_CONFIG if docker else OCI_CONFIG), config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
    }
    if subject is not None:
        document["subject"] = descriptor(subject_type, subject)
    document.update(fields)
    return encode(document)


def index_manifest(children: Iterable[bytes], *, media_type: str = OCI_INDEX) -> bytes:
    child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    platform = {"architecture": "amd64", "os": "linux"}
    return encode({"schemaVersion": 2, "mediaType": media_type,
                   "manifests": [descriptor(child_type, child, platform=platform) for child in children]})


def put_manifest(daemon: Client, namespace: str, reference: str, body: bytes,
                 media_type: str = OCI_MANIFEST) -> Response:
    return daemon.request("PUT", f"/v2/{namespace}/manifests/{reference}", body, {"Content-Type": media_type})


def push_manifest(daemon: Client, namespace: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
    """PUT a manifest that must be accepted; returns its digest."""
    response = put_manifest(daemon, namespace, reference, body, media_type)
    assert response.status == 201, (response.status, response.body)
    return response.headers["docker-content-digest"]


def push_image(daemon: Client, namespace: str, tag: str, seed: int = 0, media_type: str = OCI_MANIFEST) -> bytes:
    """Upload a config and a layer, push an image manifest referencing them; returns its bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = payload(1000 + seed, seed)
    push_blob(daemon, namespace, config)
    push_blob(daemon, namespace, layer)
    body = image_manifest(config, [layer], media_type=media_type)
    push_manifest(daemon, namespace, tag, body, media_type)
    return body


# -- connections ---------------------------------------------------------------------------


def raw_request(daemon: Client, data: bytes) -> Response:
    """Send exact bytes (a whole request) on a fresh connection and parse the response."""
    return daemon.raw(data)


def reset_close(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the abrupt end of a client that died."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that (or fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(interval)


# -- storage -------------------------------------------------------------------------------


def snapshot(root: str) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as source:
                found[os.path.relpath(path, root)] = hashlib.sha256(source.read()).hexdigest()
    return found

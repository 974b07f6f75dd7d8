"""Refusals happen on the headers: nothing of a refused upload reaches the disk.

The application runs in memory on a filesystem store; passwords are verified through its
thread pool (run inline by the harness).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from angosd.auth.basic import hash_password
from tests.inmemory import InMemoryDaemon

MiB = 1024 * 1024
CONFIG = """
[global.access_policy]
default = "deny"
rules = ["identity.username == 'ci'", "identity.username == 'reader' && request.action == 'get-api-version'"]

[auth.identity.ci]
username = "ci"
password = "{ci}"

[auth.identity.reader]
username = "reader"
password = "{reader}"
"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> InMemoryDaemon:
    base = tmp_path_factory.mktemp("guarded")
    config = CONFIG.format(ci=hash_password("ci-pass"), reader=hash_password("reader-pass"))
    return InMemoryDaemon(config, root=str(base / "store"))


def test_anonymous_upload_is_challenged_and_writes_nothing(guarded: InMemoryDaemon) -> None:
    assert guarded.root is not None
    root = Path(guarded.root)
    before = files_under(root)
    data = os.urandom(20 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response = guarded.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", data,
                               {"Content-Type": "application/octet-stream"})
    assert response.status == 401
    assert response.error_codes == ["UNAUTHORIZED"]
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert files_under(root) == before


def test_refused_chunk_with_expect_continue_writes_nothing(guarded: InMemoryDaemon) -> None:
    session = guarded.request("POST", "/v2/team/app/blobs/uploads/", headers=basic("ci", "ci-pass"))
    assert session.status == 202
    location = session.headers["location"]
    assert guarded.root is not None
    root = Path(guarded.root)
    before = files_under(root)
    data = b"x" * MiB
    reply = guarded.raw((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                         "Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n").encode() + data)
    assert reply.status == 401
    assert files_under(root) == before
    status = guarded.request("GET", location, headers=basic("ci", "ci-pass"))
    assert status.headers["range"] == "0-0"


def test_wrong_password_is_401_at_once(guarded: InMemoryDaemon) -> None:
    response = guarded.request("GET", "/v2/", headers=basic("ci", "wrong"))
    assert response.status == 401
    assert response.error_codes == ["UNAUTHORIZED"]


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Digest abc",
                                    "Bearer eyJhbGciOiJub25lIn0.e30."])
def test_malformed_or_unsupported_credentials_are_401(guarded: InMemoryDaemon, header: str) -> None:
    response = guarded.request("GET", "/v2/", headers={"Authorization": header})
    assert response.status == 401


def test_authenticated_but_denied_is_403(guarded: InMemoryDaemon) -> None:
    assert guarded.request("GET", "/v2/", headers=basic("reader", "reader-pass")).status == 200
    response = guarded.request("GET", "/v2/_catalog", headers=basic("reader", "reader-pass"))
    assert response.status == 403
    assert response.error_codes == ["DENIED"]
    assert "www-authenticate" not in response.headers


def test_allowed_user_pushes(guarded: InMemoryDaemon) -> None:
    data = b"allowed"
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response = guarded.request("POST", f"/v2/team/ok/blobs/uploads/?digest={digest}", data,
                               {"Content-Type": "application/octet-stream", **basic("ci", "ci-pass")})
    assert response.status == 201
    assert guarded.request("GET", f"/v2/team/ok/blobs/{digest}", headers=basic("ci", "ci-pass")).body == data


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health_is_never_behind_authentication(guarded: InMemoryDaemon, path: str) -> None:
    assert guarded.request("GET", path).status == 200

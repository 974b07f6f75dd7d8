"""What a hostile web page could do with a browser's saved credentials, and what a pushed
blob could do in a browser: cross-site writes are refused, nothing is sniffed, listings
show only what the caller may see, and ``/v1/*`` is a JSON 404 (podman search)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from angosd.auth.basic import hash_password
from tests.inmemory import InMemoryDaemon

ADMIN = "admin-pass"
CONFIG = """
[global.access_policy]
default = "allow"

[repository."public"]

[repository."secret"]
[repository."secret".access_policy]
default = "deny"
rules = ["identity.username == 'admin'"]

[auth.identity.admin]
username = "admin"
password = "{admin}"
"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def daemon() -> InMemoryDaemon:
    registry = InMemoryDaemon(CONFIG.format(admin=hash_password(ADMIN)))
    for namespace in ("public/a", "public/b", "public/c", "secret/x", "secret/y"):
        push_manifest(registry, namespace)
    return registry


def push_blob(registry: InMemoryDaemon, namespace: str, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response = registry.request("POST", f"/v2/{namespace}/blobs/uploads/?digest={digest}", data,
                                {**basic("admin", ADMIN), "Content-Type": "application/octet-stream"})
    assert response.status == 201, response.body
    return digest


def push_manifest(registry: InMemoryDaemon, namespace: str) -> None:
    config = push_blob(registry, namespace, b"{}")
    manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"' + config.encode() +
                b'","size":2},"layers":[]}')
    response = registry.request("PUT", f"/v2/{namespace}/manifests/v1", manifest,
                                {**basic("admin", ADMIN), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status == 201, response.body


# -- cross-site requests ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://registry.example.evil.example"},
])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/public/a/blobs/uploads/"),
    ("POST", "/v2/public/a/blobs/uploads/?mount=sha256:" + "0" * 64 + "&from=secret/x"),
    ("PUT", "/v2/public/a/manifests/v2"),
    ("DELETE", "/v2/public/a/manifests/v1"),
    ("PATCH", "/v2/public/a/blobs/uploads/00000000-0000-0000-0000-000000000000"),
])
def test_cross_site_writes_are_refused(daemon: InMemoryDaemon, headers: dict[str, str], method: str,
                                       path: str) -> None:
    response = daemon.request(method, path, b"x", {**basic("admin", ADMIN), "Host": "registry.example",
                                                   "Content-Type": "text/plain", **headers})
    assert response.status == 403
    assert response.error_codes == ["DENIED"]
    assert b"cross-site" in response.body


def test_same_origin_and_plain_clients_may_write(daemon: InMemoryDaemon) -> None:
    for headers in ({}, {"Origin": "http://registry.example", "Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "none"}):
        response = daemon.request("POST", "/v2/public/a/blobs/uploads/", None,
                                  {**basic("admin", ADMIN), "Host": "registry.example", **headers})
        assert response.status == 202, (headers, response.body)


def test_cross_site_reads_are_not_refused(daemon: InMemoryDaemon) -> None:
    response = daemon.request("GET", "/v2/public/a/tags/list", headers={"Sec-Fetch-Site": "cross-site",
                                                                         "Origin": "https://evil.example"})
    assert response.status == 200


# -- nosniff ------------------------------------------------------------------------------------

def test_blobs_are_never_sniffed_or_rendered(daemon: InMemoryDaemon) -> None:
    digest = push_blob(daemon, "public/a", b"alert(document.domain)//<script>")
    for method in ("GET", "HEAD"):
        response = daemon.request(method, f"/v2/public/a/blobs/{digest}")
        assert response.status == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"] == "attachment"
        assert response.headers["content-security-policy"].startswith("sandbox")


def test_manifests_and_errors_are_not_sniffed(daemon: InMemoryDaemon) -> None:
    manifest = daemon.request("GET", "/v2/public/a/manifests/v1")
    assert manifest.status == 200
    assert manifest.headers["x-content-type-options"] == "nosniff"
    missing = daemon.request("GET", "/v2/public/a/blobs/sha256:" + "1" * 64)
    assert missing.status == 404
    assert missing.headers["x-content-type-options"] == "nosniff"


# -- listings -----------------------------------------------------------------------------------

def test_catalog_hides_what_the_caller_may_not_see(daemon: InMemoryDaemon) -> None:
    anonymous = daemon.request("GET", "/v2/_catalog")
    assert anonymous.json() == {"repositories": ["public/a", "public/b", "public/c"]}
    admin = daemon.request("GET", "/v2/_catalog", headers=basic("admin", ADMIN))
    assert admin.json()["repositories"] == ["public/a", "public/b", "public/c", "secret/x", "secret/y"]


def test_catalog_pagination_after_filtering(daemon: InMemoryDaemon) -> None:
    first = daemon.request("GET", "/v2/_catalog?n=2")
    assert first.json() == {"repositories": ["public/a", "public/b"]}
    assert first.headers["link"] == '</v2/_catalog?n=2&last=public/b>; rel="next"'
    second = daemon.request("GET", "/v2/_catalog?n=2&last=public/b")
    assert second.json() == {"repositories": ["public/c"]}
    assert "link" not in second.headers  # the hidden secret/* names do not make a phantom next page
    admin = daemon.request("GET", "/v2/_catalog?n=2&last=public/c", headers=basic("admin", ADMIN))
    assert admin.json() == {"repositories": ["secret/x", "secret/y"]}


def test_extension_listings_are_filtered(daemon: InMemoryDaemon) -> None:
    anonymous = daemon.request("GET", "/v2/_ext/_repositories").json()["repositories"]
    assert [(r["name"], r["namespaces"]) for r in anonymous] == [("public", 3)]
    admin = daemon.request("GET", "/v2/_ext/_repositories", headers=basic("admin", ADMIN)).json()["repositories"]
    assert [(r["name"], r["namespaces"]) for r in admin] == [("public", 3), ("secret", 2)]
    hidden = daemon.request("GET", "/v2/_ext/secret/_namespaces")
    assert hidden.status == 401  # the repository's policy denies list-namespaces to anonymous callers
    listed = daemon.request("GET", "/v2/_ext/secret/_namespaces", headers=basic("admin", ADMIN)).json()
    assert [n["name"] for n in listed["namespaces"]] == ["secret/x", "secret/y"]


# -- the v1 API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("default", ["allow", "deny"])
def test_v1_is_a_json_404_even_with_the_ui_on(default: str) -> None:
    registry = InMemoryDaemon(f'[ui]\nenabled = true\n[global.access_policy]\ndefault = "{default}"\n')
    for path in ("/v1/search?q=alpine&n=25", "/v1/_ping", "/v1"):
        response = registry.request("GET", path)
        assert response.status == 404, path
        assert response.headers["content-type"] == "application/json"
        assert response.error_codes == ["NAME_UNKNOWN"]
    if default == "allow":  # other paths are still the UI's pages
        assert registry.request("GET", "/somewhere").headers["content-type"].startswith("text/html")

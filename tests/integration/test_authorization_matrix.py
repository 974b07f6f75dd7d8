"""Who may do what: identities x actions x repositories, every cell asserted.

The daemon listens on TLS with optional client certificates, so all five identities
reach it the same way: anonymous, a Basic user, a certificate of the CI team (CN=build,
O=ci), a certificate of another team, and an OIDC token with group claims.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from angosd.auth.basic import hash_password
from tests.certs import CA
from tests.daemon import Daemon
from tests.oidc_issuer import OidcIssuer

INDEX = "application/vnd.oci.image.index.v1+json"
IDENTITIES = ("anonymous", "admin", "ci-cert", "web-cert", "oidc-ops")
ACTIONS = ("pull", "push", "delete", "list", "ext")
REPOSITORIES = ("apps", "secure")

POLICY = """
[global.access_policy]
default = "deny"
rules = [
  "request.action == 'get-api-version'",
  "identity.username != null || size(identity.certificate.common_names) > 0 || identity.oidc != null",
]

[repository."apps".access_policy]
default = "deny"
rules = {apps_rules}

[repository."secure".access_policy]
default = "deny"
rules = [
  "identity.oidc != null && 'ops' in identity.oidc.claims['groups']",
  "identity.username == 'admin' && request.action.startsWith('get-')",
]

[auth.identity.admin]
username = "admin"
password = "{admin_hash}"

[auth.oidc.corp]
issuer = "{issuer}"
jwks_uri = "{jwks_uri}"
required_audience = "angosd"

[server.tls]
server_certificate_bundle = "{server_cert}"
server_private_key = "{server_key}"
client_ca_bundle = "{ca}"
client_auth = "optional"
"""

CI_WRITES = ["put-manifest", "start-upload", "update-upload", "complete-upload", "get-upload", "mount-blob"]
APPS_RULES = [
    "request.action in ['get-manifest', 'get-blob', 'list-tags', 'get-referrers', 'list-revisions']",
    f"'ci' in identity.certificate.organizations && request.action in {CI_WRITES}",
    "identity.username == 'admin'",
]
OK = {"pull": 200, "push": 201, "delete": 202, "list": 200, "ext": 200}
#: Which (identity, repository, action) cells the policies allow; everything else is refused.
ALLOWED = {
    ("admin", "apps"): {"pull", "push", "delete", "list", "ext"},
    ("ci-cert", "apps"): {"pull", "push", "list", "ext"},
    ("web-cert", "apps"): {"pull", "list", "ext"},
    ("oidc-ops", "apps"): {"pull", "list", "ext"},
    ("admin", "secure"): {"pull"},
    ("oidc-ops", "secure"): {"pull", "push", "delete", "list", "ext"},
}


def expected(identity: str, repository: str, action: str) -> int:
    if action in ALLOWED.get((identity, repository), set()):
        return OK[action]
    return 401 if identity == "anonymous" else 403


class _Jwks(BaseHTTPRequestHandler):
    document = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class World:
    daemon: Daemon
    contexts: dict[str, ssl.SSLContext]
    headers: dict[str, dict[str, str]]

    def request(self, identity: str, method: str, path: str, body: bytes | None = None,
                extra: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", self.daemon.port, timeout=30,
                                                 context=self.contexts[identity])
        try:
            connection.request(method, path, body=body, headers={**self.headers[identity], **(extra or {})})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


def manifest(marker: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [],
                       "annotations": {"m": marker}}).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("matrix")
    ca = CA("matrix CA")
    server_cert, server_key = ca.server().write(base, "server")
    ca_file = ca.write(base / "ca.pem")
    issuer = OidcIssuer()
    jwks = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    issuer.base_url = f"http://127.0.0.1:{jwks.server_address[1]}"
    _Jwks.document = json.dumps(issuer.jwks()).encode()
    threading.Thread(target=jwks.serve_forever, daemon=True).start()

    seed = Daemon(str(base / "seed"), str(base / "store")).start()
    for repository in REPOSITORIES:
        for tag in ("v1", *(f"del-{identity}" for identity in IDENTITIES)):
            assert seed.request("PUT", f"/v2/{repository}/x/manifests/{tag}", manifest(f"{repository}-{tag}"),
                                {"Content-Type": INDEX}).status == 201
    seed.stop()

    config = base / "angosd.toml"
    config.write_text(POLICY.format(apps_rules=json.dumps(APPS_RULES), admin_hash=hash_password("admin-pass"),
                                    issuer=issuer.issuer, jwks_uri=issuer.base_url + "/jwks", server_cert=server_cert,
                                    server_key=server_key, ca=ca_file))
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()

    contexts: dict[str, ssl.SSLContext] = {}
    for identity in IDENTITIES:
        context = ssl.create_default_context(cafile=ca_file)
        if identity.endswith("-cert"):
            team = "ci" if identity == "ci-cert" else "web-team"
            cert, key = ca.client("build" if team == "ci" else "web", organizations=(team,)).write(base, identity)
            context.load_cert_chain(cert, key)
        contexts[identity] = context
    token = issuer.issue(issuer.claims(time.time(), aud="angosd", groups=["dev", "ops"]))
    admin = "Basic " + base64.b64encode(b"admin:admin-pass").decode()
    headers = {identity: {} for identity in IDENTITIES}
    headers["admin"] = {"Authorization": admin}
    headers["oidc-ops"] = {"Authorization": f"Bearer {token}"}
    try:
        yield World(daemon, contexts, headers)
    finally:
        daemon.stop()
        jwks.shutdown()


def perform(world: World, identity: str, repository: str, action: str) -> int:
    namespace = f"{repository}/x"
    if action == "pull":
        return world.request(identity, "GET", f"/v2/{namespace}/manifests/v1", extra={"Accept": INDEX})
    if action == "push":
        return world.request(identity, "PUT", f"/v2/{namespace}/manifests/by-{identity}",
                             manifest(f"{identity}"), {"Content-Type": INDEX})
    if action == "delete":
        return world.request(identity, "DELETE", f"/v2/{namespace}/manifests/del-{identity}")
    if action == "list":
        return world.request(identity, "GET", f"/v2/{namespace}/tags/list")
    return world.request(identity, "GET", f"/v2/_ext/{namespace}/_revisions")


@pytest.mark.parametrize("repository", REPOSITORIES)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("identity", IDENTITIES)
def test_matrix_cell(world: World, identity: str, action: str, repository: str) -> None:
    assert perform(world, identity, repository, action) == expected(identity, repository, action)


def test_invalid_token_is_401_even_where_anonymous_would_be_allowed(world: World) -> None:
    world.headers["bad-token"] = {"Authorization": "Bearer not.a.jwt"}
    world.contexts["bad-token"] = world.contexts["anonymous"]
    assert world.request("bad-token", "GET", "/v2/") == 401
    assert world.request("anonymous", "GET", "/v2/") == 200

"""Angos configuration keys: each one works, or is warned about by name at start and by
``angosd check-config``. In memory: ``trusted_proxies``, ``max_concurrent_requests``, the
connection lifetime (``query_timeout``, ``query_timeout_grace_period``), ``?ns=`` routing;
the loader and check-config: the warned keys of an Angos configuration, ``[storage]``,
``enable_redirect``, and secure-by-default."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher
from twisted.python import usage

from angosd.commands import check_config
from angosd.config import load_config
from angosd.config.exposure import exposure_problem
from angosd.daemon.tap import Options, makeService
from angosd.http.forwarded import client_address, parse_networks
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import OCI_MANIFEST, assert_error, digest, image_manifest

#: The example configuration of the Angos feature inventory (our deployment's), verbatim in
#: its keys; file paths and secrets are placeholders.
ANGOS_EXAMPLE = """
[server]
bind_address = "0.0.0.0"
port = 8443
query_timeout = 7200
query_timeout_grace_period = 120

[server.tls]
server_certificate_bundle = "/etc/registry/tls/server-fullchain.pem"
server_private_key        = "/etc/registry/tls/server.key"
client_ca_bundle          = "/etc/registry/tls/clients-ca.pem"
client_auth               = "optional"

[global]
max_concurrent_cache_jobs = 8
update_pull_time = true
enable_redirect = false
immutable_tags = false
immutable_tags_exclusions = ["^latest$", "^main$", "^pr-[0-9]+$"]
authorization_webhook = "opa"
event_webhooks = ["audit"]
trusted_proxies = []

[global.access_policy]
default_allow = false
rules = [
  "request.action in ['healthz', 'metrics']",
  "size(identity.certificate.common_names) > 0 && request.action in ['get-api-version', 'get-manifest', \
'get-blob', 'get-referrers', 'list-tags']",
  "identity.username != null && request.action in ['ui-asset', 'ui-config', 'list-repositories', \
'list-namespaces', 'list-revisions', 'list-uploads', 'get-api-version']",
  "identity.id == 'admin'",
  "'ci' in identity.certificate.organizations",
  "identity.oidc != null && identity.oidc.provider_name == 'keycloak'",
]

[global.retention_policy]
rules = [
  "image.tag != null && image.tag.matches('^v[0-9]+[.][0-9]+[.][0-9]+$')",
  "top_pushed(15)",
  "image.last_pulled_at > now() - days(30)",
]

[blob_store.fs]
root_dir = "/srv/registry/data"
sync_to_disk = true

[metadata_store.fs]
root_dir = "/srv/registry/meta"

[cache.redis]
url = "redis://127.0.0.1:6379/2"
key_prefix = "reg"

[auth.identity.admin]
username = "admin"
password = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ"

[auth.identity.viewer]
username = "viewer"
password = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ"

[auth.oidc.keycloak]
provider = "generic"
issuer = "https://sso.corp.internal/realms/eng"
jwks_uri = "https://sso.corp.internal/realms/eng/protocol/openid-connect/certs"
required_audience = "registry"
clock_skew_tolerance = 30

[auth.webhook.opa]
url = "https://opa.corp.internal:8181/v1/registry/allow"
timeout_ms = 800
bearer_token = "REPLACE"
server_ca_bundle = "/etc/registry/tls/corp-ca.pem"
forward_headers = ["X-Request-Id"]
cache_ttl = 30

[repository."apps"]
immutable_tags = true
immutable_tags_exclusions = ["^latest$", "^rc-.*$"]

[repository."apps".access_policy]
default_allow = false
rules = [
  "request.action.startsWith('list-') || request.action in ['get-manifest','get-blob','get-referrers']",
  "'team-apps' in identity.certificate.organizations",
  "identity.oidc != null && 'apps-writers' in identity.oidc.claims['groups']",
]

[repository."apps".retention_policy]
rules = ["image.pushed_at > now() - days(180)"]

[repository."hub"]
namespace = "docker.io"
immutable_tags = true
immutable_tags_exclusions = ["^latest$", "^stable$", "^edge$"]
authorization_webhook = ""

[[repository."hub".upstream]]
url = "https://relay.dmz.internal"
client_certificate = "/etc/registry/tls/relay-client.pem"
client_private_key = "/etc/registry/tls/relay-client.key"
server_ca_bundle = "/etc/registry/tls/corp-ca.pem"

[[repository."hub".upstream]]
url = "https://registry-1.docker.io"
username = "corp-mirror"
password = "REPLACE"
max_redirect = 5

[repository."quay"]
immutable_tags = true

[[repository."quay".upstream]]
url = "https://quay.io"

[event_webhook.audit]
url = "https://siem.corp.internal/hooks/registry"
policy = "async"
events = ["manifest.push", "manifest.delete", "tag.delete"]
token = "REPLACE"
repository_filter = ["^apps$"]

[ui]
"""

#: The keys of `ANGOS_EXAMPLE` that do nothing in angosd, each warned about once: cache
#: fills are not a thread pool here; OIDC providers need no preset (issuer, audience and
#: claims say everything).
WARNED = ["global.max_concurrent_cache_jobs", "auth.oidc.keycloak.provider"]


def write(tmp_path: Path, text: str, name: str = "angosd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_angos_example_warns_once_per_key_that_has_no_effect(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, ANGOS_EXAMPLE)
    warnings: list[str] = []
    config = load_config([path], warn=warnings.append)
    assert warnings == [f"{path}: accepted for compatibility, has no effect in angosd: {key}" for key in WARNED]
    assert config.server.query_timeout == 7200 and config.server.query_timeout_grace_period == 120
    assert config.global_.enable_blob_redirect is False  # enable_redirect is its alias
    assert config.metadata_store is not None and config.metadata_store.root_dir == "/srv/registry/meta"
    assert config.repository_for_ns("docker.io") is not None
    assert config.repository_for_ns("docker.io").name == "hub"  # type: ignore[union-attr]
    check_config.run(argparse.Namespace(configs=[path]))
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "no effect" in line] == [
        f"warning: {path}: accepted for compatibility, has no effect in angosd: {key}" for key in WARNED]
    assert not [line for line in err if "unknown key" in line]


def test_storage_is_a_deprecated_alias_of_blob_store(tmp_path: Path) -> None:
    warnings: list[str] = []
    config = load_config([write(tmp_path, '[storage.fs]\nroot_dir = "/srv/old"\n')], warn=warnings.append)
    assert config.blob_store.root_dir == "/srv/old"
    assert len(warnings) == 1 and "storage: deprecated alias of [blob_store]" in warnings[0]
    both = load_config([write(tmp_path, '[storage.fs]\nroot_dir = "/a"\n[blob_store.fs]\nroot_dir = "/b"\n', "2.toml")],
                       warn=warnings.append)
    assert both.blob_store.root_dir == "/b" and "ignored" in warnings[-1]


def test_two_repositories_cannot_claim_one_ns(tmp_path: Path) -> None:
    path = write(tmp_path, '[repository."a"]\nnamespace = "docker.io"\n[repository."b"]\nnamespace = "docker.io"\n')
    problems = check_config.check([path])
    assert len(problems) == 1 and 'repository.b.namespace: \'docker.io\' is also the namespace of' in problems[0]


# -- secure by default ------------------------------------------------------------------------


def test_a_network_daemon_without_access_policy_is_refused(tmp_path: Path) -> None:
    open_config = load_config([write(tmp_path, '[server]\nbind_address = "0.0.0.0"\n')])
    problem = exposure_problem(open_config)
    assert problem is not None and "no access policy" in problem and "[global.access_policy]" in problem
    assert "\n" not in problem
    assert exposure_problem(load_config([write(tmp_path, "", "empty.toml")])) is None  # the 127.0.0.1 quick start
    assert exposure_problem(open_config, "tcp:5000:interface=127.0.0.1") is None
    assert exposure_problem(open_config, "tcp:5000") is not None
    assert exposure_problem(open_config, "systemd:domain=INET:index=0") is None  # the socket's owner decides
    chosen = load_config([write(tmp_path, '[server]\nbind_address = "::"\n[global.access_policy]\ndefault = "allow"\n',
                                "chosen.toml")])
    assert exposure_problem(chosen) is None
    problems = check_config.check([write(tmp_path, '[server]\nbind_address = "0.0.0.0"\n', "c.toml")])
    assert len(problems) == 1 and "no access policy" in problems[0]


def test_the_daemon_refuses_to_start_exposed_without_policy(tmp_path: Path) -> None:
    options = Options()
    try:
        options.parseOptions(["-c", write(tmp_path, '[server]\nbind_address = "0.0.0.0"\nport = 0\n')])
    except usage.UsageError as exc:  # pragma: no cover - the options are valid
        raise AssertionError(exc) from None
    with pytest.raises(SystemExit) as stopped:
        makeService(options)
    message = str(stopped.value)
    assert message.startswith("angosd: configuration error:") and "no access policy" in message


# -- trusted proxies ---------------------------------------------------------------------------


@pytest.mark.parametrize(("peer", "forwarded", "real_ip", "proxies", "client"), [
    ("127.0.0.1", ["203.0.113.9"], None, ["127.0.0.1/32"], "203.0.113.9"),
    ("127.0.0.1", ["203.0.113.9"], None, [], "127.0.0.1"),
    ("198.51.100.1", ["203.0.113.9"], None, ["127.0.0.1/32"], "198.51.100.1"),
    ("10.0.0.2", ["6.6.6.6, 203.0.113.9, 10.0.0.1"], None, ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.2", ["6.6.6.6", "203.0.113.9"], None, ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.2", ["garbage, 10.0.0.7"], None, ["10.0.0.0/8"], "10.0.0.7"),
    ("10.0.0.2", [], "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
    ("::1", ["[2001:db8::7]:4711"], None, ["::1"], "2001:db8::7"),
])
def test_client_address(peer: str, forwarded: list[str], real_ip: str | None, proxies: list[str],
                        client: str) -> None:
    assert client_address(peer, forwarded, real_ip, parse_networks(proxies)) == client


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


POLICY = ('[global.access_policy]\ndefault = "deny"\n'
          "rules = [\"identity.client_ip == '203.0.113.9'\", \"request.action == 'healthz'\"]\n")


def test_trusted_proxies_name_the_client_in_policies_and_logs(logged: list[dict[str, Any]]) -> None:
    behind = InMemoryDaemon('[global]\ntrusted_proxies = ["127.0.0.0/8"]\n' + POLICY)
    allowed = behind.request("GET", "/v2/_catalog", headers={"X-Forwarded-For": "203.0.113.9"})
    assert allowed.status == 200
    assert any(event.get("access", {}).get("client") == "203.0.113.9" for event in logged)
    assert behind.request("GET", "/v2/_catalog", headers={"X-Forwarded-For": "198.51.100.1"}).status == 401
    direct = InMemoryDaemon(POLICY)  # the peer is no trusted proxy: the header is the client's own claim
    assert direct.request("GET", "/v2/_catalog", headers={"X-Forwarded-For": "203.0.113.9"}).status == 401


# -- max_concurrent_requests -------------------------------------------------------------------


def test_requests_beyond_max_concurrent_requests_get_429_with_retry_after() -> None:
    daemon = InMemoryDaemon("[global]\nmax_concurrent_requests = 1\n")
    location = daemon.request("POST", "/v2/team/app/blobs/uploads/").headers["location"]
    slow = daemon.connect()
    slow.protocol.dataReceived(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234".encode())
    busy = daemon.request("GET", "/v2/")
    assert_error(busy, 429, "TOOMANYREQUESTS")
    assert busy.headers["retry-after"] == "1"
    assert daemon.request("GET", "/healthz").status == 200  # probes are never refused
    answer = slow.send(b"56789")
    assert answer.status == 202 and answer.headers["range"] == "0-9"
    slow.close()
    assert daemon.request("GET", "/v2/").status == 200


# -- connection lifetime -------------------------------------------------------------------------


def test_query_timeout_closes_an_idle_connection_and_cuts_a_late_one() -> None:
    daemon = InMemoryDaemon("[server]\nquery_timeout = 30\nquery_timeout_grace_period = 5\n", patience=100)
    idle = daemon.connect()
    assert idle.request("GET", "/v2/").status == 200
    daemon.reactor.advance(29)
    assert not idle.transport.disconnecting
    daemon.reactor.advance(2)
    assert idle.transport.disconnecting
    idle.close()
    busy = daemon.connect()
    location = busy.request("POST", "/v2/team/app/blobs/uploads/").headers["location"]
    busy.protocol.dataReceived(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01".encode())
    daemon.reactor.advance(31)  # a request is in progress: it gets the grace period
    assert not busy.transport.disconnecting
    daemon.reactor.advance(6)
    assert busy.transport.disconnecting or busy.lost
    unlimited = InMemoryDaemon(patience=100).connect()
    assert unlimited.protocol._life is None  # type: ignore[attr-defined]  # no lifetime without query_timeout


# -- ?ns= ------------------------------------------------------------------------------------------


def test_ns_routes_pulls_to_the_repository_declaring_it() -> None:
    daemon = InMemoryDaemon('[repository."hub"]\nnamespace = "docker.io"\nallow_missing_manifest_references = true\n'
                            '[repository."local"]\n')
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'
    headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
    assert daemon.request("PUT", "/v2/hub/library/alpine/manifests/3.20", body, headers).status == 201
    routed = daemon.request("GET", "/v2/library/alpine/manifests/3.20?ns=docker.io")
    assert routed.status == 200 and routed.body == body
    assert routed.headers["oci-namespace"] == "docker.io"
    tags = daemon.request("GET", "/v2/library/alpine/tags/list?ns=docker.io")
    assert tags.json() == {"name": "hub/library/alpine", "tags": ["3.20"]}
    assert daemon.request("GET", "/v2/hub/library/alpine/manifests/3.20?ns=docker.io").body == body
    assert_error(daemon.request("GET", "/v2/library/alpine/manifests/3.20?ns=quay.io"), 404, "NAME_UNKNOWN")
    # Writes ignore ns=: this one targets library/alpine itself, which no repository serves.
    assert_error(daemon.request("PUT", "/v2/library/alpine/manifests/x?ns=docker.io", body, headers), 404,
                 "NAME_UNKNOWN")


# -- [metadata_store] ------------------------------------------------------------------------------


def test_metadata_store_fs_keeps_metadata_in_its_own_directory(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    daemon = InMemoryDaemon(f'[metadata_store.fs]\nroot_dir = "{meta}"\n', root=str(tmp_path / "data"))
    config = b'{"os": "linux"}'
    pushed = daemon.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest(config)}", config)
    assert pushed.status == 201
    pending = daemon.request("POST", "/v2/team/app/blobs/uploads/").headers["location"].rsplit("/", 1)[1]
    body = image_manifest(config)
    assert daemon.request("PUT", "/v2/team/app/manifests/v1", body, {"Content-Type": OCI_MANIFEST}).status == 201
    assert daemon.request("GET", "/v2/team/app/manifests/v1").body == body
    assert daemon.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["v1"]
    assert daemon.request("GET", "/v2/_catalog").json() == {"repositories": ["team/app"]}
    assert (meta / "repositories" / "team" / "app" / "_manifests").is_dir()
    assert not (tmp_path / "data" / "repositories" / "team" / "app" / "_manifests").exists()
    assert (tmp_path / "data" / "repositories" / "team" / "app" / "_uploads" / pending).is_dir()
    assert not (meta / "blobs").exists() and (tmp_path / "data" / "blobs").is_dir()

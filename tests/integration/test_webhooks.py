"""Authorization and event webhooks against real receivers (plain HTTP and mutual TLS)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from angosd.auth.basic import hash_password
from tests.certs import CA
from tests.daemon import Daemon

INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class Receiver:
    """A real HTTP server that records what it receives and answers as told."""

    status: int = 200
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)  # statuses for the next requests, then `status`
    server: ThreadingHTTPServer | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self, tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "all_headers": self.headers, "body": body, "at": time.monotonic()})
                time.sleep(receiver.delay)
                self.send_response(receiver.script.pop(0) if receiver.script else receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.scheme = "https"
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


USERS = f"""
[auth.identity.dev]
username = "dev"
password = "{hash_password('dev-pass')}"
"""
DEV = basic("dev", "dev-pass")


def start(tmp_path: Path, config: str) -> Daemon:
    path = tmp_path / "angosd.toml"
    path.write_text(config + USERS)
    return Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(path),)).start()


def auth_config(url: str, extra: str = "") -> str:
    return f"""
[repository."apps"]
authorization_webhook = "authz"
[repository."open"]
[auth.webhook.authz]
url = "{url}"
timeout_ms = 500
cache_ttl = 0
forward_headers = ["X-Request-Id", "Authorization"]
{extra}
"""


def test_authorization_webhook_allows_and_denies(tmp_path: Path, receiver: Receiver) -> None:
    daemon = start(tmp_path, auth_config(receiver.url))
    try:
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers={**DEV, "X-Request-Id": "r-1"}).status == 404
        asked = receiver.seen[-1]["headers"]
        assert asked["X-Registry-Action"] == "list-tags"
        assert asked["X-Registry-Namespace"] == "apps/web"
        assert asked["X-Registry-Username"] == "dev"
        assert asked["X-Request-Id"] == "r-1"
        assert "Authorization" not in asked, "client credentials are never forwarded"
        receiver.status = 403
        denied = daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV)
        assert denied.status == 403 and denied.error_codes == ["DENIED"]
        assert daemon.request("GET", "/v2/apps/web/tags/list").status == 401, "anonymous callers are challenged"
        calls = len(receiver.seen)
        assert daemon.request("GET", "/v2/open/x/tags/list", headers=DEV).status == 404
        assert len(receiver.seen) == calls, "repositories without a webhook never ask it"
    finally:
        daemon.stop()


def test_slow_or_down_webhook_denies(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay = 2.0
    daemon = start(tmp_path, auth_config(receiver.url))
    try:
        started = time.monotonic()
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 403
        assert time.monotonic() - started < 1.8, "the timeout_ms bound must apply"
    finally:
        daemon.stop()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    daemon = start(tmp_path, auth_config(f"http://127.0.0.1:{closed_port}/hook"))
    try:
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 403
    finally:
        daemon.stop()


def test_decisions_are_cached_for_cache_ttl(tmp_path: Path, receiver: Receiver) -> None:
    daemon = start(tmp_path, auth_config(receiver.url).replace("cache_ttl = 0", "cache_ttl = 2"))
    try:
        for _ in range(3):
            assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 404
        assert len(receiver.seen) == 1
        receiver.status = 403
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 404, "still cached"
        time.sleep(2.2)
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 403
        assert len(receiver.seen) == 2
    finally:
        daemon.stop()


def test_webhook_over_mutual_tls(tmp_path: Path) -> None:
    ca = CA("webhook test CA")
    server_cert, server_key = ca.server().write(tmp_path, "srv")
    client_cert, client_key = ca.client("angosd").write(tmp_path, "cli")
    ca_file = ca.write(tmp_path / "ca.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    receiver = Receiver().start(context)
    extra = (f'server_ca_bundle = "{ca_file}"\nclient_certificate_bundle = "{client_cert}"\n'
             f'client_private_key = "{client_key}"\n')
    daemon = start(tmp_path, auth_config(receiver.url, extra))
    try:
        assert daemon.request("GET", "/v2/apps/web/tags/list", headers=DEV).status == 404
        assert len(receiver.seen) == 1
    finally:
        daemon.stop()
        receiver.stop()


def event_config(url: str, policy: str, token: str = "s3cret") -> str:
    return f"""
[global]
event_webhooks = ["audit"]
[event_webhook.audit]
url = "{url}"
policy = "{policy}"
token = "{token}"
timeout_ms = 3000
max_retries = 1
"""


def manifest(marker: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [],
                       "annotations": {"m": marker}}).encode()


def test_events_are_signed_and_carry_the_actor(tmp_path: Path, receiver: Receiver) -> None:
    daemon = start(tmp_path, event_config(receiver.url, "required"))
    try:
        response = daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest("a"),
                                  {"Content-Type": INDEX, **DEV})
        assert response.status == 201
        kinds = [seen["headers"]["X-Registry-Event"] for seen in receiver.seen]
        assert kinds == ["manifest.push", "tag.create"]
        for seen in receiver.seen:
            expected = hmac.new(b"s3cret", seen["body"], hashlib.sha256).hexdigest()
            assert seen["headers"]["X-Registry-Signature-256"] == f"sha256={expected}"
        event = json.loads(receiver.seen[0]["body"])
        assert event["namespace"] == "team/app" and event["tag"] == "1.0"
        assert event["digest"] == response.headers["docker-content-digest"]
        assert event["actor"]["username"] == "dev"
        assert len({json.loads(seen["body"])["id"] for seen in receiver.seen}) == 2, "a fresh id per event"
        daemon.request("GET", "/v2/team/app/manifests/1.0", headers=DEV)
        daemon.request("DELETE", "/v2/team/app/manifests/1.0", headers=DEV)
        assert [seen["headers"]["X-Registry-Event"] for seen in receiver.seen][2:] == ["manifest.pull", "tag.delete"]
    finally:
        daemon.stop()


def test_failing_required_receiver_blocks_the_push_and_leaves_nothing(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 500
    daemon = start(tmp_path, event_config(receiver.url, "required"))
    try:
        refused = daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest("a"), {"Content-Type": INDEX, **DEV})
        assert refused.status == 503
        assert "audit" in refused.json()["errors"][0]["detail"]
        assert daemon.request("GET", "/v2/team/app/manifests/1.0", headers=DEV).status == 404
        data = b"layer bytes"
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        blob = daemon.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", data,
                              {"Content-Type": "application/octet-stream", **DEV})
        assert blob.status == 503
        assert daemon.request("HEAD", f"/v2/team/app/blobs/{digest}", headers=DEV).status == 404
        assert not list((Path(daemon.root) / "blobs").rglob("data"))
        assert not any((Path(daemon.root) / "repositories" / "team" / "app" / "_uploads").glob("*"))
        assert len(receiver.seen) == 4, "one retry for each of the two refused events"
    finally:
        daemon.stop()


def test_optional_receiver_failure_does_not_block(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 500
    daemon = start(tmp_path, event_config(receiver.url, "optional"))
    try:
        assert daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest("a"),
                              {"Content-Type": INDEX, **DEV}).status == 201
    finally:
        daemon.stop()


def test_async_delivery_never_slows_the_client(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay = 1.0
    daemon = start(tmp_path, event_config(receiver.url, "async"))
    try:
        started = time.monotonic()
        assert daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest("a"),
                              {"Content-Type": INDEX, **DEV}).status == 201
        answered = time.monotonic()
        assert answered - started < 0.8
        deadline = time.monotonic() + 10
        while len(receiver.seen) < 2:
            assert time.monotonic() < deadline, "async events never arrived"
            time.sleep(0.05)
    finally:
        daemon.stop()


def test_async_deliveries_are_drained_on_shutdown(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay = 1.0
    daemon = start(tmp_path, event_config(receiver.url, "async"))
    assert daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest("a"),
                          {"Content-Type": INDEX, **DEV}).status == 201
    daemon.stop()  # SIGTERM right after the response, while both deliveries are still pending
    assert daemon.process is not None and daemon.process.returncode == 0
    assert sorted(seen["headers"]["X-Registry-Event"] for seen in receiver.seen) == ["manifest.push", "tag.create"]


def test_events_of_requests_finishing_during_the_drain_are_delivered(tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [500]  # the first attempt fails: only a daemon that waits sees the retry through
    daemon = start(tmp_path, event_config(receiver.url, "async"))
    data = b"x" * 200_000
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    credentials = DEV["Authorization"]
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as raw:
        raw.sendall((f"POST /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {credentials}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:1000])
        time.sleep(0.5)
        assert daemon.process is not None
        daemon.process.send_signal(15)  # SIGTERM while the upload is still in flight
        time.sleep(0.3)
        raw.sendall(data[1000:])
        assert b" 201 " in raw.recv(65536).split(b"\r\n", 1)[0]
    daemon.process.wait(30)
    assert [seen["headers"]["X-Registry-Event"] for seen in receiver.seen] == ["blob.push", "blob.push"]

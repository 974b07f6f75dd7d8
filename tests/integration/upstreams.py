"""Upstream registries for the pull-through tests, all on 127.0.0.1.

- `DockerRegistry`: Debian's ``docker-registry`` (CNCF distribution 2.8) with filesystem
  storage in a temporary directory, optionally behind htpasswd Basic auth, token auth
  (`TokenServer`), or TLS with a private CA that requires a client certificate. Its access
  log (one combined-log line per request) lets a test count upstream blob GETs.
- `TokenServer`: a Docker token endpoint issuing distribution-compatible JWTs (ES256, the
  signing certificate chain in the ``x5c`` header, verified by the registry against its
  ``rootcertbundle``).
- `FakeUpstream`: a tiny registry in a thread that serves fixed manifests and blobs and can
  misbehave per blob: serve bytes that do not match the digest, or die half-way through.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from tests.certs import CA, Issued, skopeo_cert_dir
from tests.local_server import LocalHttpServer

__all__ = [
    "DOCKER_REGISTRY",
    "HTPASSWD",
    "DockerRegistry",
    "FakeUpstream",
    "MiB",
    "TlsFiles",
    "TokenServer",
    "free_port",
    "push_blob",
    "require_tool",
    "wait_for",
]

MiB = 1 << 20
DOCKER_REGISTRY = "/usr/bin/docker-registry"
HTPASSWD = shutil.which("htpasswd") or "/usr/bin/htpasswd"


def require_tool(path: str, package: str) -> None:
    """Fail (never skip) with a clear message when a tool the tests need is missing."""
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is missing: install the Debian package {package!r} (see scripts/test)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Any, timeout: float = 20, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- token endpoint ----------------------------------------------------------------------------


class TokenServer(LocalHttpServer):
    """A Docker registry token endpoint (``GET /token?service=&scope=``) on 127.0.0.1.

    Tokens grant every action asked for. With ``credentials`` (a username -> password map),
    requests without one of those Basic pairs get 401. Every granted request is recorded in
    `requests` as (scope, service, username).
    """

    issuer = "angosd-test-issuer"
    service = "angosd-test-registry"

    def __init__(self, directory: Path, credentials: dict[str, str] | None = None) -> None:
        self.credentials = credentials
        self.requests: list[tuple[str, str, str | None]] = []
        self._ca = CA("token signing root")
        self._signer: Issued = self._ca.issue("token signer", usages=None)
        self.root_bundle = self._ca.write(directory / "token-root.pem")
        super().__init__(self._handler())

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def token(self, scopes: list[str], subject: str) -> str:
        """A signed JWT granting ``scopes`` (``repository:NAME:ACTIONS``)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        chain = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
                 for cert in (self._signer.cert, *self._signer.chain)]
        return jwt.encode(claims, self._signer.key, algorithm="ES256", headers={"x5c": chain})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                username = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    username, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.credentials is not None and server.credentials.get(username) != password:
                        self._answer(401, {"details": "bad credentials"})
                        return
                elif server.credentials is not None:
                    self._answer(401, {"details": "credentials required"})
                    return
                scopes = query.get("scope", [])
                server.requests.append((" ".join(scopes), query.get("service", [""])[0], username))
                token = server.token(scopes, username or "anonymous")
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# -- docker-registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A private CA, the registry's server certificate, and a client certificate for it."""

    ca: CA
    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    cert_dir: str  # a containers-image --cert-dir for skopeo (ca.crt, client.cert, client.key)

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        ca = CA("upstream private CA")
        server_cert, server_key = ca.server().write(directory, "server")
        client = ca.client("angosd-mirror")
        client_cert, client_key = client.write(directory, "client")
        return cls(ca, ca.write(directory / "ca.pem"), server_cert, server_key, client_cert, client_key,
                   skopeo_cert_dir(directory / "skopeo", ca, client))


_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) ')


@dataclass
class DockerRegistry:
    """``docker-registry serve`` with filesystem storage under ``directory``.

    At most one of ``htpasswd`` (a (user, password) pair) and ``token`` is set; ``tls``
    serves HTTPS and requires a client certificate signed by its CA. `stop` and `start`
    keep the port and the stored content.
    """

    directory: Path
    htpasswd: tuple[str, str] | None = None
    token: TokenServer | None = None
    tls: TlsFiles | None = None
    #: Distribution's ``storage: s3:`` settings (regionendpoint, bucket, ...) instead of a directory.
    s3: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _logs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_tool(DOCKER_REGISTRY, "docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            *(["  s3:", *(f"    {key}: {value}" for key, value in self.s3.items())] if self.s3 is not None else
              ["  filesystem:", f"    rootdirectory: {self.directory / 'data'}"]),
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: angosd-tests",
        ]
        if self.tls is not None:
            lines += ["  tls:", f"    certificate: {self.tls.server_cert}", f"    key: {self.tls.server_key}",
                      "    clientcas:", f"      - {self.tls.ca_file}"]
        if self.htpasswd is not None:
            require_tool(HTPASSWD, "apache2-utils")
            path = self.directory / "htpasswd"
            user, password = self.htpasswd
            subprocess.run([HTPASSWD, "-Bbc", str(path), user, password], check=True, capture_output=True)
            lines += ["auth:", "  htpasswd:", "    realm: angosd-tests", f"    path: {path}"]
        if self.token is not None:
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}", f"    service: {self.token.service}",
                      f"    issuer: {self.token.issuer}", f"    rootcertbundle: {self.token.root_bundle}"]
        path = self.directory / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def start(self, timeout: float = 20) -> DockerRegistry:
        config = self._config()
        log_path = self.directory / f"registry-{len(self._logs)}.log"
        self._logs.append(str(log_path))
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # its S3 driver panics on it
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([DOCKER_REGISTRY, "serve", config], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.process.poll() is not None:
                raise AssertionError(f"docker-registry exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"docker-registry did not listen in {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            wait_for(lambda: not _listening(self.port), 10, "docker-registry to stop listening")

    def log(self) -> str:
        text = []
        for path in self._logs:
            with open(path, "rb") as log:
                text.append(log.read().decode(errors="replace"))
        return "".join(text)

    def requests(self) -> Iterator[tuple[str, str, int]]:
        """(method, path, status) of every completed request, from the access log."""
        for match in _ACCESS.finditer(self.log()):
            yield match.group(1), match.group(2), int(match.group(3))

    def count(self, method: str, path: str) -> int:
        """How many completed ``method path`` requests the access log holds."""
        return sum(1 for m, p, _ in self.requests() if m == method and p == path)

    def skopeo_dest(self, credentials: tuple[str, str] | None = None) -> list[str]:
        """skopeo copy options to push here (``credentials`` default to the htpasswd user)."""
        args = [f"--dest-cert-dir={self.tls.cert_dir}"] if self.tls else ["--dest-tls-verify=false"]
        credentials = credentials or self.htpasswd
        if credentials is not None:
            args.append(f"--dest-creds={credentials[0]}:{credentials[1]}")
        return args

    def connection(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=context)


def push_blob(connection: http.client.HTTPConnection, name: str, path: str, digest: str,
              authorization: str | None = None) -> None:
    """Monolithic upload of the file at ``path`` as blob ``digest`` of ``name`` (streamed)."""
    headers = {"Authorization": authorization} if authorization else {}
    try:
        connection.request("POST", f"/v2/{name}/blobs/uploads/", headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 202, f"start upload: {response.status}"
        location = response.getheader("Location") or ""
        location = re.sub(r"^https?://[^/]+", "", location)
        separator = "&" if "?" in location else "?"
        with open(path, "rb") as body:
            connection.request("PUT", f"{location}{separator}digest={digest}", body=body,
                               headers={**headers, "Content-Type": "application/octet-stream",
                                        "Content-Length": str(os.path.getsize(path))})
            response = connection.getresponse()
            response.read()
        assert response.status == 201, f"complete upload: {response.status}"
    finally:
        connection.close()


# -- a misbehaving fake --------------------------------------------------------------------------


@dataclass
class FakeBlob:
    data: bytes
    mode: str = "ok"  # "ok", "corrupt" (one byte flipped), "die" (half the bytes, then close)


class FakeUpstream(LocalHttpServer):
    """A minimal anonymous registry in a thread: fixed manifests and blobs.

    `manifests` maps (name, reference) to (media type, bytes); a manifest is also found by
    its digest. `blobs` maps a digest to a `FakeBlob`; setting its ``mode`` changes how the
    next GET is answered. `blob_gets` counts GETs per digest.
    """

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, FakeBlob] = {}
        self.blob_gets: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def add_blob(self, data: bytes, mode: str = "ok") -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = FakeBlob(data, mode)
        return digest

    def add_manifest(self, name: str, tag: str, media_type: str, body: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[(name, tag)] = (media_type, body)
        self.manifests[(name, digest)] = (media_type, body)
        return digest

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                if self.path == "/v2/":
                    self._answer(200, "application/json", b"{}", head)
                    return
                match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", self.path)
                if match is None:
                    self._answer(404, "application/json", b'{"errors":[{"code":"NAME_UNKNOWN"}]}', head)
                    return
                name, kind, reference = match.groups()
                if kind == "manifests":
                    found = fake.manifests.get((name, reference))
                    if found is None:
                        self._answer(404, "application/json", b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', head)
                        return
                    digest = "sha256:" + hashlib.sha256(found[1]).hexdigest()
                    self._answer(200, found[0], found[1], head, {"Docker-Content-Digest": digest})
                    return
                blob = fake.blobs.get(reference)
                if blob is None:
                    self._answer(404, "application/json", b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', head)
                    return
                if head:
                    self._answer(200, "application/octet-stream", blob.data, head, {"Docker-Content-Digest": reference})
                    return
                with fake._lock:
                    fake.blob_gets[reference] = fake.blob_gets.get(reference, 0) + 1
                data = blob.data
                if blob.mode == "corrupt":
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                if blob.mode != "die":
                    self._answer(200, "application/octet-stream", data, head, {"Docker-Content-Digest": reference})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _answer(self, status: int, media_type: str, body: bytes, head: bool,
                        headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler

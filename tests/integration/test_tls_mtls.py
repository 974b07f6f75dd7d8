"""The real daemon serving HTTPS with ``[server.tls]``: mutual TLS, optional client
certificates, certificate rotation, and refusals at start.

Clients: skopeo (Go's TLS, with a containers-image ``--cert-dir``), Python's ``ssl`` and curl.
In TLS 1.3 a client finishes its handshake before the server has judged the client
certificate, so a refusal may only surface on the first read: `refused` sends a request and
expects the connection to fail somewhere on the way.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import CA, Issued, skopeo_cert_dir, write_pem
from tests.daemon import REPO, Daemon
from tests.integration.images import build_image, manifest_digest, skopeo, skopeo_may_fail

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/skopeo"), reason="skopeo is not installed")


@dataclass
class Pki:
    """Certificates for one module: the trusted CA, a stranger CA, and files on disk."""

    directory: Path
    ca: CA
    other_ca: CA
    server: Issued

    @property
    def ca_path(self) -> str:
        return str(self.directory / "ca.crt")

    def client_files(self, name: str, issued: Issued) -> tuple[str, str]:
        return issued.write(self.directory / "clients", name)

    def cert_dir(self, name: str, client: Issued | None) -> str:
        return skopeo_cert_dir(self.directory / "cert-dirs" / name, self.ca, client)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = CA("mtls CA"), CA("stranger CA")
    ca.write(directory / "ca.crt")
    pki = Pki(directory, ca, other, ca.server())
    pki.server.write(directory, "server")
    return pki


def tls_toml(path: Path, cert: str, key: str, client_ca: str | None = None, client_auth: str | None = None) -> str:
    lines = ["[server.tls]", f"server_certificate_bundle = {json.dumps(cert)}",
             f"server_private_key = {json.dumps(key)}"]
    if client_ca is not None:
        lines.append(f"client_ca_bundle = {json.dumps(client_ca)}")
    if client_auth is not None:
        lines.append(f"client_auth = {json.dumps(client_auth)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start_tls_daemon(base: Path, pki: Pki, client_auth: str | None) -> Daemon:
    config = tls_toml(base / "tls.toml", str(pki.directory / "server.crt"), str(pki.directory / "server.key"),
                      pki.ca_path if client_auth else None, client_auth)
    return Daemon(str(base / "work"), str(base / "store"), configs=(config,)).start()


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Daemon]:
    daemon = start_tls_daemon(tmp_path_factory.mktemp("required"), pki, "required")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Daemon]:
    daemon = start_tls_daemon(tmp_path_factory.mktemp("optional"), pki, "optional")
    try:
        yield daemon
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- clients


def client_context(ca_path: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_path)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def https_get(daemon: Daemon, context: ssl.SSLContext, path: str = "/v2/") -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=context, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def refused(daemon: Daemon, context: ssl.SSLContext) -> BaseException:
    """The error a request fails with; fails the test if the request is answered."""
    try:
        status, _ = https_get(daemon, context)
    except (TimeoutError, ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as exc:
        return exc
    raise AssertionError(f"the daemon answered {status} instead of refusing the handshake")


def curl(daemon: Daemon, pki: Pki, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", pki.ca_path, *extra,
                           f"https://127.0.0.1:{daemon.port}/v2/"], capture_output=True, text=True, timeout=60,
                          check=False)


def peer_common_name(sock: ssl.SSLSocket) -> str:
    certificate = sock.getpeercert()
    assert certificate is not None
    for rdn in certificate["subject"]:
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    raise AssertionError(f"no CN in {certificate}")


# --------------------------------------------------------------------------- client_auth = "required"


def test_required_skopeo_with_a_client_certificate_pushes_and_pulls(tmp_path: Path, pki: Pki,
                                                                    required: Daemon) -> None:
    layout = build_image(str(tmp_path / "layout"), "v1", layer_sizes=(4096, 70_000), seed=11)
    cert_dir = pki.cert_dir("alice", pki.ca.client("alice", organizations=("dev",)))
    remote = f"docker://{required.host}/mtls/app:v1"
    skopeo("copy", "--dest-cert-dir", cert_dir, layout.ref, remote)
    assert manifest_digest(remote, "--cert-dir", cert_dir) == layout.digest
    skopeo("copy", "--src-cert-dir", cert_dir, remote, f"oci:{tmp_path / 'back'}:v1")
    assert manifest_digest(f"oci:{tmp_path / 'back'}:v1") == layout.digest


def test_required_python_client_with_certificate_gets_v2(pki: Pki, required: Daemon) -> None:
    context = client_context(pki.ca_path, pki.client_files("bob", pki.ca.client("bob")))
    assert https_get(required, context)[0] == 200


def test_required_refuses_clients_without_certificate(tmp_path: Path, pki: Pki, required: Daemon) -> None:
    error = refused(required, client_context(pki.ca_path))
    assert "CERTIFICATE_REQUIRED" in str(error), error
    result = curl(required, pki)
    assert result.returncode != 0, result.stdout
    layout = build_image(str(tmp_path / "layout"), "v1", seed=12)
    pushed = skopeo_may_fail("copy", "--dest-cert-dir", pki.cert_dir("anonymous", None), layout.ref,
                             f"docker://{required.host}/mtls/anonymous:v1")
    assert pushed.returncode != 0
    assert "remote error: tls: certificate required" in pushed.stderr, pushed.stderr
    assert required.process is not None and required.process.poll() is None, "the daemon must keep running"


#: kind of bad certificate -> (the TLS alert Python's ssl reports, what skopeo reports). Go
#: leaves out a certificate whose issuer the server did not name, hence "certificate required".
BAD_CERTIFICATES = {
    "other-ca": ("UNKNOWN_CA", "certificate required"),
    "expired": ("CERTIFICATE_EXPIRED", "expired certificate"),
    "not-yet-valid": ("BAD_CERTIFICATE", "bad certificate"),
    "wrong-purpose": ("UNSUPPORTED_CERTIFICATE", "unsupported certificate"),
}


def bad_certificate(pki: Pki, kind: str) -> Issued:
    return {"other-ca": lambda: pki.other_ca.client("mallory"), "expired": pki.ca.expired_client,
            "not-yet-valid": pki.ca.not_yet_valid_client, "wrong-purpose": pki.ca.wrong_purpose_client}[kind]()


@pytest.mark.parametrize("kind", sorted(BAD_CERTIFICATES))
def test_required_refuses_bad_client_certificates(tmp_path: Path, pki: Pki, required: Daemon, kind: str) -> None:
    python_alert, skopeo_error = BAD_CERTIFICATES[kind]
    client = bad_certificate(pki, kind)
    files = pki.client_files(kind, client)
    error = refused(required, client_context(pki.ca_path, files))
    assert python_alert in str(error), error
    assert curl(required, pki, "--cert", files[0], "--key", files[1]).returncode != 0
    layout = build_image(str(tmp_path / "layout"), "v1", seed=13)
    pushed = skopeo_may_fail("copy", "--dest-cert-dir", pki.cert_dir(kind, client), layout.ref,
                             f"docker://{required.host}/mtls/{kind}:v1")
    assert pushed.returncode != 0, f"skopeo pushed with a {kind} certificate"
    assert f"remote error: tls: {skopeo_error}" in pushed.stderr, pushed.stderr


# --------------------------------------------------------------------------- client_auth = "optional"


def test_optional_serves_clients_without_certificate(tmp_path: Path, pki: Pki, optional: Daemon) -> None:
    assert https_get(optional, client_context(pki.ca_path))[0] == 200
    result = curl(optional, pki, "-o", "/dev/null", "-w", "%{http_code}")
    assert result.stdout == "200", result.stderr
    layout = build_image(str(tmp_path / "layout"), "v1", seed=14)
    cert_dir = pki.cert_dir("optional-anonymous", None)
    remote = f"docker://{optional.host}/optional/anonymous:v1"
    skopeo("copy", "--dest-cert-dir", cert_dir, layout.ref, remote)
    assert manifest_digest(remote, "--cert-dir", cert_dir) == layout.digest


def test_plain_http_to_the_tls_port_is_told_so(optional: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", optional.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 400 "), answer
    assert answer.endswith(b"\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"), answer


def test_an_over_long_header_over_tls_is_answered_at_once(pki: Pki, optional: Daemon) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", optional.port, context=client_context(pki.ca_path),
                                             timeout=10)
    started = time.monotonic()
    try:
        connection.request("GET", "/v2/", headers={"Authorization": "Bearer " + "t" * 20_000})
        response = connection.getresponse()
        assert response.status == 431 and json.loads(response.read())["errors"][0]["code"] == "SIZE_INVALID"
    finally:
        connection.close()
    assert time.monotonic() - started < 5


def test_a_client_that_never_completes_its_handshake_is_cut(tmp_path: Path, pki: Pki) -> None:
    config = tls_toml(tmp_path / "tls.toml", str(pki.directory / "server.crt"), str(pki.directory / "server.key"))
    with open(config, "a", encoding="utf-8") as file:
        file.write("[server]\nhandshake_timeout = 1\n")
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(config,)).start()
    try:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=15) as sock:
            started = time.monotonic()
            sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
            with contextlib.suppress(ConnectionResetError):  # closed, or cut, by the daemon
                assert sock.recv(4096) == b""
            waited = time.monotonic() - started
        assert 0.5 < waited < 5, waited
        assert https_get(daemon, client_context(pki.ca_path))[0] == 200  # a real client is unaffected
    finally:
        daemon.stop()


def test_optional_accepts_a_valid_certificate(pki: Pki, optional: Daemon) -> None:
    context = client_context(pki.ca_path, pki.client_files("carol", pki.ca.client("carol")))
    assert https_get(optional, context)[0] == 200


@pytest.mark.parametrize("kind", sorted(BAD_CERTIFICATES))
def test_optional_still_refuses_a_bad_certificate(pki: Pki, optional: Daemon, kind: str) -> None:
    files = pki.client_files(f"optional-{kind}", bad_certificate(pki, kind))
    error = refused(optional, client_context(pki.ca_path, files))
    assert BAD_CERTIFICATES[kind][0] in str(error), error
    assert curl(optional, pki, "--cert", files[0], "--key", files[1]).returncode != 0


def test_optional_skopeo_with_a_stranger_certificate_connects_anonymously(pki: Pki, optional: Daemon) -> None:
    """Go only sends a client certificate issued by a CA the server named: a certificate of
    another CA is silently left out, and an optional server sees an anonymous client."""
    cert_dir = pki.cert_dir("optional-stranger", pki.other_ca.client("mallory"))
    listed = skopeo_may_fail("inspect", "--cert-dir", cert_dir, f"docker://{optional.host}/optional/none:v1")
    assert "certificate" not in listed.stderr.lower(), listed.stderr
    assert "manifest unknown" in listed.stderr.lower() or "not found" in listed.stderr.lower(), listed.stderr


def test_optional_skopeo_with_an_expired_certificate_is_refused(tmp_path: Path, pki: Pki, optional: Daemon) -> None:
    layout = build_image(str(tmp_path / "layout"), "v1", seed=15)
    pushed = skopeo_may_fail("copy", "--dest-cert-dir", pki.cert_dir("optional-expired", pki.ca.expired_client()),
                             layout.ref, f"docker://{optional.host}/optional/expired:v1")
    assert pushed.returncode != 0
    assert "remote error: tls: expired certificate" in pushed.stderr, pushed.stderr


# --------------------------------------------------------------------------- reload


def wait_for(condition: object, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


def new_connection_common_name(daemon: Daemon, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return peer_common_name(tls)


def test_rotated_certificates_are_served_to_new_connections(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.ca.server("a").write(tmp_path / "tls", "server")
    config = tls_toml(tmp_path / "tls.toml", cert, key)
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(config,)).start()
    try:
        context = client_context(pki.ca_path)
        kept = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=context, timeout=30)
        kept.request("GET", "/v2/")
        response = kept.getresponse()
        response.read()
        assert response.status == 200
        sock = kept.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert peer_common_name(sock) == "a"

        b = pki.ca.server("b")
        write_pem(key, b.key_pem())
        write_pem(cert, b.cert_pem())
        wait_for(lambda: new_connection_common_name(daemon, context) == "b", what="the new certificate is served")

        kept.request("GET", "/v2/")
        response = kept.getresponse()
        response.read()
        assert response.status == 200
        assert kept.sock is sock, "the keep-alive connection was reused"
        assert peer_common_name(sock) == "a"
        kept.close()

        errors_before = daemon.log().count("TLS reload failed")
        write_pem(key, pki.ca.server("c").key_pem())  # a key that does not match b
        wait_for(lambda: daemon.log().count("TLS reload failed") > errors_before, what="the reload error is logged")
        failure = daemon.log().splitlines()[-1]
        assert "TLS reload failed" in failure, daemon.log()
        assert f"{key}: private key does not match the certificate in {cert}" in failure
        time.sleep(2.5)  # another reload tick: the same broken files are not reported twice
        assert daemon.log().count("TLS reload failed") == errors_before + 1
        assert new_connection_common_name(daemon, context) == "b"
        assert https_get(daemon, context)[0] == 200
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- refusing to start


def twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                           "--pidfile=", "angosd", "--listen", "tcp:0:interface=127.0.0.1",
                           "--root", str(cwd / "store"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def configuration_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in (result.stderr + result.stdout).splitlines() if "configuration error" in line]
    assert len(lines) == 1, result.stderr + result.stdout
    return lines[0]


def test_a_missing_certificate_file_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    missing = str(tmp_path / "missing.crt")
    config = tls_toml(tmp_path / "tls.toml", missing, str(pki.directory / "server.key"))
    line = configuration_error(twistd(tmp_path, "-c", config))
    assert line == f"angosd: configuration error: {missing}: cannot read server certificate bundle: " \
                   "No such file or directory"


def test_a_key_that_does_not_match_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    key = write_pem(tmp_path / "other.key", pki.ca.server().key_pem())
    cert = str(pki.directory / "server.crt")
    config = tls_toml(tmp_path / "tls.toml", cert, key)
    line = configuration_error(twistd(tmp_path, "-c", config))
    assert line == f"angosd: configuration error: {key}: private key does not match the certificate in {cert}"


def test_an_empty_client_ca_bundle_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    empty = write_pem(tmp_path / "empty-ca.crt", b"")
    config = tls_toml(tmp_path / "tls.toml", str(pki.directory / "server.crt"), str(pki.directory / "server.key"),
                      empty, "required")
    line = configuration_error(twistd(tmp_path, "-c", config))
    assert line == f"angosd: configuration error: {empty}: client CA bundle file is empty"


def auth_failures(daemon: Daemon, context: ssl.SSLContext) -> float:
    status, body = https_get(daemon, context, "/metrics")
    assert status == 200
    line = next(line for line in body.decode().splitlines()
                if line.startswith('angosd_auth_attempts_total{method="certificate",result="failure"}'))
    return float(line.split()[-1])


def test_refused_handshakes_are_logged_and_counted(tmp_path: Path, pki: Pki) -> None:
    daemon = start_tls_daemon(tmp_path, pki, "required")  # its own log: no refusal logged before
    try:
        good = client_context(pki.ca_path, pki.client_files("counted", pki.ca.client("counted")))
        refused(daemon, client_context(pki.ca_path))  # no certificate
        refused(daemon, client_context(pki.ca_path, pki.client_files("other-ca", bad_certificate(pki, "other-ca"))))
        wait_for(lambda: auth_failures(daemon, good) == 2, what="two counted refusals")

        def logged() -> list[str]:
            return [line for line in daemon.log().splitlines() if "TLS handshake refused from 127.0.0.1:" in line]

        assert len(logged()) == 2, logged()
        assert "certificate" in logged()[0].lower(), logged()[0]
        for _ in range(12):  # past the log's rate limit: all counted, at most 10 lines a minute
            refused(daemon, client_context(pki.ca_path))
        wait_for(lambda: auth_failures(daemon, good) == 14, what="every refusal counted")
        assert len(logged()) == 10, logged()
    finally:
        daemon.stop()

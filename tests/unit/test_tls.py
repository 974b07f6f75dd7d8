"""Server TLS contexts, reloading, errors, and client certificate identities.

Handshakes run in memory between two pyOpenSSL connections (no sockets), which shows exactly
which side refuses and why; one test runs a `RegistrySite` behind `listening_factory` on a real
port to prove what a `RegistryRequest` sees of the client certificate.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from klein import Klein
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import alsoProvides

from angosd.auth.identity import CertificateIdentity
from angosd.auth.mtls import certificate_identity, identity_of_certificate
from angosd.config import Config, ServerConfig, TlsConfig
from angosd.http.site import RegistrySite
from angosd.tls.records import PIECE, SEND_LIMIT
from angosd.tls.server import ReloadingServerTLS, TlsError, build_context, listening_factory
from tests.certs import CA, Issued, write_pem


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("unit CA")


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return CA("other CA")


def server_files(directory: Path, ca: CA, server: Issued | None = None, *, client_auth: str | None = None,
                 client_ca: CA | None = None) -> TlsConfig:
    cert, key = (server or ca.server()).write(directory, "server")
    if client_auth is None:
        return TlsConfig(cert, key)
    ca_path = (client_ca or ca).write(directory / "clients-ca.crt")
    return TlsConfig(cert, key, ca_path, client_auth)


def client_context(ca: CA, client: Issued | None = None, alpn: list[bytes] | None = None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_PEER)
    store = context.get_cert_store()
    assert store is not None
    from OpenSSL import crypto

    store.add_cert(crypto.X509.from_cryptography(ca.root.cert))
    if client is not None:
        context.use_certificate(client.cert)
        for intermediate in client.chain:
            context.add_extra_chain_cert(intermediate)
        context.use_privatekey(client.key)
    if alpn is not None:
        context.set_alpn_protos(alpn)
    return context


class Handshake:
    """The outcome of an in-memory handshake: both connections and each side's error."""

    def __init__(self, server: SSL.Connection, client: SSL.Connection, server_error: SSL.Error | None,
                 client_error: SSL.Error | None) -> None:
        self.server, self.client = server, client
        self.server_error, self.client_error = server_error, client_error

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(server_context: SSL.Context, client_ctx: SSL.Context) -> Handshake:
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    errors: dict[str, SSL.Error | None] = {"server": None, "client": None}
    done = {"server": False, "client": False}
    for _ in range(50):
        for name, connection in (("client", client), ("server", server)):
            if done[name] or errors[name] is not None:
                continue
            try:
                connection.do_handshake()
                done[name] = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                errors[name] = exc
        moved = False
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                moved = True
                target.bio_write(data)
        if not moved and (all(done.values()) or any(errors.values())):
            break
    if done["client"] and errors["server"] is None and not done["server"]:
        raise AssertionError("handshake did not finish")
    # In TLS 1.3 the client finishes before the server judged its certificate: read the verdict.
    if errors["client"] is None:
        try:
            client.recv(1)
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            errors["client"] = exc
    return Handshake(server, client, errors["server"], errors["client"])


def error_text(error: SSL.Error | None) -> str:
    return repr(error)


# --------------------------------------------------------------------------- contexts


def test_server_only_tls_negotiates_tls12_or_later_and_http11(tmp_path: Path, ca: CA) -> None:
    context = build_context(server_files(tmp_path, ca))
    result = handshake(context, client_context(ca, alpn=[b"h2", b"http/1.1"]))
    assert result.ok, result.server_error
    assert result.client.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")
    assert result.client.get_alpn_proto_negotiated() == b"http/1.1"
    assert result.server.get_peer_certificate() is None


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_aes128_gcm_is_preferred_over_the_clients_order(tmp_path: Path, ca: CA, version: int) -> None:
    client = client_context(ca)
    client.set_min_proto_version(version)
    client.set_max_proto_version(version)
    client.set_cipher_list(b"ECDHE+AES256+AESGCM:ECDHE+CHACHA20:ECDHE+AES128+AESGCM")
    client.set_tls13_ciphersuites(b"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256")
    result = handshake(build_context(server_files(tmp_path, ca)), client)
    assert result.ok, result.server_error
    assert result.client.get_cipher_name() in ("TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                                                "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_h2_only_clients_get_no_alpn_protocol(tmp_path: Path, ca: CA) -> None:
    result = handshake(build_context(server_files(tmp_path, ca)), client_context(ca, alpn=[b"h2"]))
    assert result.ok
    assert result.client.get_alpn_proto_negotiated() == b""


def test_tls11_clients_are_refused(tmp_path: Path, ca: CA) -> None:
    client = client_context(ca)
    client.set_max_proto_version(SSL.TLS1_1_VERSION)
    client.set_min_proto_version(SSL.TLS1_VERSION)
    client.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    result = handshake(build_context(server_files(tmp_path, ca)), client)
    assert result.server_error is not None


def test_the_certificate_chain_is_sent(tmp_path: Path, ca: CA) -> None:
    intermediate = ca.intermediate()
    server = intermediate.server()
    context = build_context(server_files(tmp_path, ca, server))
    result = handshake(context, client_context(ca))  # the client trusts only the root
    assert result.ok, (result.server_error, result.client_error)
    chain = result.client.get_peer_cert_chain(as_cryptography=True)
    assert chain is not None
    assert [c.subject for c in chain] == [server.cert.subject, intermediate.cert.subject]


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_a_valid_client_certificate_is_accepted(tmp_path: Path, ca: CA, mode: str) -> None:
    client = ca.client("alice", organizations=("dev",))
    result = handshake(build_context(server_files(tmp_path, ca, client_auth=mode)), client_context(ca, client))
    assert result.ok, (result.server_error, result.client_error)
    peer = result.server.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    assert peer.subject == client.cert.subject


def test_a_client_certificate_through_an_intermediate_is_accepted(tmp_path: Path, ca: CA) -> None:
    client = ca.intermediate("client intermediate").client("bob")
    result = handshake(build_context(server_files(tmp_path, ca, client_auth="required")), client_context(ca, client))
    assert result.ok, (result.server_error, result.client_error)


def test_required_refuses_a_client_without_certificate(tmp_path: Path, ca: CA) -> None:
    result = handshake(build_context(server_files(tmp_path, ca, client_auth="required")), client_context(ca))
    assert result.server_error is not None
    assert "peer did not return a certificate" in error_text(result.server_error)
    assert result.client_error is not None


def test_optional_accepts_a_client_without_certificate(tmp_path: Path, ca: CA) -> None:
    context = build_context(server_files(tmp_path, ca, client_auth="optional"))
    assert context.get_verify_mode() == SSL.VERIFY_PEER
    result = handshake(context, client_context(ca))
    assert result.ok
    assert result.server.get_peer_certificate() is None


@pytest.mark.parametrize("mode", ["optional", "required"])
@pytest.mark.parametrize("kind", ["other-ca", "expired", "not-yet-valid", "wrong-purpose"])
def test_bad_client_certificates_fail_the_handshake(tmp_path: Path, ca: CA, other_ca: CA, mode: str,
                                                    kind: str) -> None:
    client = {"other-ca": lambda: other_ca.client("mallory"), "expired": ca.expired_client,
              "not-yet-valid": ca.not_yet_valid_client, "wrong-purpose": ca.wrong_purpose_client}[kind]()
    result = handshake(build_context(server_files(tmp_path, ca, client_auth=mode)), client_context(ca, client))
    assert result.server_error is not None, "the server must refuse the certificate"
    assert result.client_error is not None, "the client must see the refusal"


def test_a_client_certificate_without_extended_key_usage_is_accepted(tmp_path: Path, ca: CA) -> None:
    client = ca.issue("legacy", usages=None)
    result = handshake(build_context(server_files(tmp_path, ca, client_auth="required")), client_context(ca, client))
    assert result.ok, (result.server_error, result.client_error)


def test_the_client_ca_names_are_sent(tmp_path: Path, ca: CA) -> None:
    server = SSL.Connection(build_context(server_files(tmp_path, ca, client_auth="optional")), None)
    names = server.get_client_ca_list()
    assert [n.CN for n in names] == ["unit CA"]


def test_the_verify_callback_refuses_a_leaf_not_meant_for_clients(ca: CA) -> None:
    """OpenSSL's own purpose check refuses these too; the callback does not rely on it."""
    from OpenSSL import crypto

    from angosd.tls.server import _verify_client

    def verdict(issued: Issued, depth: int = 0, ok: int = 1) -> bool:
        return _verify_client(None, crypto.X509.from_cryptography(issued.cert), 0, depth, ok)  # type: ignore[arg-type]

    assert verdict(ca.client()) is True
    assert verdict(ca.issue("no-eku", usages=None)) is True
    assert verdict(ca.wrong_purpose_client()) is False
    assert verdict(ca.wrong_purpose_client(), depth=1) is True, "only the leaf is checked"
    assert verdict(ca.client(), ok=0) is False, "OpenSSL's refusal stands"


# --------------------------------------------------------------------------- refusals


def test_missing_certificate_file(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(TlsError) as caught:
        build_context(TlsConfig(missing, tls.server_private_key))
    assert str(caught.value) == f"{missing}: cannot read server certificate bundle: No such file or directory"


def test_unreadable_directory_instead_of_key(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    with pytest.raises(TlsError, match=f"^{tmp_path}: cannot read server private key: Is a directory$"):
        build_context(TlsConfig(tls.server_certificate_bundle, str(tmp_path)))


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "server certificate bundle file is empty"),
    (b"hello, not a certificate\n", "server certificate bundle is not PEM"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n",
     "server certificate bundle is not a valid PEM certificate bundle"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
     "server certificate bundle contains no PEM certificate"),
])
def test_broken_certificate_bundle(tmp_path: Path, ca: CA, content: bytes, problem: str) -> None:
    tls = server_files(tmp_path, ca)
    write_pem(tls.server_certificate_bundle, content)
    with pytest.raises(TlsError) as caught:
        build_context(tls)
    assert str(caught.value).startswith(f"{tls.server_certificate_bundle}: {problem}")
    assert "\n" not in str(caught.value)


def test_files_swapped(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    swapped = TlsConfig(tls.server_private_key, tls.server_certificate_bundle)
    with pytest.raises(TlsError, match="holds a private key, not a certificate"):
        build_context(swapped)


@pytest.mark.parametrize(("content", "problem"), [
    (b"garbage\n", "is not a PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "is not a valid PEM private key"),
])
def test_broken_private_key(tmp_path: Path, ca: CA, content: bytes, problem: str) -> None:
    tls = server_files(tmp_path, ca)
    write_pem(tls.server_private_key, content)
    with pytest.raises(TlsError) as caught:
        build_context(tls)
    assert str(caught.value).startswith(f"{tls.server_private_key}: {problem}")


def test_encrypted_private_key(tmp_path: Path, ca: CA) -> None:
    from cryptography.hazmat.primitives import serialization

    tls = server_files(tmp_path, ca)
    server = ca.server()
    server.write(tmp_path, "server")
    write_pem(tls.server_private_key, server.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsError, match="private key is encrypted"):
        build_context(tls)


def test_key_that_does_not_match_the_certificate(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    write_pem(tls.server_private_key, ca.server().key_pem())
    with pytest.raises(TlsError) as caught:
        build_context(tls)
    assert str(caught.value) == (f"{tls.server_private_key}: private key does not match the certificate in "
                                 f"{tls.server_certificate_bundle}")


@pytest.mark.parametrize("content", [b"", b"# no certificates here\n"])
def test_empty_client_ca_bundle(tmp_path: Path, ca: CA, content: bytes) -> None:
    tls = server_files(tmp_path, ca, client_auth="required")
    assert tls.client_ca_bundle is not None
    write_pem(tls.client_ca_bundle, content)
    with pytest.raises(TlsError) as caught:
        build_context(tls)
    assert str(caught.value).startswith(f"{tls.client_ca_bundle}: client CA bundle")


def test_missing_client_ca_bundle(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(TlsError, match=f"^{missing}: cannot read client CA bundle"):
        build_context(TlsConfig(tls.server_certificate_bundle, tls.server_private_key, missing, "required"))


# --------------------------------------------------------------------------- reloading


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def errors_in(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import LogLevel, formatEvent

    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]


def peer_cn(connection: SSL.Connection) -> str:
    peer = connection.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    return str(peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_reload_swaps_the_context_for_new_connections_only(tmp_path: Path, ca: CA,
                                                           logged: list[dict[str, Any]]) -> None:
    tls = server_files(tmp_path, ca, ca.server("a"))
    creator = ReloadingServerTLS(tls)
    assert creator.reload() is False, "nothing changed"
    old = handshake(creator.context, client_context(ca))
    assert old.ok
    assert peer_cn(old.client) == "a"

    ca.server("b").write(tmp_path, "server")
    assert creator.reload() is True
    new = handshake(creator.context, client_context(ca))
    assert peer_cn(new.client) == "b"
    # The old connection still works on its own context.
    old.client.send(b"ping")
    old.server.bio_write(old.client.bio_read(65536))
    assert old.server.recv(4) == b"ping"
    assert errors_in(logged) == []


def test_a_broken_rotation_keeps_the_old_context_and_logs_once(tmp_path: Path, ca: CA,
                                                               logged: list[dict[str, Any]]) -> None:
    tls = server_files(tmp_path, ca, ca.server("a"))
    creator = ReloadingServerTLS(tls)
    before = creator.context
    b = ca.server("b")
    write_pem(tls.server_certificate_bundle, b.cert_pem())  # the certificate first, the key not yet
    assert creator.reload() is False
    assert creator.reload() is False
    assert creator.context is before
    assert peer_cn(handshake(creator.context, client_context(ca)).client) == "a"
    messages = errors_in(logged)
    assert len(messages) == 1
    assert tls.server_private_key in messages[0]
    assert "does not match" in messages[0]
    assert "\n" not in messages[0]

    write_pem(tls.server_private_key, b.key_pem())  # the rotation completes
    assert creator.reload() is True
    assert peer_cn(handshake(creator.context, client_context(ca)).client) == "b"


def test_a_vanished_file_keeps_the_old_context(tmp_path: Path, ca: CA, logged: list[dict[str, Any]]) -> None:
    tls = server_files(tmp_path, ca, client_auth="required")
    creator = ReloadingServerTLS(tls)
    assert tls.client_ca_bundle is not None
    os.unlink(tls.client_ca_bundle)
    assert creator.reload() is False
    assert any(tls.client_ca_bundle in m for m in errors_in(logged))
    assert handshake(creator.context, client_context(ca, ca.client())).ok


def test_reload_picks_up_a_new_client_ca(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    tls = server_files(tmp_path, ca, client_auth="required")
    creator = ReloadingServerTLS(tls)
    stranger = other_ca.client("stranger")
    assert not handshake(creator.context, client_context(ca, stranger)).ok
    assert tls.client_ca_bundle is not None
    write_pem(tls.client_ca_bundle, ca.pem(), other_ca.pem())
    assert creator.reload() is True
    assert handshake(creator.context, client_context(ca, stranger)).ok


def test_the_constructor_refuses_broken_files(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca)
    write_pem(tls.server_private_key, ca.server().key_pem())
    with pytest.raises(TlsError, match="does not match"):
        ReloadingServerTLS(tls)


def test_listening_factory_without_tls_is_the_site(tmp_path: Path) -> None:
    site = Site(None)
    assert listening_factory(Config(), site, reactor) == (site, [])


def test_listening_factory_with_tls_wraps_the_site_and_watches_the_files(tmp_path: Path, ca: CA) -> None:
    site = Site(None)
    config = Config(server=ServerConfig(tls=server_files(tmp_path, ca)))
    factory, services = listening_factory(config, site, reactor)
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert factory.wrappedFactory is site
    [timer] = services
    assert timer.step == 2  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- identities


def test_identity_of_a_certificate(ca: CA) -> None:
    client = ca.client("alice", organizations=("dev", "ops"), organizational_units=("build",),
                       dns_names=("alice.example",), emails=("alice@example.com",))
    assert identity_of_certificate(client.cert) == CertificateIdentity(
        ("alice",), ("dev", "ops"), ("build",), ("alice.example",), ("alice@example.com",))


def test_identity_of_a_certificate_without_subject(ca: CA) -> None:
    client = ca.issue(None, dns_names=("only-san.example",))
    assert identity_of_certificate(client.cert) == CertificateIdentity(dns_names=("only-san.example",))


def test_identity_of_a_certificate_with_odd_encodings(ca: CA) -> None:
    """Legal but unusual string types decode; a subject that cannot be decoded is left out,
    the SAN is still read. (OpenSSL itself refuses invalid UTF-8 at the handshake.)"""
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.name import _ASN1Type

    key = ca.client().key
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "XXXX"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ünïcode", _type=_ASN1Type.BMPString),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "t61", _type=_ASN1Type.T61String)])
    certificate = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(1)
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("odd.example")]), critical=False)
                   .sign(ca.key, hashes.SHA256()))
    assert identity_of_certificate(certificate) == CertificateIdentity(
        ("XXXX",), ("Ünïcode",), ("t61",), ("odd.example",))
    # XXXX is a UTF8String (tag 0x0c) in the DER: make its bytes invalid UTF-8.
    der = certificate.public_bytes(Encoding.DER)
    patched = der.replace(b"\x0c\x04XXXX", b"\x0c\x04\xff\xfe\xfd\xfc", 1)
    assert patched != der
    identity = identity_of_certificate(x509.load_der_x509_certificate(patched))
    assert identity == CertificateIdentity(dns_names=("odd.example",))


class _FakeTLS:
    def __init__(self, peer: object) -> None:
        self.peer = peer
        alsoProvides(self, ISSLTransport)

    def getPeerCertificate(self) -> object:
        return self.peer


def test_identity_without_tls_or_certificate(ca: CA) -> None:
    assert certificate_identity(None) == CertificateIdentity()
    assert certificate_identity(object()) == CertificateIdentity()
    assert certificate_identity(_FakeTLS(None)) == CertificateIdentity()
    assert certificate_identity(_FakeTLS("not a certificate")) == CertificateIdentity()


def test_identity_from_a_pyopenssl_certificate(ca: CA) -> None:
    from OpenSSL import crypto

    client = ca.client("carol", organizational_units=("qa",))
    identity = certificate_identity(_FakeTLS(crypto.X509.from_cryptography(client.cert)))
    assert identity == CertificateIdentity(("carol",), (), ("qa",))


class _IdentityAPI:
    """A stand-in `RegistryAPI`: admits everything and answers with the caller's identity."""

    app = Klein()

    @app.route("/", branch=True)
    def identity(self, request: Any) -> bytes:
        transport = request.channel.transport
        identity = certificate_identity(transport)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"request": type(request).__name__, "transport": type(transport).__name__,
                           "secure": request.isSecure(), "same": request.transport is transport,
                           "identity": {"common_names": identity.common_names,
                                        "organizations": identity.organizations,
                                        "organizational_units": identity.organizational_units,
                                        "dns_names": identity.dns_names, "emails": identity.emails}}).encode()

    def admit(self, request: Any, length: int | None) -> None:
        return None


def _https_get(port: int, ca_path: str, cert: tuple[str, str] | None) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_path)
    if cert is not None:
        context.load_cert_chain(*cert)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        assert response.status == 200
        result: dict[str, Any] = json.loads(response.read())
        return result
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_registry_request_sees_the_client_certificate_on_a_real_port(tmp_path: Path, ca: CA) -> None:
    tls = server_files(tmp_path, ca, client_auth="optional")
    site = RegistrySite(_IdentityAPI())  # type: ignore[arg-type]
    factory, _ = listening_factory(Config(server=ServerConfig(tls=tls)), site, reactor)
    port = cast(Any, reactor).listenTCP(0, factory, interface="127.0.0.1")
    try:
        number = port.getHost().port
        alice = ca.client("alice", organizations=("dev",), organizational_units=("build",),
                          dns_names=("alice.example",), emails=("alice@example.com",))
        seen = await deferToThread(_https_get, number, ca.write(tmp_path / "ca.pem"), alice.write(tmp_path, "alice"))
        assert seen["request"] == "RegistryRequest"
        assert seen["transport"] == "BulkTLSProtocol"
        assert seen["secure"] is True
        assert seen["same"] is True
        assert seen["identity"] == {"common_names": ["alice"], "organizations": ["dev"],
                                    "organizational_units": ["build"], "dns_names": ["alice.example"],
                                    "emails": ["alice@example.com"]}
        anonymous = await deferToThread(_https_get, number, str(tmp_path / "ca.pem"), None)
        assert anonymous["secure"] is True
        assert anonymous["identity"]["common_names"] == []
    finally:
        await maybeDeferred(port.stopListening)


class _Writes(Protocol):
    """Writes ``pieces`` as soon as the connection is made (before the handshake is done),
    then closes it."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def connectionMade(self) -> None:
        assert self.transport is not None
        for piece in self.pieces:
            self.transport.write(piece)
        self.transport.loseConnection()


def _tls_read_all(port: int, ca_path: str) -> bytes:
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        received = []
        while chunk := tls.recv(1 << 20):
            received.append(chunk)
        return b"".join(received)


def _listen_tls(tmp_path: Path, ca: CA, protocol: Callable[[], Protocol]) -> tuple[Any, Any]:
    """``protocol`` behind the daemon's TLS listener on a real port: (factory, port)."""
    factory, _ = listening_factory(Config(server=ServerConfig(tls=server_files(tmp_path, ca))),
                                   Factory.forProtocol(protocol), reactor)
    return factory, cast(Any, reactor).listenTCP(0, factory, interface="127.0.0.1")


@pytest.mark.parametrize("sizes", [[1], [5 * PIECE + 17], [100, PIECE, 3, 2 * PIECE - 1, 70_000]])
@pytest_twisted.ensureDeferred
async def test_large_and_small_writes_arrive_intact_in_order(tmp_path: Path, ca: CA, sizes: list[int]) -> None:
    pieces = [os.urandom(size) for size in sizes]
    _, port = _listen_tls(tmp_path, ca, lambda: _Writes(pieces))
    try:
        received = await deferToThread(_tls_read_all, port.getHost().port, ca.write(tmp_path / "ca.pem"))
        assert received == b"".join(pieces)
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_the_tcp_connection_under_tls_sends_large_pieces(tmp_path: Path, ca: CA) -> None:
    limits: list[int] = []

    class Record(_Writes):
        def connectionMade(self) -> None:
            limits.append(cast(Any, self.transport).transport.SEND_LIMIT)
            super().connectionMade()

    _, port = _listen_tls(tmp_path, ca, lambda: Record([b"x"]))
    try:
        assert await deferToThread(_tls_read_all, port.getHost().port, ca.write(tmp_path / "ca.pem")) == b"x"
        assert limits == [SEND_LIMIT]
        assert SEND_LIMIT > FileDescriptor.SEND_LIMIT
    finally:
        await maybeDeferred(port.stopListening)


class _Serve(Protocol):
    """After the handshake: ``go`` writes ``pieces``, ``end`` writes ``END`` and closes."""

    def __init__(self, pieces: list[bytes], lost: Deferred[BaseException]) -> None:
        self.pieces = pieces
        self.lost = lost
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line == b"go":
                for piece in self.pieces:
                    self.transport.write(piece)
            elif line == b"end":
                self.transport.write(b"END")
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.value)


def _converse(port: int, ca_path: str, total: int, together: bool) -> bytes:
    """Ask for the pieces and the end, at once or once the first bytes arrived; read to EOF."""
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"go\nend\n" if together else b"go\n")
        received = [tls.recv(1 << 16)]
        if not together:
            tls.sendall(b"end\n")  # arrives while the server is still sending
        while chunk := tls.recv(1 << 20):
            received.append(chunk)
        return b"".join(received)


def _hang_up_early(port: int, ca_path: str) -> None:
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"go\n")
        tls.recv(1)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, mid-stream


@pytest.mark.parametrize("together", [True, False])
@pytest_twisted.ensureDeferred
async def test_large_writes_keep_their_order_with_input_and_close(tmp_path: Path, ca: CA, together: bool) -> None:
    pieces = [os.urandom(size) for size in (PIECE // 4, 5, 3 * PIECE + 1, 10, 4 * PIECE + 7, PIECE // 4 - 1)]
    lost: Deferred[BaseException] = Deferred()
    _, port = _listen_tls(tmp_path, ca, lambda: _Serve(pieces, lost))
    try:
        received = await deferToThread(_converse, port.getHost().port, ca.write(tmp_path / "ca.pem"),
                                       sum(map(len, pieces)), together)
        assert received == b"".join(pieces) + b"END"
        assert isinstance(await lost, (ConnectionDone, ConnectionLost))
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_stream_ends_the_connection_cleanly(tmp_path: Path, ca: CA) -> None:
    pieces = [os.urandom(8 * PIECE)]
    lost: Deferred[BaseException] = Deferred()
    factory, port = _listen_tls(tmp_path, ca, lambda: _Serve(pieces, lost))
    try:
        await deferToThread(_hang_up_early, port.getHost().port, ca.write(tmp_path / "ca.pem"))
        assert isinstance(await lost, (ConnectionDone, ConnectionLost))
        assert not cast(Any, factory).protocols  # forgotten by the factory: nothing left behind
    finally:
        await maybeDeferred(port.stopListening)

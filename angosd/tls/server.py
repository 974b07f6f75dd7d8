"""HTTPS for the daemon: the server TLS context, certificate reloading, and the TLS listener.

``[server.tls]`` names three PEM files: the server certificate bundle (leaf first, then its
intermediates), the server private key and, optionally, a bundle of CAs that client
certificates must chain to. Every file is read once per (re)load, parsed with
``cryptography`` and handed to OpenSSL as objects, so what was validated is exactly what is
served. Broken files raise `TlsError`, whose message names the file and the problem.

`ReloadingServerTLS` watches the three files (stat every `RELOAD_INTERVAL` seconds through a
`TimerService`); when they change it builds a new context and new connections use it, while
established connections keep theirs. A broken rotation (say the certificate was replaced but
the key not yet) keeps the previous context and logs one error line.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.logger import Logger
from zope.interface import implementer

from angosd.config import Config, TlsConfig
from angosd.tls.errors import TlsError
from angosd.tls.errors import one_line as _one_line
from angosd.tls.records import BulkTLSFactory

__all__ = ["RELOAD_INTERVAL", "ReloadingServerTLS", "TlsError", "build_context", "listening_factory"]

#: Seconds between two checks of the certificate files for changes.
RELOAD_INTERVAL = 2.0

_log = Logger()

_HTTP_1_1 = b"http/1.1"
#: TLS 1.2 suites: forward secret AEAD only, AES-128-GCM first.
_TLS12_CIPHERS = b"ECDHE+AES128+AESGCM:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
#: TLS 1.3 suites in the server's order of preference. AES-128-GCM first, as Go's servers
#: choose (OpenSSL's default puts AES-256 first): as safe, and cheaper per byte downloaded.
_TLS13_CIPHERS = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: Identifies our sessions; OpenSSL refuses to resume sessions of a verifying server without one.
_SESSION_ID_CONTEXT = b"angosd"
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = b"PRIVATE KEY-----"


# --------------------------------------------------------------------------- reading files


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise TlsError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsError(path, f"{what} file is empty")
    return data


def _certificates(path: str, data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in file order; at least one."""
    if _PEM_CERTIFICATE not in data:
        if _PEM_PRIVATE_KEY in data:
            raise TlsError(path, f"{what} holds a private key, not a certificate")
        if b"-----BEGIN" not in data:
            raise TlsError(path, f"{what} is not PEM (no '-----BEGIN CERTIFICATE-----' line)")
        raise TlsError(path, f"{what} contains no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(path, f"{what} is not a valid PEM certificate bundle ({_one_line(exc)})") from None


def _private_key(path: str, data: bytes) -> PrivateKeyTypes:
    if _PEM_PRIVATE_KEY not in data:
        if _PEM_CERTIFICATE in data:
            raise TlsError(path, "holds a certificate, not a private key")
        raise TlsError(path, "is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(path, "private key is encrypted; passphrase-protected keys are not supported") from None
    except UnsupportedAlgorithm as exc:
        raise TlsError(path, f"unsupported private key type ({_one_line(exc)})") from None
    except ValueError as exc:
        raise TlsError(path, f"is not a valid PEM private key ({_one_line(exc)})") from None


def _public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


# --------------------------------------------------------------------------- the context


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    """HTTP/1.1 only: never select h2; without http/1.1 on offer, select nothing."""
    return _HTTP_1_1 if _HTTP_1_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _verify_client(connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict, plus: a leaf with an ExtendedKeyUsage must allow clientAuth."""
    if not ok:
        return False
    if depth != 0:
        return True
    try:
        usage = certificate.to_cryptography().extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except Exception:  # an unparsable extension is no credential
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def build_context(tls: TlsConfig) -> SSL.Context:
    """A TLS 1.2+ server context for ``[server.tls]``; raises `TlsError` for unusable files.

    The certificate bundle's first certificate is the server's, the rest its chain. With
    ``client_ca_bundle`` the server asks for a client certificate, sends those CAs' names,
    and verifies any certificate presented against them (a failure ends the handshake);
    ``client_auth = "required"`` also refuses clients that present none.
    """
    cert_path, key_path = tls.server_certificate_bundle, tls.server_private_key
    chain = _certificates(cert_path, _read(cert_path, "server certificate bundle"), "server certificate bundle")
    key = _private_key(key_path, _read(key_path, "server private key"))
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise TlsError(key_path, f"private key does not match the certificate in {cert_path}")
    authorities: list[x509.Certificate] = []
    if tls.client_ca_bundle is not None:
        ca_path = tls.client_ca_bundle
        authorities = _certificates(ca_path, _read(ca_path, "client CA bundle"), "client CA bundle")

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(_TLS12_CIPHERS)
    context.set_tls13_ciphersuites(_TLS13_CIPHERS)
    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_alpn_select_callback(_select_alpn)
    try:
        context.use_certificate(leaf)
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
    except (SSL.Error, ValueError, TypeError) as exc:
        raise TlsError(cert_path, f"server certificate refused by OpenSSL ({_one_line(exc)})") from None
    try:
        context.use_privatekey(key)  # type: ignore[arg-type]  # pyOpenSSL accepts every key OpenSSL can sign with
        context.check_privatekey()
    except (SSL.Error, ValueError, TypeError) as exc:
        raise TlsError(key_path, f"private key refused by OpenSSL ({_one_line(exc)})") from None
    if tls.client_ca_bundle is not None:
        store = context.get_cert_store()
        assert store is not None
        try:
            for authority in authorities:
                store.add_cert(crypto.X509.from_cryptography(authority))
                context.add_client_ca(authority)
        except (SSL.Error, crypto.Error, ValueError, TypeError) as exc:
            raise TlsError(tls.client_ca_bundle, f"client CA refused by OpenSSL ({_one_line(exc)})") from None
        mode = SSL.VERIFY_PEER
        if tls.client_auth == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode, _verify_client)
    return context


# --------------------------------------------------------------------------- reloading


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[object, ...], ...]:
    """What identifies the current version of ``paths`` without reading them."""
    stamps: list[tuple[object, ...]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            stamps.append((path, "error", exc.errno))
        else:
            stamps.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerTLS:
    """Creates server TLS connections from the current context; `reload` replaces it.

    The constructor builds the first context and raises `TlsError` when it cannot.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.paths = tuple(p for p in (tls.server_certificate_bundle, tls.server_private_key,
                                       tls.client_ca_bundle) if p is not None)
        self._stamp = _stamp(self.paths)  # taken before reading: a change while reading is seen next time
        self._context = build_context(tls)

    @property
    def context(self) -> SSL.Context:
        """The context new connections are created from."""
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A server connection on the current context (existing connections keep theirs)."""
        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        """Rebuild the context if any file changed; True when a new context is in use.

        Files that no longer make a valid context (mid-rotation, mismatched key) leave the
        current context in place; the problem is logged once until the files change again.
        """
        stamp = _stamp(self.paths)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            context = build_context(self.tls)
        except TlsError as exc:
            _log.error("TLS reload failed, still serving the previous certificate: {error}", error=str(exc))
            return False
        self._context = context
        _log.info("TLS certificate files changed; new connections use {path}", path=self.tls.server_certificate_bundle)
        return True


def listening_factory(config: Config, site: IProtocolFactory, reactor: Any) -> tuple[IProtocolFactory, list[IService]]:
    """The factory to listen with, and services to run beside it.

    Without ``[server.tls]``: ``site`` itself. With it: ``site`` behind TLS (on top of whatever
    endpoint is used) and a timer that reloads changed certificate files. Raises `TlsError`.
    """
    tls = config.server.tls
    if tls is None:
        return site, []
    creator = ReloadingServerTLS(tls)
    factory = BulkTLSFactory(creator, False, site, clock=reactor)
    timer = TimerService(RELOAD_INTERVAL, creator.reload)
    timer.clock = reactor
    timer.setName("tls-reload")
    return factory, [timer]

"""The identity carried by a verified TLS client certificate.

Behind `twisted.protocols.tls.TLSMemoryBIOFactory` the HTTP channel's transport (what
``request.channel.transport`` and ``request.transport`` are) is the TLS protocol itself: it
provides ``ISSLTransport`` (through ``INegotiated``) and ``getPeerCertificate()`` returns the
client's pyOpenSSL ``X509``, or None when the client sent none. The server context only lets
a handshake complete with a certificate that verified (see `angosd.tls.server`), so a certificate
seen here is a verified one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ISSLTransport

from angosd.auth.identity import CertificateIdentity

if TYPE_CHECKING:  # cryptography is loaded by the TLS listener, the only source of certificates
    from cryptography import x509

__all__ = ["certificate_identity", "identity_of_certificate"]

_X509_V_OK = 0


def certificate_identity(transport: object) -> CertificateIdentity:
    """The subject of the peer certificate on ``transport``; empty without TLS or certificate.

    Pass ``request.channel.transport``. Never raises: fields that cannot be decoded are left out.
    """
    if transport is None or not ISSLTransport.providedBy(transport):
        return CertificateIdentity()
    try:
        handle = getattr(transport, "getHandle", None)
        connection = handle() if handle is not None else None
        verify_result = getattr(connection, "get_verify_result", None)
        if verify_result is not None and verify_result() != _X509_V_OK:
            return CertificateIdentity()
        peer: Any = transport.getPeerCertificate()
        if peer is None:
            return CertificateIdentity()
        from cryptography import x509

        certificate = peer if isinstance(peer, x509.Certificate) else peer.to_cryptography()
    except Exception:
        return CertificateIdentity()
    return identity_of_certificate(certificate)


def identity_of_certificate(certificate: x509.Certificate) -> CertificateIdentity:
    """Subject CN, O and OU values and SAN DNS names and emails of ``certificate``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        subject: Iterable[x509.NameAttribute[Any]] = list(certificate.subject)
    except Exception:
        subject = []
    names: x509.SubjectAlternativeName | None
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # absent, duplicated or malformed extensions
        names = None
    return CertificateIdentity(
        common_names=_attributes(subject, NameOID.COMMON_NAME),
        organizations=_attributes(subject, NameOID.ORGANIZATION_NAME),
        organizational_units=_attributes(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        dns_names=_general_names(names, x509.DNSName),
        emails=_general_names(names, x509.RFC822Name),
    )


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return None


def _attributes(subject: Iterable[x509.NameAttribute[Any]], oid: x509.ObjectIdentifier) -> tuple[str, ...]:
    values: list[str] = []
    for attribute in subject:
        try:
            text = _text(attribute.value) if attribute.oid == oid else None
        except Exception:
            continue
        if text is not None:
            values.append(text)
    return tuple(values)


def _general_names(names: x509.SubjectAlternativeName | None,
                   kind: type[x509.DNSName | x509.RFC822Name]) -> tuple[str, ...]:
    if names is None:
        return ()
    try:
        values: list[object] = list(names.get_values_for_type(kind))
    except Exception:
        return ()
    return tuple(text for text in map(_text, values) if text is not None)

"""A small X.509 factory for TLS tests: CAs, server and client certificates, PEM files.

Keys are ECDSA P-256 (fast to generate, accepted by OpenSSL and Go). Typical use::

    ca = CA("test CA")
    server = ca.server()                         # CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    alice = ca.client("alice", organizations=("dev",))
    cert, key = server.write(directory, "server")
    cert_dir = skopeo_cert_dir(directory / "skopeo", ca, alice)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Issued", "key_pem", "skopeo_cert_dir", "write_pem"]

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str | None, organizations: Sequence[str] = (),
          organizational_units: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in organizational_units]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def write_pem(path: str | os.PathLike[str], *parts: bytes | x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    """Write certificates / keys / PEM bytes to ``path`` (replaced atomically); return the path."""
    data = b""
    for part in parts:
        if isinstance(part, x509.Certificate):
            data += part.public_bytes(serialization.Encoding.PEM)
        elif isinstance(part, ec.EllipticCurvePrivateKey):
            data += key_pem(part)
        else:
            data += part
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as file:
        file.write(data)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and the intermediates between it and the root."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    def cert_pem(self) -> bytes:
        """The certificate followed by its intermediates (a server/client certificate bundle)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, directory: str | os.PathLike[str], name: str) -> tuple[str, str]:
        """Write ``name.crt`` (bundle) and ``name.key`` into ``directory``; return both paths."""
        return (write_pem(os.path.join(directory, f"{name}.crt"), self.cert_pem()),
                write_pem(os.path.join(directory, f"{name}.key"), self.key_pem()))


@dataclass
class CA:
    """A certificate authority (self-signed root, or an intermediate with ``parent``)."""

    name: str = "angosd test CA"
    parent: CA | None = None
    key: ec.EllipticCurvePrivateKey = field(default_factory=_new_key)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = _now()
        subject = _name(self.name, ("angosd tests",))
        issuer_name = subject if self.parent is None else self.parent.cert.subject
        signer = self.key if self.parent is None else self.parent.key
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer_name).public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False))
        if self.parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.parent.key.public_key()), critical=False)
        self.cert = builder.sign(signer, hashes.SHA256())

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The intermediates from this CA up to (not including) the root."""
        if self.parent is None:
            return ()
        return (self.cert, *self.parent.chain)

    @property
    def root(self) -> CA:
        return self if self.parent is None else self.parent.root

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write this CA's certificate as a one-certificate PEM bundle."""
        return write_pem(path, self.pem())

    def intermediate(self, name: str = "angosd test intermediate") -> CA:
        return CA(name, parent=self)

    def issue(self, common_name: str | None, *, organizations: Sequence[str] = (),
              organizational_units: Sequence[str] = (), dns_names: Sequence[str] = (),
              ip_addresses: Sequence[str] = (), emails: Sequence[str] = (),
              usages: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
              not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
              key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
        """A leaf certificate. ``usages=None`` leaves out the ExtendedKeyUsage extension."""
        key = key or _new_key()
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(common_name, organizations, organizational_units))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - _DAY).not_valid_after(not_after or now + 30 * _DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        alt_names += [x509.RFC822Name(e) for e in emails]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key, self.chain)

    def server(self, common_name: str = "localhost", dns_names: Sequence[str] = ("localhost",),
               ip_addresses: Sequence[str] = ("127.0.0.1",)) -> Issued:
        """A server certificate for 127.0.0.1 and localhost."""
        return self.issue(common_name, dns_names=dns_names, ip_addresses=ip_addresses,
                          usages=(ExtendedKeyUsageOID.SERVER_AUTH,))

    def client(self, common_name: str | None = "client", *, organizations: Sequence[str] = (),
               organizational_units: Sequence[str] = (), dns_names: Sequence[str] = (),
               emails: Sequence[str] = ()) -> Issued:
        """A valid client certificate (EKU clientAuth)."""
        return self.issue(common_name, organizations=organizations, organizational_units=organizational_units,
                          dns_names=dns_names, emails=emails)

    def expired_client(self, common_name: str = "expired") -> Issued:
        now = _now()
        return self.issue(common_name, not_before=now - 30 * _DAY, not_after=now - _DAY)

    def not_yet_valid_client(self, common_name: str = "future") -> Issued:
        now = _now()
        return self.issue(common_name, not_before=now + _DAY, not_after=now + 30 * _DAY)

    def wrong_purpose_client(self, common_name: str = "server-only") -> Issued:
        """A client certificate whose ExtendedKeyUsage allows serverAuth only."""
        return self.issue(common_name, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))


def skopeo_cert_dir(directory: str | os.PathLike[str], ca: CA, client: Issued | None = None) -> str:
    """A containers-image ``--cert-dir``: ``ca.crt`` (trust for the server) and, with ``client``,
    ``client.cert`` / ``client.key``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    ca.root.write(path / "ca.crt")
    if client is not None:
        write_pem(path / "client.cert", client.cert_pem())
        write_pem(path / "client.key", client.key_pem())
    return str(path)

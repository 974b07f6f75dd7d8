"""A small, real OIDC issuer for tests, served in-process by twisted.web on 127.0.0.1.

It publishes ``<issuer>/.well-known/openid-configuration`` and ``/jwks.json`` (the issuer URL
has a path, like Keycloak's realms, so discovery URL building is exercised), holds an RSA key
and an EC P-256 key, mints tokens with pyjwt, rotates keys, counts fetches, and can misbehave
on demand (error status, stall, oversized JWKS, lying discovery document).
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import PrivateCertificate
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

REALM_PATH = "/realms/test"
RsaKey = rsa.RSAPrivateKey
EcKey = ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    kid: str
    private: RsaKey | EcKey
    publish_alg: bool = True  # include "alg" in the published JWK

    @property
    def alg(self) -> str:
        return "RS256" if isinstance(self.private, rsa.RSAPrivateKey) else "ES256"

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if self.publish_alg:
            jwk["alg"] = self.alg
        return jwk


def new_rsa_key() -> RsaKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _IssuerResource(Resource):
    isLeaf = True

    def __init__(self, issuer: OidcIssuer) -> None:
        super().__init__()
        self._issuer = issuer

    def render_GET(self, request: Request) -> bytes | int:
        issuer = self._issuer
        path = request.path.decode()
        request.setHeader(b"Content-Type", b"application/json")
        if path == REALM_PATH + "/.well-known/openid-configuration":
            issuer.discovery_fetches += 1
            document = {
                "issuer": issuer.discovery_issuer or issuer.issuer,
                "jwks_uri": issuer.discovery_jwks_uri or issuer.jwks_uri,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
            return json.dumps(document).encode()
        if path == "/jwks.json":
            issuer.jwks_fetches += 1
            if issuer.stall:
                issuer.stalled.append(request)
                return NOT_DONE_YET
            request.setResponseCode(issuer.jwks_status)
            body = issuer.jwks_body if issuer.jwks_body is not None else json.dumps(issuer.jwks()).encode()
            if issuer.gzip:
                request.setHeader(b"Content-Encoding", b"gzip")
            if not issuer.chunked:
                return body
            for start in range(0, len(body), 64 * 1024):  # no Content-Length: chunked encoding
                request.write(body[start:start + 64 * 1024])
            request.finish()
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"{}"


class OidcIssuer:
    """Start with `start` (listens at once), stop with `stop` (a Deferred)."""

    def __init__(self) -> None:
        self.rsa = SigningKey("rsa-1", new_rsa_key())
        self.ec = SigningKey("ec-1", ec.generate_private_key(ec.SECP256R1()), publish_alg=False)
        self.published: list[SigningKey] = [self.rsa, self.ec]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        # misbehaviour knobs
        self.jwks_status = 200
        self.jwks_body: bytes | None = None  # served as is instead of the JWKS
        self.chunked = False  # send the JWKS without Content-Length
        self.gzip = False  # label the body Content-Encoding: gzip (jwks_body must be gzipped)
        self.stall = False
        self.stalled: list[Request] = []
        self.discovery_issuer: str | None = None
        self.discovery_jwks_uri: str | None = None
        self._rotations = 1
        self._port: IListeningPort | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ serving

    def start(self, reactor: Any = None, tls: PrivateCertificate | None = None, host: str = "127.0.0.1") -> OidcIssuer:
        reactor = reactor or default_reactor
        site = Site(_IssuerResource(self))
        if tls is None:
            self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
            scheme = "http"
        else:
            self._port = reactor.listenSSL(0, site, tls.options(), interface="127.0.0.1")
            scheme = "https"
        self.base_url = f"{scheme}://{host}:{self._port.getHost().port}"  # type: ignore[union-attr]
        return self

    def stop(self) -> Deferred[None]:
        for request in self.stalled:
            transport = request.channel.transport if request.channel is not None else None
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        assert self._port is not None
        return self._port.stopListening()  # type: ignore[return-value]

    @property
    def issuer(self) -> str:
        return self.base_url + REALM_PATH

    @property
    def jwks_uri(self) -> str:
        return self.base_url + "/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.published]}

    # ------------------------------------------------------------------ keys

    def rotate(self, keep_old: bool = False) -> SigningKey:
        """Replace the RSA key by a new one with a new kid (and stop publishing the old one)."""
        self._rotations += 1
        old, self.rsa = self.rsa, SigningKey(f"rsa-{self._rotations}", new_rsa_key())
        self.published = [key for key in self.published if keep_old or key is not old] + [self.rsa]
        return self.rsa

    # ------------------------------------------------------------------ tokens

    def claims(self, now: float, **overrides: Any) -> dict[str, Any]:
        """Typical claims at ``now``; an override of None removes the claim."""
        claims: dict[str, Any] = {"iss": self.issuer, "sub": "alice", "aud": "angosd", "iat": int(now),
                                  "exp": int(now) + 300, "groups": ["dev", "ops"], "tenant": "acme"}
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def issue(self, claims: dict[str, Any], alg: str = "RS256", kid: str | None = "default",
              key: Any = None, headers: dict[str, Any] | None = None) -> str:
        """A token signed by pyjwt; ``kid="default"`` names the signing key, None omits ``kid``."""
        signing = self.rsa if alg.startswith(("RS", "PS")) else self.ec
        key = key if key is not None else signing.private
        all_headers = dict(headers or {})
        if kid is not None:
            all_headers["kid"] = signing.kid if kid == "default" else kid
        return jwt.encode(claims, key, algorithm=alg, headers=all_headers)


def hand_made(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token built without pyjwt's guard rails; ``sign(signing_input) -> bytes`` (none: empty)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def make_ca_and_server_cert(hostname: str) -> tuple[bytes, PrivateCertificate]:
    """A CA certificate (PEM) and a server certificate it signed for ``hostname``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # a unique name: OpenSSL looks issuers up by name, so two test CAs must not share one
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"angosd test CA {x509.random_serial_number():x}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    server = PrivateCertificate.loadPEM(key_pem + cert.public_bytes(serialization.Encoding.PEM))
    return ca.public_bytes(serialization.Encoding.PEM), server

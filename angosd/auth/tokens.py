"""Registry tokens: signed JWTs in the Docker registry token format.

A token names its holder (the identity that obtained it, minus the client address) and the
scopes granted (``access``: ``[{"type", "name", "actions"}]``). Tokens are signed with an
ES256 or EdDSA private key, or with an HMAC secret (HS256). Every key has a ``kid``;
verification accepts the signing key and any earlier key still listed, so rotating the
signing key never invalidates tokens already issued.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from angosd.auth.identity import CertificateIdentity, Grant, Identity, OidcIdentity

# pyjwt and cryptography (~20 MiB with OpenSSL) are imported by the functions that use them:
# only a daemon with a token service does.

#: Audience/typ marker of refresh tokens (never accepted by the registry itself).
REFRESH = "refresh"
ACCESS = "access"


class InvalidRegistryToken(Exception):
    """A token that is not (or no longer) valid; the message says why, never the token."""


class TokenKeyError(ValueError):
    """A key file that cannot be used for tokens."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private: Any
    public: Any


def _kid(public: Any) -> str:
    if isinstance(public, bytes):
        return "hmac-" + hashlib.sha256(b"angosd-kid\0" + public).hexdigest()[:16]
    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b32encode(hashlib.sha256(der).digest()).decode().rstrip("=")[:32]


def _algorithm(key: Any, path: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise TokenKeyError(f"{path}: EC keys must be P-256 (ES256), not {key.curve.name}")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise TokenKeyError(f"{path}: only EC P-256 (ES256) and Ed25519 (EdDSA) keys are supported")


def load_private_key(path: str) -> SigningKey:
    """The signing key in PEM file ``path``; raises `TokenKeyError` (or OSError) naming it."""
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TokenKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    algorithm = _algorithm(private, path)
    public = private.public_key()
    return SigningKey(_kid(public), algorithm, private, public)


def load_verification_key(path: str) -> tuple[str, str, Any]:
    """(kid, algorithm, public key) of PEM file ``path`` (a public or a private key)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if b"PRIVATE KEY" in data:
        key = load_private_key(path)
        return key.kid, key.algorithm, key.public
    from cryptography.hazmat.primitives import serialization

    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise TokenKeyError(f"{path}: not a PEM public key ({exc})") from None
    return _kid(public), _algorithm(public, path), public


def hmac_key(secret: str) -> SigningKey:
    raw = secret.encode()
    return SigningKey(_kid(raw), "HS256", raw, raw)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified token: who holds it and what it grants."""

    identity: Identity
    access: tuple[Grant, ...]
    subject: str


def identity_claims(identity: Identity) -> dict[str, Any]:
    """What a token remembers of ``identity`` (no client address: that is the bearer's)."""
    certificate = identity.certificate
    return {
        "id": identity.id,
        "username": identity.username,
        "certificate": {
            "common_names": list(certificate.common_names),
            "organizations": list(certificate.organizations),
            "organizational_units": list(certificate.organizational_units),
            "dns_names": list(certificate.dns_names),
            "emails": list(certificate.emails),
        },
        "oidc": None if identity.oidc is None else {"provider_name": identity.oidc.provider_name,
                                                    "claims": dict(identity.oidc.claims)},
        "groups": list(identity.groups),
    }


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRegistryToken("malformed identity claim")
    return tuple(value)


def identity_from_claims(claims: Mapping[str, Any], client_ip: str | None,
                         access: tuple[Grant, ...] | None) -> Identity:
    """The `Identity` a token holds, as seen from ``client_ip``."""
    held = claims.get("angosd")
    if not isinstance(held, dict):
        raise InvalidRegistryToken("the token holds no identity")
    certificate = held.get("certificate") or {}
    if not isinstance(certificate, dict):
        raise InvalidRegistryToken("malformed identity claim")
    oidc = held.get("oidc")
    oidc_identity = None
    if isinstance(oidc, dict) and isinstance(oidc.get("provider_name"), str):
        oidc_identity = OidcIdentity(oidc["provider_name"], dict(oidc.get("claims") or {}))
    identity_id, username = held.get("id"), held.get("username")
    return Identity(
        id=identity_id if isinstance(identity_id, str) else None,
        username=username if isinstance(username, str) else None,
        client_ip=client_ip,
        certificate=CertificateIdentity(*(_strings(certificate.get(name, [])) for name in (
            "common_names", "organizations", "organizational_units", "dns_names", "emails"))),
        oidc=oidc_identity,
        groups=_strings(held.get("groups", [])),
        token_access=access,
    )


def _access(claims: Mapping[str, Any]) -> tuple[Grant, ...]:
    entries = claims.get("access", [])
    if not isinstance(entries, list):
        raise InvalidRegistryToken("malformed access claim")
    grants: list[Grant] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or \
                not isinstance(entry.get("name"), str):
            raise InvalidRegistryToken("malformed access claim")
        grants.append((entry["type"], entry["name"], _strings(entry.get("actions", []))))
    return tuple(grants)


class TokenSigner:
    """Issues and verifies the tokens of one service (``issuer``, ``service`` audience)."""

    def __init__(self, signing: SigningKey, verification: Sequence[tuple[str, str, Any]], issuer: str,
                 service: str) -> None:
        self.signing = signing
        self.issuer = issuer
        self.service = service
        self._keys: dict[str, tuple[str, Any]] = {kid: (algorithm, key) for kid, algorithm, key in verification}
        self._keys[signing.kid] = (signing.algorithm, signing.public)

    def issue(self, identity: Identity, access: Sequence[Grant], now: float, ttl: int, kind: str = ACCESS) -> str:
        """A token for ``identity`` granting ``access``, valid ``ttl`` seconds from ``now``."""
        issued = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": identity.username or identity.describe(),
            "aud": self.service if kind == ACCESS else f"{self.service}#{REFRESH}",
            "iat": issued,
            "nbf": issued - 1,
            "exp": issued + ttl,
            "jti": secrets.token_urlsafe(16),
            "access": [{"type": kind_, "name": name, "actions": list(actions)} for kind_, name, actions in access],
            "angosd": identity_claims(identity),
        }
        import jwt

        return jwt.encode(claims, self.signing.private, algorithm=self.signing.algorithm,
                          headers={"kid": self.signing.kid, "typ": "JWT"})

    def is_ours(self, token: str) -> bool:
        """Whether ``token`` names one of this service's keys (else it may be an OIDC token)."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return False
        return header.get("kid") in self._keys

    def verify(self, token: str, now: float, client_ip: str | None, kind: str = ACCESS) -> TokenClaims:
        """The claims of a valid ``token``; raises `InvalidRegistryToken`."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidRegistryToken(f"malformed token: {exc}") from None
        found = self._keys.get(header.get("kid", ""))
        if found is None:
            raise InvalidRegistryToken("the token was signed by an unknown key")
        algorithm, key = found
        if header.get("alg") != algorithm:
            raise InvalidRegistryToken("the token's algorithm does not match its key")
        audience = self.service if kind == ACCESS else f"{self.service}#{REFRESH}"
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=self.issuer,
                                options={"require": ["exp", "iat", "iss", "aud"], "verify_iat": False,
                                         "verify_exp": False, "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise InvalidRegistryToken(f"invalid token: {exc}") from None
        # The reactor's clock decides (the one tokens are issued by), not the wall clock.
        if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
            raise InvalidRegistryToken("the token has expired")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + 1:
            raise InvalidRegistryToken("the token is not valid yet")
        access = _access(claims)
        identity = identity_from_claims(claims, client_ip, access if kind == ACCESS else None)
        return TokenClaims(identity, access, str(claims.get("sub", "")))

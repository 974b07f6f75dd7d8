"""Who is calling: the identity that policies see as ``identity.*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """The subject of a verified client certificate (empty without one)."""

    common_names: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    organizational_units: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.common_names or self.organizations or self.dns_names or self.emails)


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """A validated OIDC token: the provider's config name and the token's claims."""

    provider_name: str
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


#: One granted scope of a registry token: (type, name, actions), e.g.
#: ``("repository", "team/app", ("pull", "push"))``.
Grant = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller. ``id``/``username`` come from Basic auth (or a directory) only; the rest from
    TLS and OIDC. ``groups`` are directory groups; ``token_access`` is None unless the caller
    presented a registry token, whose grants then bound what it may do."""

    id: str | None = None
    username: str | None = None
    client_ip: str | None = None
    certificate: CertificateIdentity = CertificateIdentity()
    oidc: OidcIdentity | None = None
    groups: tuple[str, ...] = ()
    token_access: tuple[Grant, ...] | None = None

    @property
    def authenticated(self) -> bool:
        """True when any credential (password, certificate, token) was verified."""
        return self.id is not None or bool(self.certificate) or self.oidc is not None

    def describe(self) -> str:
        """A short label for logs: never contains a secret."""
        if self.id is not None:
            return f"user:{self.id}"
        if self.oidc is not None:
            return f"oidc:{self.oidc.provider_name}:{self.oidc.claims.get('sub', '?')}"
        if self.certificate:
            return f"cert:{','.join(self.certificate.common_names) or '?'}"
        return "anonymous"

    def to_cel(self) -> dict[str, Any]:
        """The ``identity`` variable of access policies."""
        return {
            "id": self.id,
            "username": self.username,
            "client_ip": self.client_ip,
            "certificate": {
                "common_names": list(self.certificate.common_names),
                "organizations": list(self.certificate.organizations),
                "organizational_units": list(self.certificate.organizational_units),
                "dns_names": list(self.certificate.dns_names),
                "emails": list(self.certificate.emails),
            },
            "oidc": None if self.oidc is None else {"provider_name": self.oidc.provider_name,
                                                    "claims": dict(self.oidc.claims)},
            "groups": list(self.groups),
        }


ANONYMOUS = Identity()

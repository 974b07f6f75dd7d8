"""Who is calling: client certificate, then Bearer token, then Basic credentials.

Missing credentials fall through to the next method; credentials that are present but
invalid fail the request at once (401), they never degrade to anonymous.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web.iweb import IRequest

from angosd.auth.basic import PasswordUsers
from angosd.auth.credentials import BasicCredentials, BearerToken, parse_authorization
from angosd.auth.identity import CertificateIdentity, Identity, OidcIdentity
from angosd.auth.mtls import certificate_identity
from angosd.auth.oidc import InvalidToken
from angosd.oci.errors import Unauthorized


class TokenValidator(Protocol):
    """What the authenticator needs of the OIDC providers (`angosd.auth.oidc.OidcProviders`)."""

    def by_name(self, name: str) -> Any: ...
    async def validate_any(self, token: str) -> OidcIdentity: ...


def peer_certificate(request: IRequest) -> CertificateIdentity:
    """The verified client certificate of the request's connection, if any."""
    channel = getattr(request, "channel", None)
    return certificate_identity(getattr(channel, "transport", None))


def client_ip(request: IRequest) -> str | None:
    address = request.getClientAddress()
    return getattr(address, "host", None)


class Authenticator:
    def __init__(self, users: PasswordUsers, oidc: TokenValidator | None) -> None:
        self._users = users
        self._oidc = oidc

    async def authenticate(self, request: IRequest) -> Identity:
        """The caller's identity; raises `Unauthorized` for invalid credentials."""
        certificate = peer_certificate(request)
        ip = client_ip(request)
        header = request.getHeader("Authorization")
        credentials = parse_authorization(header.decode("latin-1") if isinstance(header, bytes) else header)
        if isinstance(credentials, BearerToken):
            return Identity(client_ip=ip, certificate=certificate, oidc=await self._token(credentials.token, None))
        if isinstance(credentials, BasicCredentials):
            provider = self._oidc.by_name(credentials.username) if self._oidc is not None else None
            if provider is not None:
                oidc = await self._token(credentials.password, provider)
                return Identity(client_ip=ip, certificate=certificate, oidc=oidc)
            user_id = await self._users.check(credentials.username, credentials.password)
            if user_id is None:
                raise Unauthorized("invalid username or password")
            return Identity(id=user_id, username=credentials.username, client_ip=ip, certificate=certificate)
        return Identity(client_ip=ip, certificate=certificate)

    async def _token(self, token: str, provider: Any) -> OidcIdentity:
        if self._oidc is None:
            raise Unauthorized("bearer tokens are not accepted: no OIDC provider is configured")
        try:
            if provider is not None:
                return await provider.validate(token)
            return await self._oidc.validate_any(token)
        except InvalidToken as exc:
            raise Unauthorized(f"invalid token: {exc}") from None

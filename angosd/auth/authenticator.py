"""Who is calling: client certificate, then Bearer token, then Basic credentials.

Missing credentials fall through to the next method; credentials that are present but
invalid fail the request at once (401), they never degrade to anonymous.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.web.iweb import IRequest

from angosd.auth.basic import PasswordUsers
from angosd.auth.credentials import BasicCredentials, BearerToken, parse_authorization
from angosd.auth.identity import CertificateIdentity, Identity, OidcIdentity
from angosd.auth.limits import LoginLimiter
from angosd.auth.mtls import certificate_identity
from angosd.auth.tokens import InvalidRegistryToken, TokenSigner
from angosd.oci.errors import TooManyRequests, Unauthorized

if TYPE_CHECKING:  # each imported only when its feature is configured (some load OpenSSL)
    from angosd.auth.ldap import LdapDirectory


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


#: Records one authentication as (method, result), see `angosd.observability.metrics.Metrics.auth_attempt`.
AuthRecorder = Callable[[str, str], None]


def _record_nothing(method: str, result: str) -> None:
    """The default `AuthRecorder`."""


class Authenticator:
    def __init__(self, users: PasswordUsers, oidc: TokenValidator | None,
                 record: AuthRecorder | None = None, tokens: TokenSigner | None = None,
                 clock: Any = None, limiter: LoginLimiter | None = None,
                 directory: LdapDirectory | None = None) -> None:
        """``tokens`` verifies the registry's own Bearer tokens (``[auth.token_service]``) on
        ``clock``'s time; other Bearer tokens go to the OIDC providers. ``limiter`` refuses
        password checks (429) from addresses and for usernames that failed too often;
        passwords verified recently pass without it."""
        self._users = users
        self._oidc = oidc
        self._record = record or _record_nothing
        self._tokens = tokens
        self._clock = clock
        self._limiter = limiter
        self._directory = directory  # [auth.ldap]: users not configured locally

    async def authenticate(self, request: IRequest) -> Identity:
        """The caller's identity; raises `Unauthorized` for invalid credentials. Each call is
        recorded once as (`auth_method`, ``success`` or ``failure``)."""
        try:
            identity = await self._identify(request)
        except TooManyRequests:
            self._record(self.auth_method(request), "limited")
            raise
        except Exception:
            self._record(self.auth_method(request), "failure")
            raise
        self._record(self.auth_method(request), "success")
        return identity

    def auth_method(self, request: IRequest) -> str:
        """``bearer``, ``basic`` or ``oidc-basic`` by the Authorization scheme (and Basic user
        name); without that header ``certificate`` or ``anonymous``. An unsupported scheme
        counts as ``anonymous``: no known method was attempted."""
        header = request.getHeader("Authorization")
        text = header.decode("latin-1") if isinstance(header, bytes) else header
        scheme = (text or "").strip().partition(" ")[0].lower()
        if scheme == "bearer":
            return "bearer"
        if scheme == "basic":
            try:
                credentials = parse_authorization(text)
            except Unauthorized:
                return "basic"
            if isinstance(credentials, BasicCredentials) and self._oidc is not None and \
                    self._oidc.by_name(credentials.username) is not None:
                return "oidc-basic"
            return "basic"
        return "certificate" if text is None and peer_certificate(request) else "anonymous"

    async def _identify(self, request: IRequest) -> Identity:
        certificate = peer_certificate(request)
        ip = client_ip(request)
        header = request.getHeader("Authorization")
        credentials = parse_authorization(header.decode("latin-1") if isinstance(header, bytes) else header)
        if isinstance(credentials, BearerToken):
            if self._tokens is not None and self._tokens.is_ours(credentials.token):
                return self.registry_token(credentials.token, ip)
            return Identity(client_ip=ip, certificate=certificate, oidc=await self._token(credentials.token, None))
        if isinstance(credentials, BasicCredentials):
            return await self._password(credentials.username, credentials.password, ip, certificate)
        return Identity(client_ip=ip, certificate=certificate)

    async def password(self, request: IRequest, username: str, password: str) -> Identity:
        """The identity of a username and password given outside the Authorization header
        (the token endpoint's OAuth2 form); raises `Unauthorized`. Recorded like `authenticate`."""
        method = "oidc-basic" if self._oidc is not None and self._oidc.by_name(username) is not None else "basic"
        try:
            identity = await self._password(username, password, client_ip(request), peer_certificate(request))
        except TooManyRequests:
            self._record(method, "limited")
            raise
        except Exception:
            self._record(method, "failure")
            raise
        self._record(method, "success")
        return identity

    def registry_token(self, token: str, ip: str | None, kind: str = "access") -> Identity:
        """The identity held by one of this registry's tokens; raises `Unauthorized`."""
        if self._tokens is None:
            raise Unauthorized("registry tokens are not accepted: no token service is configured")
        try:
            return self._tokens.verify(token, self._clock.seconds(), ip, kind).identity
        except InvalidRegistryToken as exc:
            raise Unauthorized(str(exc)) from None

    async def _password(self, username: str, password: str, ip: str | None,
                        certificate: CertificateIdentity) -> Identity:
        provider = self._oidc.by_name(username) if self._oidc is not None else None
        if provider is not None:
            oidc = await self._token(password, provider)
            return Identity(client_ip=ip, certificate=certificate, oidc=oidc)
        if self._directory is not None and username not in self._users:
            return await self._directory_user(username, password, ip, certificate)
        user_id = self._users.cached(username, password)
        if user_id is None:
            if self._limiter is not None:
                self._limiter.begin(ip, username)  # counted as a failure until it succeeds
            user_id = await self._users.check(username, password)
            if user_id is not None and self._limiter is not None:
                self._limiter.succeeded(ip, username)
        if user_id is None:
            raise Unauthorized("invalid username or password")
        return Identity(id=user_id, username=username, client_ip=ip, certificate=certificate)

    async def _directory_user(self, username: str, password: str, ip: str | None,
                              certificate: CertificateIdentity) -> Identity:
        assert self._directory is not None
        user = self._directory.cached(username, password)
        if user is None:
            if self._limiter is not None:
                self._limiter.begin(ip, username)
            user = await self._directory.check(username, password)  # DirectoryUnavailable: 503
            if user is not None and self._limiter is not None:
                self._limiter.succeeded(ip, username)
        if user is None:
            raise Unauthorized("invalid username or password")
        return Identity(id=username, username=username, client_ip=ip, certificate=certificate, groups=user.groups)

    async def _token(self, token: str, provider: Any) -> OidcIdentity:
        if self._oidc is None:
            raise Unauthorized("bearer tokens are not accepted: no OIDC provider is configured")
        from angosd.auth.oidc import InvalidToken  # loaded with the OIDC providers

        try:
            if provider is not None:
                return await provider.validate(token)
            return await self._oidc.validate_any(token)
        except InvalidToken as exc:
            raise Unauthorized(f"invalid token: {exc}") from None

"""``/token``: the registry token service (``[auth.token_service]``).

``GET /token?service=…&scope=…`` (Docker's form) authenticates the caller by its
Authorization header or client certificate, or not at all (anonymous), and answers a
signed token granting the part of the asked scopes the access policy allows it.
``POST /token`` takes the OAuth2 form (``grant_type=password`` with ``username`` and
``password``, or ``grant_type=refresh_token``) as podman, containerd and docker send it.
A refresh token is issued to authenticated callers that ask for one (``offline_token=true``
or ``access_type=offline``) and stands for their identity until it expires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from angosd.actions import Route
from angosd.auth.authorizer import SecurityState
from angosd.auth.identity import Identity
from angosd.auth.token_service import Scope, TokenService, parse_scope
from angosd.auth.tokens import REFRESH
from angosd.http.endpoints.base import Endpoint
from angosd.http.request import BodySink, MemorySink, RegistryRequest
from angosd.http.responses import respond_json
from angosd.oci.errors import NotFound, OciError, Unauthorized, Unsupported

#: Largest OAuth2 form body accepted.
MAX_FORM = 64 * 1024


class InvalidRequest(OciError):
    """A malformed token request (400)."""

    code = "UNSUPPORTED"
    status = 400
    message = "invalid token request"


class TokenEndpoint(Endpoint):
    """Issues registry tokens; 404 when no token service is configured."""

    def __init__(self, state: Callable[[], SecurityState], clock: Any) -> None:
        self._state = state
        self._clock = clock

    def _service(self) -> tuple[SecurityState, TokenService]:
        state = self._state()
        if state.tokens is None:
            raise NotFound("no token service is configured")
        return state, state.tokens

    async def admit(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        self._service()
        if route.method != "POST":
            return None
        if length is not None and length > MAX_FORM:
            raise InvalidRequest(f"the form exceeds {MAX_FORM} bytes")
        return MemorySink(MAX_FORM)

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        state, service = self._service()
        try:
            if route.method == "POST":
                identity, scopes, offline = await self._form(request, state)
            else:
                identity = await state.authenticator.authenticate(request)
                scopes = [scope for text in route.query.get("scope", []) for part in text.split(" ")
                          if (scope := parse_scope(part)) is not None]
                offline = route.param("offline_token") == "true"
        except Unauthorized as exc:
            exc.headers.setdefault("WWW-Authenticate", f'Basic realm="{service.config.service}", charset="UTF-8"')
            raise
        now = self._clock.seconds()
        granted = service.grant(identity, scopes, state.allows)
        token = service.signer.issue(identity, granted, now, service.ttl)
        refresh = None
        if offline and identity.authenticated and service.config.refresh_ttl_secs > 0:
            refresh = service.signer.issue(identity, [], now, service.config.refresh_ttl_secs, REFRESH)
        return respond_json(request, 200, service.response(token, now, refresh),
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def _form(self, request: RegistryRequest, state: SecurityState) -> tuple[Identity, list[Scope], bool]:
        sink = request.sink
        body = sink.getvalue() if isinstance(sink, MemorySink) else b""
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise InvalidRequest("the form is not UTF-8") from None

        def field(name: str) -> str:
            values = form.get(name)
            return values[0] if values else ""

        scopes = [scope for part in field("scope").split(" ") if (scope := parse_scope(part)) is not None]
        grant_type = field("grant_type")
        ip = request.getClientAddress()
        if grant_type == "password":
            if not field("username"):
                raise InvalidRequest("grant_type=password needs a username")
            identity = await state.authenticator.password(request, field("username"), field("password"))
        elif grant_type == "refresh_token":
            identity = state.authenticator.registry_token(field("refresh_token"), getattr(ip, "host", None), REFRESH)
        else:
            raise Unsupported(f"unsupported grant_type {grant_type!r}")
        return identity, scopes, field("access_type") == "offline"

"""The authorization hook every request passes before its body is read."""

from __future__ import annotations

from typing import Protocol

from twisted.web.iweb import IRequest

from angosd.http.router import Route


class Authorizer(Protocol):
    async def authorize(self, request: IRequest, route: Route) -> None:
        """Return when the request may proceed; raise `Unauthorized` or `Denied`
        otherwise. Runs on the headers only, before any body byte is read."""


class AllowAll:
    """The embedded default: anonymous full access."""

    async def authorize(self, request: IRequest, route: Route) -> None:
        return None

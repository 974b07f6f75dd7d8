"""``get-api-version``, ``healthz`` and ``readyz``."""

from __future__ import annotations

from angosd.actions import Route
from angosd.http.endpoints.base import Endpoint
from angosd.http.request import RegistryRequest
from angosd.http.responses import JSON, respond, respond_json
from angosd.registry.registry import NotReady

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


class ApiVersion(Endpoint):
    """``GET /v2/``: an empty JSON object with the distribution API version header."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        return respond(request, 200, b"{}", JSON, API_VERSION)


class Health(Endpoint):
    """The process answers."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        return respond_json(request, 200, {"status": "ok"})


class Ready(Endpoint):
    """The store answers: 200, else 503 with the store's reason (cut to 200 characters)."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        try:
            await self.context.registry.ready()
        except NotReady as exc:
            return respond_json(request, 503, {"status": "unavailable", "detail": str(exc)[:200]})
        return respond_json(request, 200, {"status": "ready"})

"""What every endpoint shares: the `Endpoint` shape, the `Context` it works in, and the
`Handler` form of endpoints that take no body (extension API, web UI, metrics).

An endpoint serves one action (or a few that share their code) in two steps:

- `Endpoint.admit` runs on the headers, after authorization and before any body byte
  is read: it may refuse (raise), and says where the body goes (a `BodySink`, or None
  to discard it);
- `Endpoint.handle` runs once the body is in, and answers.

Endpoints raise `OciError`s (and let storage failures pass); they never set an error
status themselves: `angosd.http.errors` turns every failure into a response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from angosd.actions import Route
from angosd.auth.authorizer import Authorizer
from angosd.http.endpoints.sources import ContentSource, Sources
from angosd.http.request import BodySink, RegistryRequest
from angosd.oci.errors import Unsupported
from angosd.registry.registry import Registry
from angosd.webhooks.events import EventBus

#: An endpoint without a body to admit: answers a routed request.
Handler = Callable[[RegistryRequest, Route], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class Context:
    """What endpoints work with. ``blob_redirect`` gives the lifetime (seconds) of blob
    redirect URLs, None when blob GETs are not redirected; ``events`` publishes registry
    events to webhooks (None: no webhooks)."""

    registry: Registry
    authorizer: Authorizer
    sources: Sources
    events: EventBus | None = None
    blob_redirect: Callable[[], int | None] = lambda: None

    def namespace(self, route: Route) -> str:
        """The route's namespace, validated and served (else `NameInvalid`/`NameUnknown`)."""
        return self.registry.check_namespace(route.namespace or "")

    def source(self, namespace: str) -> ContentSource:
        """Where the content of ``namespace`` comes from: the local store or a pull-through cache."""
        return self.sources.for_namespace(namespace)

    def refuse_pull_through(self, route: Route) -> None:
        """Raise `Unsupported` (415) when the route's namespace is served by a pull-through cache."""
        if route.namespace is not None and self.sources.is_pull_through(route.namespace):
            raise Unsupported(f"{route.namespace} is served by a pull-through cache: pushes are refused")

    async def publish(self, kind: str, request: RegistryRequest, namespace: str, **details: str | None) -> None:
        """Publish an event; a required webhook's refusal raises and stops the operation."""
        if self.events is not None:
            await self.events.publish(kind, namespace, getattr(request, "identity", None), **details)


class Endpoint:
    """One action's admission and handling (see the module docstring). By default the body
    is discarded."""

    def __init__(self, context: Context) -> None:
        self.context = context

    async def admit(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        """Where the body goes (None: discarded); raise to refuse the request."""
        return None

    async def handle(self, request: RegistryRequest, route: Route) -> bytes | None:
        """The answer: the body for Klein to write, or None when the response was written."""
        raise NotImplementedError


class WriteEndpoint(Endpoint):
    """An endpoint that writes: refused on pull-through namespaces before anything else."""

    async def admit(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        self.context.refuse_pull_through(route)
        return await self.open_body(request, route, length)

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        """Where the body of an admitted write goes (None: discarded)."""
        return None


class HandlerEndpoint(Endpoint):
    """A `Handler` as an endpoint: no body admitted."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def handle(self, request: RegistryRequest, route: Route) -> bytes | None:
        return await self._handler(request, route)

"""The Klein application: one catch-all route dispatching each parsed `Route` to its endpoint.

Every action has one endpoint (`angosd.http.endpoints`) holding both its admission (on
the headers, before the body) and its handling. `RegistryAPI` authorizes, dispatches,
and hands failures to `angosd.http.errors`, the only code that turns them into responses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from angosd.actions import Action
from angosd.auth.authorizer import Authorizer
from angosd.http import errors
from angosd.http.crossorigin import refuse_cross_site
from angosd.http.endpoints import Context, Endpoint, Handler, endpoints
from angosd.http.endpoints.sources import Sources
from angosd.http.request import BodySink, RegistryRequest
from angosd.oci.errors import MethodNotAllowed, NotFound, OciError
from angosd.proxy.cache import PullThroughCache
from angosd.registry.registry import Registry
from angosd.webhooks.events import EventBus

__all__ = ["Handler", "RegistryAPI"]


class _AnyPath(PathConverter):
    """Werkzeug's ``path`` converter, but also matching decoded newlines (``%0a``): the
    catch-all route must see every path, and `parse_route` judges it."""

    regex = "(?s:[^/].*?)"


class RegistryAPI:
    """The registry's HTTP face. Also the request gate (`admit`) of `RegistryRequest`."""

    app = Klein()
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["path"] = _AnyPath  # before the branch route below compiles its rule

    def __init__(self, registry: Registry, authorizer: Authorizer, realm: str = "angosd",
                 extensions: Mapping[Action, Handler | Endpoint] | None = None, cache: PullThroughCache | None = None,
                 events: EventBus | None = None, blob_redirect: Callable[[], int | None] = lambda: None) -> None:
        """``extensions`` adds or replaces handlers by action (extension API, UI, metrics);
        ``cache`` serves the namespaces of pull-through repositories; ``events`` publishes
        registry events to webhooks before each operation; ``blob_redirect`` gives the
        lifetime (seconds) of blob redirect URLs, None when blob GETs are not redirected."""
        self.registry = registry
        self.cache = cache
        self.events = events
        self.authorizer = authorizer
        self.realm = realm
        context = Context(registry, authorizer, Sources(registry, cache), events, blob_redirect)
        self._endpoints: dict[Action, Endpoint] = endpoints(context, extensions)

    # -- admission: runs on the headers, before the body -------------------------------

    async def admit(self, request: RegistryRequest, length: int | None) -> BodySink | None:
        """Authorize the request, then let its endpoint refuse it or open the sink its body
        streams into (None: the body is discarded)."""
        route = request.route
        if request.trace is not None:
            request.trace.activate()
        request.setHeader("X-Content-Type-Options", "nosniff")  # no response is ever sniffed into a script
        refuse_cross_site(request, route.method)
        await self.authorizer.authorize(request, route)
        endpoint = self._endpoints.get(route.action)
        if endpoint is None or not route.method_allowed:
            return None  # `dispatch` answers
        return await endpoint.admit(request, route, length)

    # -- dispatch ------------------------------------------------------------------------

    @app.route("/", branch=True, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def dispatch(self, request: RegistryRequest) -> bytes | None:
        route = request.route
        if request.trace is not None:
            request.trace.activate()
        request.check_admitted()
        if not route.method_allowed:
            raise MethodNotAllowed(f"{route.method} {route.path}")
        endpoint = self._endpoints.get(route.action)
        if endpoint is None:
            raise NotFound(route.path)
        return await endpoint.handle(request, route)

    # -- errors: handed to angosd.http.errors, the one place that answers failures --------

    @app.handle_errors(OciError)
    def _oci_error(self, request: IRequest, failure: Failure) -> bytes | None:
        return errors.oci_error(request, failure, self.realm)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes | None:
        return errors.routing_error(request, failure, self.realm)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        return errors.unexpected(request, failure, self.realm)

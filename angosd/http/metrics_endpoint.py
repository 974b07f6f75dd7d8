"""The HTTP side of the metrics: the ``metrics`` action's handler and the site's request observer.

`angosd.observability.metrics` holds the series and knows nothing of HTTP; this module
reads requests (their route, status and byte counts) and reports them there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from angosd.actions import Action, Route
from angosd.http.accesslog import received_bytes, response_status
from angosd.http.endpoints.base import Handler
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond
from angosd.observability.metrics import HttpMetrics, Metrics

__all__ = ["RequestMetrics", "metrics_handlers"]


def _route(request: Any) -> tuple[str, str]:
    """(action, method) of a request; ``unknown`` and ``OTHER`` when it was never routed."""
    route = getattr(request, "route", None)
    if route is None:
        return str(Action.UNKNOWN), "OTHER"
    return str(route.action), route.method


class RequestMetrics:
    """Feeds `HttpMetrics` as a `RequestObserver` of the site.

    ``clock`` returns monotonic seconds. Every request seen in `started` is counted once
    in `finished`, and the in-flight gauge goes up and down exactly once for it; a
    `finished` without `started` (or a second one) changes nothing.
    """

    def __init__(self, metrics: HttpMetrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock
        self._started: dict[Any, float] = {}

    def started(self, request: Any) -> None:
        """Headers of ``request`` are in: it is in flight."""
        if request in self._started:
            return
        self._started[request] = self._clock()
        self._metrics.began()

    def finished(self, request: Any, failed: bool) -> None:
        """``request`` was answered (or its connection lost): count it, once."""
        began = self._started.pop(request, None)
        if began is None:
            return
        action, method = _route(request)
        storage_error = getattr(request, "storage_error", None)
        if storage_error is not None:
            self._metrics.storage_error(storage_error)
        self._metrics.ended(action, method, response_status(request, failed), self._clock() - began,
                            received_bytes(request), int(getattr(request, "sentLength", 0) or 0))


def metrics_handlers(metrics: Metrics) -> dict[Action, Handler]:
    """The ``metrics`` action's handler (the text exposition), for `RegistryAPI(extensions=...)`."""

    async def serve(request: RegistryRequest, route: Route) -> bytes:
        return respond(request, 200, metrics.exposition(), CONTENT_TYPE_LATEST)

    return {Action.METRICS: serve}

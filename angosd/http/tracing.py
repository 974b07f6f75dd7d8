"""The per-request span: a `RequestObserver` of the site that starts a server span when a
request's headers are in and ends it when the request finishes.

The span is kept on the request (``request.trace``); `angosd.http.api.RegistryAPI` makes it
current while admitting and handling the request, so the spans started below it
(authentication, policy evaluation, storage, outgoing requests) are its children. The access
log writes its trace id. See `angosd.observability.tracing` for the span names and attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from angosd.actions import Action
from angosd.http.accesslog import response_status

if TYPE_CHECKING:
    from angosd.observability.tracing import Tracing

__all__ = ["RequestTracing", "identity_kind"]


def identity_kind(request: Any) -> str:
    """How the caller was identified: ``basic``, ``oidc``, ``certificate``, ``anonymous``, or
    ``none`` when authentication did not run or failed."""
    identity = getattr(request, "identity", None)
    if identity is None:
        return "none"
    if identity.id is not None:
        return "basic"
    if identity.oidc is not None:
        return "oidc"
    if identity.certificate:
        return "certificate"
    return "anonymous"


class RequestTracing:
    """Starts and ends each request's span, once."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    def started(self, request: Any) -> None:
        route = getattr(request, "route", None)
        action = str(route.action if route is not None else Action.UNKNOWN)
        method = route.method if route is not None else "OTHER"
        attributes = {"http.request.method": method, "angosd.action": action,
                      "url.path": route.path if route is not None else "-"}
        if route is not None and route.namespace:
            attributes["angosd.repository"] = route.namespace
        request.trace = self._tracing.start_request(request.getHeader, f"{method} {action}", attributes)

    def finished(self, request: Any, failed: bool) -> None:
        trace = getattr(request, "trace", None)
        if trace is None:
            return
        request.trace = None
        request.trace_id = trace.trace_id
        status = response_status(request, failed)
        trace.end({"http.response.status_code": status, "angosd.identity.kind": identity_kind(request)},
                  error=failed or status >= 500)

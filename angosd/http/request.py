"""The streaming request: decides what happens to a body before reading it.

Twisted calls `gotLength` once the headers are in, before any body byte. There the
request parses its route and asks the site's gate to *admit* it: authenticate,
authorize, and open a sink for the body (an upload session, or a bounded buffer for a
manifest). While admission is pending the transport is paused and early bytes are held
(bounded by one socket read). A refused request never writes its body anywhere: the
bytes are discarded and the handler reports the refusal. An admitted upload body goes
straight into the upload's file while being hashed.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from twisted.web import server

from angosd.actions import Action
from angosd.compat import request_disconnected, request_line
from angosd.http.forwarded import client_address
from angosd.http.router import Route, parse_route
from angosd.oci.errors import TooLarge, TooManyRequests

#: Actions a ``?ns=`` parameter reroutes (pulls; writes ignore it).
_NS_ACTIONS = frozenset({Action.GET_MANIFEST, Action.GET_BLOB, Action.LIST_TAGS, Action.GET_REFERRERS})
#: Actions never refused for capacity: probes must see a busy registry as alive.
_UNLIMITED = frozenset({Action.HEALTHZ, Action.READYZ, Action.METRICS})


class BodySink(Protocol):
    """Where an admitted body goes."""

    def write(self, data: bytes) -> None: ...
    def finish(self) -> Any: ...
    def abort(self) -> None: ...


class MemorySink:
    """A bounded in-memory body (manifests); raises `TooLarge` past ``limit``."""

    def __init__(self, limit: int) -> None:
        self._buffer = io.BytesIO()
        self._limit = limit

    def write(self, data: bytes) -> None:
        if self._buffer.tell() + len(data) > self._limit:
            raise TooLarge(f"body exceeds {self._limit} bytes")
        self._buffer.write(data)

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        self._buffer = io.BytesIO()

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()


class Gate(Protocol):
    def admit(self, request: RegistryRequest, length: int | None) -> Any:
        """Return (or fire a Deferred with) a `BodySink`, or None to discard the body.
        Raise (or fail) to refuse the request."""


class RequestObserver(Protocol):
    """Sees every request begin (headers in) and end (response sent, or connection lost)."""

    def started(self, request: RegistryRequest) -> None: ...
    def finished(self, request: RegistryRequest, failed: bool) -> None: ...


#: The ``Server`` header of every response (Twisted would name itself and its version).
SERVER_NAME = b"angosd"


def origin_form(target: bytes) -> bytes:
    """The origin-form (``/path?query``) of a request target; an absolute-form target
    (``http://host/path``, RFC 9112 section 3.2.2) loses its scheme and authority."""
    lowered = target[:8].lower()
    if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
        rest = target.split(b"//", 1)[1]
        slash, query = rest.find(b"/"), rest.find(b"?")
        if slash < 0 or (0 <= query < slash):
            return b"/" + (rest[query:] if query >= 0 else b"")
        return rest[slash:]
    return target


class RegistryRequest(server.Request):
    """A request whose body is admitted, and routed to its sink, before it is read."""

    defaultContentType = None
    route: Route
    sink: BodySink | None = None
    refusal: Failure | None = None
    _sink_open = False
    received_bytes = 0  # body bytes read from the connection (metrics, access log)
    trace: Any = None  # the request's span while it runs (`angosd.http.tracing`), None untraced
    trace_id: str | None = None  # the trace id, once the request finished (access log)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # type: ignore[assignment]
        method, target = request_line(self.channel)
        self.route = parse_route(method, origin_form(target))
        site = getattr(self.channel, "site")  # noqa: B009 - set by Site.buildProtocol
        self._route_by_ns(site)
        self.getClientAddress()  # decided now, while the connection is known (logged after it ends)
        self._held: list[bytes] | None = []
        self._sink_open = False
        self._ready: Deferred[None] = Deferred()
        self._paused = False
        for observer in site.observers:
            observer.started(self)
        self.notifyFinish().addBoth(self._notify_finished, site.observers)
        gate: Gate = site.gate
        if self._over_capacity(site):
            admission: Deferred[Any] = fail(TooManyRequests("the registry is serving as many requests as it may; "
                                                            "retry shortly"))
        else:
            admission = maybeDeferred(gate.admit, self, length)
        admission.addCallbacks(self._admitted, self._refused)
        if self._held is not None:
            self._pause()

    def _route_by_ns(self, site: Any) -> None:
        """``?ns=REGISTRY`` on a pull: serve it from the repository whose ``namespace`` is
        REGISTRY (``/v2/library/alpine/...?ns=docker.io`` from ``hub/library/alpine``)."""
        route = self.route
        ns = route.param("ns")
        if ns is None or route.namespace is None or route.action not in _NS_ACTIONS:
            return
        repository = site.config().repository_for_ns(ns)
        if repository is None:
            return
        if route.namespace != repository.name and not route.namespace.startswith(repository.name + "/"):
            namespace = f"{repository.name}/{route.namespace}"
            path = f"/v2/{namespace}{route.path[len('/v2/') + len(route.namespace):]}"
            self.route = replace(route, namespace=namespace, path=path)
        self.responseHeaders.setRawHeaders(b"OCI-Namespace", [ns.encode("utf-8", "replace")])

    def _over_capacity(self, site: Any) -> bool:
        """Count this request against ``max_concurrent_requests``; True when it is one too many
        (probes and metrics are never refused)."""
        limit = site.config().global_.max_concurrent_requests
        if self.route.action in _UNLIMITED:
            return False
        if limit is not None and site.active >= limit:
            return True
        site.active += 1

        def done(_: object) -> None:  # also on a lost connection (a failure: consumed here)
            site.active -= 1

        self.notifyFinish().addBoth(done)
        return False

    def getClientAddress(self) -> Any:
        """The socket peer, or the client it forwards for when it is a trusted proxy
        (`angosd.http.forwarded`): what the access log, policies and webhooks see."""
        known = self.__dict__.get("_client_address")
        if known is not None:
            return known
        peer = super().getClientAddress()
        host = getattr(peer, "host", None)
        site = getattr(getattr(self, "channel", None), "site", None)
        if host is None or site is None:  # no channel any more: the request is over
            return peer
        address = peer
        proxies = site.trusted_proxies()
        if proxies:
            client = client_address(host, self.requestHeaders.getRawHeaders("X-Forwarded-For", []),
                                    self.getHeader("X-Real-IP"), proxies)
            if client != host:
                address = (IPv6Address if ":" in client else IPv4Address)("TCP", client, 0)
        self._client_address = address
        return address

    def _notify_finished(self, result: object, observers: list[RequestObserver]) -> None:
        for observer in observers:
            observer.finished(self, isinstance(result, Failure))

    def _pause(self) -> None:
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            self._paused = True
            transport.pauseProducing()

    def _admitted(self, sink: BodySink | None) -> None:
        held, self._held = self._held or [], None
        self.sink = sink
        self._sink_open = sink is not None
        register = getattr(sink, "registerProducer", None)
        transport = getattr(self.channel, "transport", None)
        if register is not None and transport is not None:
            register(transport, True)
        for chunk in held:
            self._consume(chunk)
        self._resume()

    def _refused(self, failure: Failure) -> None:
        self._held = None
        self.refusal = failure
        self._resume()

    def _resume(self) -> None:
        transport = getattr(self.channel, "transport", None)
        if self._paused and transport is not None and not request_disconnected(self):
            self._paused = False
            transport.resumeProducing()
        self._ready.callback(None)

    def handleContentChunk(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if self._held is not None:
            self._held.append(data)
            self._pause()
            return
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        if not self._sink_open or self.refusal is not None:
            return
        assert self.sink is not None
        try:
            self.sink.write(data)
        except Exception:
            self.refusal = Failure()
            self._close_sink()

    def _close_sink(self) -> None:
        if self._sink_open and self.sink is not None:
            self._sink_open = False
            self._unregister()
            self.sink.abort()

    def _unregister(self) -> None:
        unregister = getattr(self.sink, "unregisterProducer", None)
        if unregister is not None:
            unregister()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        def finish_sink(_: object) -> Any:
            if not self._sink_open or self.refusal is not None or self.sink is None:
                return None
            self._sink_open = False
            self._unregister()
            return maybeDeferred(self.sink.finish).addErrback(record)

        def record(failure: Failure) -> None:
            self.refusal = failure

        def dispatch(_: object) -> None:
            if request_disconnected(self):  # the client left while admission was pending
                return
            server.Request.requestReceived(self, command, origin_form(path), version)

        self._ready.addCallback(finish_sink).addCallback(dispatch)

    def connectionLost(self, reason: Failure) -> None:
        self._close_sink()
        super().connectionLost(reason)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """As `Request.setHeader`, but ``Server`` always names angosd, never Twisted's version."""
        raw = name.encode("latin-1") if isinstance(name, str) else name
        super().setHeader(name, SERVER_NAME if raw.lower() == b"server" else value)

    def check_admitted(self) -> None:
        """Raise the reason this request was refused, if it was."""
        if self.refusal is not None:
            self.refusal.raiseException()

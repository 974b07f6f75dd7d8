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
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.web import server

from angosd.compat import request_disconnected, request_line
from angosd.http.router import Route, parse_route
from angosd.oci.errors import TooLarge


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
        self.route = parse_route(*request_line(self.channel))
        self._held: list[bytes] | None = []
        self._sink_open = False
        self._ready: Deferred[None] = Deferred()
        self._paused = False
        site = getattr(self.channel, "site")  # noqa: B009 - set by Site.buildProtocol
        for observer in site.observers:
            observer.started(self)
        self.notifyFinish().addBoth(self._notify_finished, site.observers)
        gate: Gate = site.gate
        admission = maybeDeferred(gate.admit, self, length)
        admission.addCallbacks(self._admitted, self._refused)
        if self._held is not None:
            self._pause()

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
            server.Request.requestReceived(self, command, path, version)

        self._ready.addCallback(finish_sink).addCallback(dispatch)

    def connectionLost(self, reason: Failure) -> None:
        self._close_sink()
        super().connectionLost(reason)

    def check_admitted(self) -> None:
        """Raise the reason this request was refused, if it was."""
        if self.refusal is not None:
            self.refusal.raiseException()
